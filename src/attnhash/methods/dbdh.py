"""DBDH: Zheng et al., "Deep balanced discrete hashing for image retrieval", Neurocomputing, 2020.

What the paper states (abstract): no continuous relaxation; the last layer outputs the binary code
directly and the discrete codes are trained with the straight-through estimator; the loss combines a
pairwise loss, guided by the labels, with a balance controlling term. Its full text is not available
here, so the exact forms below are choices (each one a parameter):

    b = sign(z) in the forward pass, identity gradient (attnhash.methods._straight_through)
    L = pairwise likelihood of the label similarities on the discrete codes
        + alpha * balance(b)
  - pairwise likelihood: DPSH's negative log-likelihood (DBDH compares against DPSH and keeps its pairwise
    model), theta_ij = <b_i, b_j> / 2, each batch against a memory bank of the discrete codes of the whole
    training set, as DPSH (attnhash.methods.losses.MemoryBank), averaged over pairs.
  - balance (`balance`): "code" (default) = mean over items of |mean over bits of b_i|^p, every code has
    as many +1 as -1 bits, as the public re-implementation of DBDH (DeepHash-pytorch); "bit" = mean over
    bits of |mean over the batch of b_k|^p, every bit is +1 for half of the items (the classic bit balance).
  - alpha = 0.1 and p = 2, the re-implementation's values (the paper's are not known here).
Because the codes are binary in the forward pass there is no quantisation term: there is nothing to
quantise.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from attnhash.errors import ConfigError
from attnhash.methods._straight_through import straight_through_sign
from attnhash.methods.base import Method, TrainContext, register_method
from attnhash.methods.losses import MemoryBank, pairwise_likelihood


@dataclass
class DBDHParams:
    alpha: float = 0.1  # weight of the balance term
    p: float = 2.0  # exponent of the balance term
    balance: str = "code"  # code: per item over its bits | bit: per bit over the batch
    scale: float = 0.5  # theta_ij = scale * <b_i, b_j>


def balance_term(b: Tensor, kind: str = "code", p: float = 2.0) -> Tensor:
    """'code': mean_i |mean_k b_ik|^p;  'bit': mean_k |mean_i b_ik|^p (0 when perfectly balanced)."""
    dim = 1 if kind == "code" else 0
    return b.mean(dim=dim).abs().pow(p).mean()


@register_method
class DBDH(Method):
    name = "dbdh"
    paper = "Zheng et al. Deep balanced discrete hashing for image retrieval. Neurocomputing 2020"
    summary = "straight-through discrete codes, pairwise likelihood on a memory bank of codes + balance term"
    supervised = True
    Params = DBDHParams

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params or DBDHParams(), bits, num_classes, num_train, ablate)
        p = self.params
        if p.balance not in ("code", "bit"):
            raise ConfigError(f"dbdh: balance must be 'code' or 'bit', got {p.balance!r}")
        if p.alpha < 0 or p.p <= 0 or p.scale <= 0:
            raise ConfigError("dbdh: alpha >= 0, p > 0 and scale > 0 are required")

    def setup(self, ctx: TrainContext) -> None:
        self.bank = MemoryBank(ctx.num_train, self.bits, ctx.train_labels)

    def loss(self, out, batch, ctx):
        b = straight_through_sign(out["z"])
        self.bank.update(batch["index"], b)
        bank_codes, s, mask = self.bank.pairs(batch["label"])
        likelihood = pairwise_likelihood(b, bank_codes, s, scale=self.params.scale, mask=mask)
        balance = balance_term(b, self.params.balance, self.params.p)
        loss = likelihood + self.params.alpha * balance
        return loss, {"likelihood": float(likelihood.detach()), "balance": float(balance.detach())}
