"""LCDSH: Zhu, Gao, "Locality-Constrained Deep Supervised Hashing for Image Retrieval", IJCAI 2017.

The paper's point: a quantisation penalty that drags the continuous outputs to +-1 distorts the feature
distribution the network learns, and with it the similarities between images. LCDSH has no quantisation
term; instead it asks the pairwise similarity measured on the continuous outputs u and the one measured on
their binary codes b = sign(u) to agree (the locality constraint), so the codes keep the neighbourhoods of
the features:

    L = L_1 + lambda * L_2,  over the pairs (i, j), i != j, of a batch (the paper's Siamese pairs)
    L_1 = -log p(s_ij | u_i, u_j) with p(s_ij = 1 | .) = sigmoid(theta_ij), theta_ij = <u_i, u_j> / 2
          (the posterior of the pairwise labels; = DPSH's likelihood, written with softplus)
    L_2 = (sigmoid(theta_ij) - sigmoid(phi_ij))^2,  phi_ij = <b_i, b_j> / 2, b = sign(u) held fixed
          (the probabilities of similarity under the features and under the codes agree)
Both averaged over the pairs. The text of the paper is not available here: the form of L_2 and
lambda = 3 follow the public re-implementation (DeepHash-pytorch); `pairs: bank` compares each batch with a
memory bank of the whole training set instead (choice; default "batch" as the Siamese training).
u = z, the linear hash layer output (no tanh: the paper leaves the features unconstrained).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnhash.codes import sign
from attnhash.errors import ConfigError
from attnhash.losses.pairwise import MemoryBank, label_similarity, pairwise_likelihood
from attnhash.methods.base import Method, TrainContext, register_method


@dataclass
class LCDSHParams:
    lam: float = 3.0  # lambda: weight of the locality constraint L_2
    scale: float = 0.5  # theta_ij = scale * <u_i, u_j> (and phi_ij for the codes)
    pairs: str = "batch"  # batch: pairs within the batch | bank: the batch against every training item


def locality_loss(u_a: Tensor, u_b: Tensor, scale: float = 0.5, mask: Tensor | None = None) -> Tensor:
    """Mean over pairs of (sigmoid(scale <u_i, u_j>) - sigmoid(scale <b_i, b_j>))^2, b = sign(u) fixed."""
    p_feat = torch.sigmoid(scale * (u_a @ u_b.t()))
    p_code = torch.sigmoid(scale * (sign(u_a) @ sign(u_b).t())).detach()
    sq = (p_feat - p_code).pow(2)
    if mask is None:
        return sq.mean()
    return (sq * mask).sum() / mask.sum().clamp_min(1.0)


@register_method
class LCDSH(Method):
    name = "lcdsh"
    paper = "Zhu, Gao. Locality-Constrained Deep Supervised Hashing for Image Retrieval. IJCAI 2017"
    summary = "pairwise likelihood on the features + agreement of feature and code similarities (no quantisation)"
    supervised = True
    Params = LCDSHParams

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params or LCDSHParams(), bits, num_classes, num_train, ablate)
        p = self.params
        if p.pairs not in ("batch", "bank"):
            raise ConfigError(f"lcdsh: pairs must be 'batch' or 'bank', got {p.pairs!r}")
        if p.lam < 0 or p.scale <= 0:
            raise ConfigError("lcdsh: lam >= 0 and scale > 0 are required")
        self.bank: MemoryBank | None = None

    def setup(self, ctx: TrainContext) -> None:
        if self.params.pairs == "bank":
            self.bank = ctx.memory_bank(self.bits)

    def loss(self, out, batch, ctx):
        u = out["z"]
        labels = batch["label"]
        if self.bank is None:
            other, s = u, label_similarity(labels, labels)
            mask = 1.0 - torch.eye(len(u), device=u.device)  # i != j
        else:
            self.bank.update(batch["index"], u)
            other, s, mask = self.bank.pairs(labels)
            mask = mask.clone()
            mask[torch.arange(len(u), device=u.device), batch["index"]] = 0.0  # an item is not its own pair
        likelihood = pairwise_likelihood(u, other, s, scale=self.params.scale, mask=mask)
        locality = locality_loss(u, other, self.params.scale, mask)
        loss = likelihood + self.params.lam * locality
        return loss, {"likelihood": float(likelihood.detach()), "locality": float(locality.detach())}
