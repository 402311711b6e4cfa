"""IDHN: Improved Deep Hashing with Soft Pairwise Similarity for Multi-label Image Retrieval
(Zhang, Zou, Lin, Chen, Wang, IEEE Transactions on Multimedia 2019; arXiv 1803.02987).

Soft similarity: the cosine of the label vectors, s_ij = <y_i, y_j> / (|y_i| |y_j|)
in [0, 1]. Pairs with s_ij = 0 (no shared label) or s_ij = 1 (the same label set) are "hard"; pairs in
between are "soft" (multi-label data only).

Codes: u = z / (1 + |z|) (a softsign, as the authors' code), codes sign(z).

Loss (with the names of the authors' code, github.com/pectinid16/IDHN):
- hard pairs, cross-entropy on the scaled inner product theta_ij = beta <u_i, u_j> / K, beta = 5:
      log(1 + e^theta_ij) - s_ij theta_ij
- soft pairs, mean square error between s_ij and the similarity the codes imply,
  (<u_i, u_j> / K + 1) / 2 = 1 - d_H / K for binary codes, times K (as in the authors' code), weight gamma:
      gamma * K * ((<u_i, u_j> / K + 1) / 2 - s_ij)^2,       gamma = 0.1
- quantisation, alpha * mean over code entries of | |u| - 1 |,  alpha = 0.1.
The pair terms are averaged over pairs (the authors' code averages too, so its weights apply unchanged).
Pairs: the distinct pairs of a mini-batch (the authors' code also counts the diagonal i = j; `pairs: bank`
compares each batch with the whole training set). A pair counts as hard when s_ij <= 0.01 or >= 0.99 (the
code's thresholds, which absorb rounding of the cosine).

On single-label data (CIFAR-10, Fashion-MNIST) every pair is hard, the MSE term is empty, and IDHN is the
cross-entropy with theta = 5 <u_i, u_j> / K plus the quantisation term: it trains like any pairwise
likelihood method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from attnhash.losses.pairwise import Partners, label_cosine
from attnhash.methods.base import Method, TrainContext, register_method

HARD_EPS = 0.01  # s <= eps or s >= 1 - eps: a hard pair


@dataclass
class IDHNParams:
    alpha: float = 0.1  # weight of the quantisation term | |u| - 1 |
    beta: float = 5.0  # theta = beta <u_i, u_j> / K in the cross-entropy of hard pairs
    gamma: float = 0.1  # weight of the MSE on soft pairs
    pairs: str = "batch"  # batch | bank


def soft_similarity(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """s_ij = cos(y_i, y_j) in [0, 1]."""
    return label_cosine(labels_a, labels_b)


def hard_pairs(s: Tensor) -> Tensor:
    """1 where s_ij is 0 or 1 (up to HARD_EPS), else 0."""
    return ((s <= HARD_EPS) | (s >= 1.0 - HARD_EPS)).float()


def idhn_pair_losses(u: Tensor, others: Tensor, s: Tensor, beta: float, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(cross-entropy summed over hard pairs, K-scaled squared error summed over soft pairs), both divided
    by the number of pairs, so that ce + gamma * mse is the mean pair loss."""
    k = u.shape[1]
    ip = u @ others.t()
    hard = hard_pairs(s) * mask
    soft = (1.0 - hard_pairs(s)) * mask
    theta = beta * ip / k
    ce = F.softplus(theta) - s * theta
    mse = k * ((ip / k + 1.0) / 2.0 - s).pow(2)
    n = mask.sum().clamp_min(1.0)
    return (ce * hard).sum() / n, (mse * soft).sum() / n


def idhn_quantization(u: Tensor) -> Tensor:
    """Mean over code entries of | |u| - 1 |."""
    return (u.abs() - 1.0).abs().mean()


@register_method
class IDHN(Method):
    name = "idhn"
    paper = ("Zhang, Zou, Lin, Chen, Wang. Improved Deep Hashing with Soft Pairwise Similarity for "
             "Multi-label Image Retrieval. IEEE TMM 2019")
    summary = "soft label-cosine similarity: cross-entropy on hard pairs, MSE on soft pairs, | |u| - 1 |"
    supervised = True
    Params = IDHNParams

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params if params is not None else IDHNParams(), bits, num_classes, num_train, ablate)
        self.partners = Partners(self.params.pairs)

    def setup(self, ctx: TrainContext) -> None:
        self.partners = Partners(self.params.pairs, ctx.num_train, self.bits, ctx.train_labels, ctx.gather())

    def loss(self, out, batch, ctx):
        z = out["z"]
        u = z / (1.0 + z.abs())
        labels = batch["label"]
        others, other_labels, mask = self.partners(u, labels, batch.get("index"))
        s = soft_similarity(labels, other_labels)
        ce, mse = idhn_pair_losses(u, others, s, self.params.beta, mask)
        quant = idhn_quantization(u)
        p = self.params
        loss = ce + p.gamma * mse + p.alpha * quant
        return loss, {"cross_entropy": float(ce.detach()), "soft_mse": float(mse.detach()),
                      "quantization": float(quant.detach())}

