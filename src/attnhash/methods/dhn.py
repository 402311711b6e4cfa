"""DHN: Deep Hashing Network for Efficient Similarity Retrieval (Zhu, Long, Wang, Cao, AAAI 2016).

The hash layer's output is squashed by tanh, u = tanh(z) (the authors' AlexNet code: fc8 + tanh), and
trained with the paper's objective:

    C = sum_{s_ij} (log(1 + exp(theta_ij)) - s_ij theta_ij)  +  lambda * sum_i sum_k log cosh(|u_ik| - 1)
        theta_ij = scale * <u_i, u_j>

- the pairwise cross-entropy (the negative log-likelihood of the similarity labels s_ij, 1 when two images
  share a label) makes similar pairs' inner products large and dissimilar ones' small;
- the quantisation loss is a smooth surrogate of || |u_i| - 1 ||_1: log cosh(x) ~ x^2 / 2 near 0 and
  ~ |x| - log 2 far from it, differentiable everywhere, so the relaxed codes approach +-1.

scale = 1: the plain inner product, as we read DHN's likelihood (DPSH's 1/2 is `scale: 0.5`).
Pairs are the pairs of distinct images of a mini-batch (`pairs: bank`: each batch against the training
set).

Averaging: attnhash averages both terms (the pairwise term over pairs, the quantisation term over the
n x K code entries). With the paper's sums, lambda_sum on n(n-1) ordered pairs and n K entries equals
lambda_mean = lambda_sum * K / (n - 1). attnhash's default lambda_mean = 0.1 is a choice (the value of
common reimplementations), not a number taken from the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnhash.losses.pairwise import Partners, label_similarity, masked_mean
from attnhash.methods.base import Method, TrainContext, register_method

LOG2 = math.log(2.0)


@dataclass
class DHNParams:
    lam: float = 0.1  # lambda, weight of the log-cosh quantisation loss (mean form, see the docstring)
    scale: float = 1.0  # theta = scale * <u_i, u_j>
    pairs: str = "batch"  # batch | bank


def log_cosh(x: Tensor) -> Tensor:
    """log(cosh(x)) without overflow: |x| + log(1 + e^{-2|x|}) - log 2."""
    a = x.abs()
    return a + F.softplus(-2.0 * a) - LOG2


def dhn_quantization(u: Tensor) -> Tensor:
    """Mean over code entries of log cosh(|u| - 1) (the paper's quantisation loss, averaged)."""
    return log_cosh(u.abs() - 1.0).mean()


def pairwise_cross_entropy(u: Tensor, others: Tensor, s: Tensor, scale: float, mask: Tensor) -> Tensor:
    """The paper's pairwise cross-entropy: mean over the masked pairs of log(1 + e^theta) - s theta,
    theta = scale <u_i, o_j>."""
    theta = scale * (u @ others.t())
    return masked_mean(F.softplus(theta) - s * theta, mask)


@register_method
class DHN(Method):
    name = "dhn"
    paper = "Zhu, Long, Wang, Cao. Deep Hashing Network for Efficient Similarity Retrieval. AAAI 2016"
    summary = "tanh codes; pairwise cross-entropy + lambda * log cosh(|u| - 1) quantisation"
    supervised = True
    Params = DHNParams
    ablations = {"quantization": "no log-cosh quantisation loss"}

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params if params is not None else DHNParams(), bits, num_classes, num_train, ablate)
        self.partners = Partners(self.params.pairs)

    def setup(self, ctx: TrainContext) -> None:
        self.partners = Partners(self.params.pairs, ctx.num_train, self.bits, ctx.train_labels, ctx.gather())

    def loss(self, out, batch, ctx):
        u = torch.tanh(out["z"])
        labels = batch["label"]
        others, other_labels, mask = self.partners(u, labels, batch.get("index"))
        s = label_similarity(labels, other_labels)
        ce = pairwise_cross_entropy(u, others, s, self.params.scale, mask)
        parts = {"cross_entropy": float(ce.detach())}
        loss = ce
        if "quantization" not in self.ablate:
            q = dhn_quantization(u)
            loss = loss + self.params.lam * q
            parts["quantization"] = float(q.detach())
        return loss, parts
