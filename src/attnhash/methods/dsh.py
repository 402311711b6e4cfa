"""DSH: Deep Supervised Hashing for Fast Image Retrieval (Liu, Wang, Shan, Chen, CVPR 2016).

The network outputs real values b = z (no squashing activation); a contrastive loss on pairs pulls
similar codes together and pushes dissimilar ones beyond a margin, and a regulariser pulls every entry
towards +-1 (the paper's relaxed pair loss):

    L(b_i, b_j, s_ij) = 1/2 s_ij ||b_i - b_j||^2 + 1/2 (1 - s_ij) max(m - ||b_i - b_j||^2, 0)
                        + alpha (|| |b_i| - 1 ||_1 + || |b_j| - 1 ||_1)

with m = 2K (for codes in {-1,+1}^K, ||b_i - b_j||^2 = 4 d_H, so the margin asks for d_H >= K/2) and
alpha = 0.01. s_ij = 1 when the images share a label. Pairs are all pairs of distinct images of a
mini-batch, generated online as in the paper (`pairs: bank` compares each batch with the whole training
set instead).

Averaging: the paper sums this loss over the pairs. attnhash divides that sum by the number of pairs: the
contrastive term becomes a mean over pairs (each still a sum over the K bits), and since every image of a
batch of n appears in n - 1 of the n (n - 1) / 2 pairs, the regulariser becomes 2 alpha * mean over images
of || |b_i| - 1 ||_1. This is the paper's objective divided by a constant, so alpha = 0.01 and m = 2K
keep their meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnhash.losses.pairwise import Partners, label_similarity, masked_mean
from attnhash.methods.base import Method, TrainContext, register_method


@dataclass
class DSHParams:
    alpha: float = 0.01  # weight of the regulariser || |b| - 1 ||_1 (paper)
    margin: float = 2.0  # m = margin * K on the squared Euclidean distance (paper: m = 2k)
    pairs: str = "batch"  # batch (paper) | bank


def squared_distances(u: Tensor, others: Tensor) -> Tensor:
    """||u_i - o_j||^2 for every (i, j), from the inner products (no B x N x K intermediate)."""
    d = u.pow(2).sum(1, keepdim=True) + others.pow(2).sum(1).unsqueeze(0) - 2.0 * (u @ others.t())
    return d.clamp_min(0.0)  # rounding can make d slightly negative for identical rows


def dsh_contrastive(u: Tensor, others: Tensor, s: Tensor, margin: float, mask: Tensor) -> Tensor:
    """Mean over the masked pairs of 1/2 s d + 1/2 (1 - s) max(margin - d, 0), d = ||u_i - o_j||^2."""
    d = squared_distances(u, others)
    per_pair = 0.5 * s * d + 0.5 * (1.0 - s) * torch.relu(margin - d)
    return masked_mean(per_pair, mask)


def dsh_regularizer(u: Tensor) -> Tensor:
    """Mean over images of || |b_i| - 1 ||_1 (a sum over the K bits), the paper's regulariser."""
    return (u.abs() - 1.0).abs().sum(dim=1).mean()


@register_method
class DSH(Method):
    name = "dsh"
    paper = "Liu, Wang, Shan, Chen. Deep Supervised Hashing for Fast Image Retrieval. CVPR 2016"
    summary = "contrastive loss on real-valued codes with margin 2K + 0.01 * || |b| - 1 ||_1"
    supervised = True
    Params = DSHParams

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params if params is not None else DSHParams(), bits, num_classes, num_train, ablate)
        self.partners = Partners(self.params.pairs)  # checks the mode; the bank is built in setup

    def setup(self, ctx: TrainContext) -> None:
        self.partners = Partners(self.params.pairs, ctx.num_train, self.bits, ctx.train_labels, ctx.gather())

    def loss(self, out, batch, ctx):
        b = out["z"]
        labels = batch["label"]
        others, other_labels, mask = self.partners(b, labels, batch.get("index"))
        s = label_similarity(labels, other_labels)
        contrastive = dsh_contrastive(b, others, s, self.params.margin * self.bits, mask)
        reg = dsh_regularizer(b)
        # each pair carries the regulariser of both its images: 2 alpha per image (module docstring)
        loss = contrastive + 2.0 * self.params.alpha * reg
        return loss, {"contrastive": float(contrastive.detach()), "regularizer": float(reg.detach())}

