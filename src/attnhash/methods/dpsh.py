"""DPSH: Deep Supervised Hashing with Pairwise Labels (Li, Wang, Kang, IJCAI 2016).

Loss = pairwise negative log-likelihood of the label similarities, with theta_ij = <u_i, u_j> / 2, plus
eta * ||u - sign(u)||^2. Each batch is compared with the relaxed codes of the whole training set kept in a
memory bank (the paper's formulation sums over all labelled pairs, not only pairs inside a batch).

Both terms are averaged (over pairs and over code entries). The paper's eta = 10 multiplies sums; with
n_train = 5,000 pairs per item and K = 64 bits that is eta_mean = 10 * K / n_train ~ 0.13, so the recipe
uses 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnhash.losses.pairwise import pairwise_likelihood
from attnhash.losses.quantization import quantization_loss
from attnhash.methods.base import Method, TrainContext, register_method


@dataclass
class DPSHParams:
    eta: float = 0.1  # weight of the quantisation term


@register_method
class DPSH(Method):
    name = "dpsh"
    paper = "Li, Wang, Kang. Feature Learning based Deep Supervised Hashing with Pairwise Labels. IJCAI 2016"
    summary = "pairwise likelihood on a memory bank of the training codes + quantisation"
    supervised = True
    Params = DPSHParams

    def setup(self, ctx: TrainContext) -> None:
        self.bank = ctx.memory_bank(self.bits)

    def loss(self, out, batch, ctx):
        u = out["z"]
        self.bank.update(batch["index"], u)
        bank_codes, s, mask = self.bank.pairs(batch["label"])
        likelihood = pairwise_likelihood(u, bank_codes, s, scale=0.5, mask=mask)
        quant = quantization_loss(u)
        loss = likelihood + self.params.eta * quant
        return loss, {"likelihood": float(likelihood.detach()), "quantization": float(quant.detach())}
