"""DBDH: Zheng, Zhang, Lu, "Deep balanced discrete hashing for image retrieval", Neurocomputing 403:224-236,
2020.

What the paper states (abstract): no continuous relaxation; the last layer outputs the binary codes directly
and they are trained with the straight-through estimator; the loss combines a pairwise loss guided by the
labels with a balance controlling term. Its full text is not available here, so the exact forms below are
choices (each one a parameter):

    b = sign(z) in the forward pass; backward dL/dz = dL/db where |z| <= 1, else 0
        (the straight-through estimator as binarised networks use it, Hubara et al. NIPS 2016, the backward
        of a hard tanh; attnhash.methods._straight_through)
    L = mean over the pairs i != j of the batch of  log(1 + e^theta_ij) - s_ij theta_ij
        + alpha * balance(b),          theta_ij = theta_scale * <b_i, b_j> / K
  - the pairwise term is DPSH's negative log-likelihood (DBDH builds on DPSH's pairwise model) on the
    discrete codes.
  - theta_scale = 2.5 (choice). DPSH's theta = <u_i, u_j>/2 is made for relaxed codes that can stay small;
    on +-1 codes it is K/2 times the cosine (24 at 48 bits), so unrelated codes already sit at |theta| ~ 3.5
    and every sigmoid saturates.
  - the clipped estimator (`ste_clip` = 1, choice; null gives the plain identity): the loss on +-1 codes never
    stops pushing contested bits, and with the identity every push moves the network; with the clip a bit
    already decided beyond |z| = 1 is left alone.
  - pairs (`pairs`, choice): "batch" (default), both codes of a pair from the same forward pass, the
    gradient reaching both. "bank" compares the batch with a memory bank of every training item's last code
    (as DPSH): with discrete codes the bank is stale and noisy (dropout / drop-connect alone flip ~28% of the
    bits of a fresh pretrained network between two passes of the same images) and training fails.
  - balance (`balance`): "bit" (default) = mean over bits of |mean over the batch of b_k|^p, every bit is +1
    for half of the items (the classic bit balance); "code" = mean over items of |mean over bits of b_i|^p,
    every code has as many +1 as -1 bits, as the public re-implementation of DBDH (DeepHash-pytorch).
    The abstract only says the method "keeps the balance of hash codes". "code" was the default until it
    collapsed 16-bit DBDH on the benchmark grid (fmnist, 5,000 training images, 8 epochs, Adam 1e-3: mAP
    0.11, the loss rising from 0.70 to 2.0, 179 distinct codes for 64,000 images): with in-batch pairs on
    straight-through codes the whole batch can drift to one shared code, which a code balance does not
    penalise (a balanced code scores 0) and a bit balance penalises most. On a smaller probe (2,000 images,
    500 queries x 5,000, same optimiser, 8 epochs) bit vs code balance: 16 bits 0.660 vs 0.571 (the code
    balance's loss rising from epoch 5), 32 bits 0.703 vs 0.681, 64 bits 0.693 vs 0.723; both at once
    still diverged at 16 bits (0.39).
  - learning rate (recipe: Adam 3e-4, a third of the DPSH recipe's): at 1e-3 16-bit codes still diverge
    with the bit balance on the whole training set (fmnist, 5,000 images, 8 epochs, 500 queries x 5,000:
    mAP 0.31, the loss rising from 0.69 to 1.44; a clip of 2 instead of 1: 0.43); at 3e-4 the loss falls
    every epoch and mAP is 0.671 at 16 bits and 0.772 at 64 bits (1e-3: 0.748; 1e-4: 0.608 at 16 bits).
    Straight-through steps flip bits outright, so Adam's full-size steps on weakly decided bits thrash.
  - alpha = 0.1 and p = 2, the re-implementation's values (the paper's are not known here).
Because the codes are binary in the forward pass there is no quantisation term: there is nothing to quantise.

Measured (fmnist, 48 bits, 32 px, EfficientNet-Lite0 frozen to block5, 2,000 training images, 5 epochs, the
recipe's optimiser; mAP@ALL on 500 queries x 5,000; with the per-code balance of the time): these defaults
0.65; identity gradient 0.52 (the loss rises after epoch 2); theta_scale = 24 (DPSH's theta at 48 bits)
0.10; pairs = bank 0.10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnhash.errors import ConfigError
from attnhash.losses.pairwise import MemoryBank, label_similarity, pairwise_likelihood
from attnhash.losses.straight_through import straight_through_sign
from attnhash.methods.base import Method, TrainContext, register_method


@dataclass
class DBDHParams:
    alpha: float = 0.1  # weight of the balance term
    p: float = 2.0  # exponent of the balance term
    balance: str = "bit"  # bit: per bit over the batch | code: per item over its bits
    theta_scale: float = 2.5  # theta_ij = theta_scale * <b_i, b_j> / K (theta_scale times the code cosine)
    pairs: str = "batch"  # batch: pairs within the batch | bank: the batch against every training item's code
    ste_clip: float | None = 1.0  # pass the gradient only where |z| <= ste_clip (None: the identity everywhere)


def balance_term(b: Tensor, kind: str = "bit", p: float = 2.0) -> Tensor:
    """'code': mean_i |mean_k b_ik|^p;  'bit': mean_k |mean_i b_ik|^p (0 when perfectly balanced)."""
    dim = 1 if kind == "code" else 0
    return b.mean(dim=dim).abs().pow(p).mean()


@register_method
class DBDH(Method):
    name = "dbdh"
    paper = "Zheng, Zhang, Lu. Deep balanced discrete hashing for image retrieval. Neurocomputing 2020"
    summary = "straight-through discrete codes, pairwise likelihood on the codes + balance term"
    supervised = True
    Params = DBDHParams

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params or DBDHParams(), bits, num_classes, num_train, ablate)
        p = self.params
        if p.balance not in ("code", "bit"):
            raise ConfigError(f"dbdh: balance must be 'code' or 'bit', got {p.balance!r}")
        if p.pairs not in ("batch", "bank"):
            raise ConfigError(f"dbdh: pairs must be 'batch' or 'bank', got {p.pairs!r}")
        if p.alpha < 0 or p.p <= 0 or p.theta_scale <= 0:
            raise ConfigError("dbdh: alpha >= 0, p > 0 and theta_scale > 0 are required")
        self.bank: MemoryBank | None = None

    def setup(self, ctx: TrainContext) -> None:
        if self.params.pairs == "bank":
            self.bank = ctx.memory_bank(self.bits)

    def loss(self, out, batch, ctx):
        b = straight_through_sign(out["z"], self.params.ste_clip)
        labels = batch["label"]
        if self.bank is None:
            other, s = b, label_similarity(labels, labels)
            mask = 1.0 - torch.eye(len(b), device=b.device)  # i != j
        else:
            self.bank.update(batch["index"], b)
            other, s, mask = self.bank.pairs(labels)
        likelihood = pairwise_likelihood(b, other, s, scale=self.params.theta_scale / self.bits, mask=mask)
        balance = balance_term(b, self.params.balance, self.params.p)
        loss = likelihood + self.params.alpha * balance
        return loss, {"likelihood": float(likelihood.detach()), "balance": float(balance.detach())}
