"""HashNet: Deep Learning to Hash by Continuation (Cao, Long, Wang, Yu, ICCV 2017).

Activation: h = tanh(beta z). Continuation raises beta during training so that tanh
approaches sign; the codes are sign(z) = sign(h) at every beta. Schedule of the reference code (a
ScaleTanH layer): beta = (1 + gamma * t)^power with gamma = 0.005, power = 0.5, recomputed every
`stage_steps` = 200 iterations (a stage-wise continuation, the paper's Algorithm 1), over 10,000 iterations, so beta
goes from 1 to ~7.1.

- `continuation: steps` uses t = ctx.step, the reference's schedule as is.
- `continuation: progress` (default, a choice) maps the run onto the reference's 10,000 iterations,
  t = step / total_steps * ref_iterations, so every run ends at the same beta (~7.1) whatever its length;
  a 5-epoch CPU run would otherwise stop at beta ~1.4 and a long one would overshoot.

Loss: the paper's weighted maximum likelihood over pairs,
    L = sum_ij w_ij (log(1 + exp(theta_ij)) - s_ij theta_ij),   theta_ij = alpha <h_i, h_j>
with alpha = 10 / K (the reference's "sigmoid_param", e.g. 0.2 at 48 bits) and weights that balance the
similar pairs S1 and the dissimilar pairs S0 of the pair set S:
    w_ij = c_ij |S| / |S1|  if s_ij = 1,      w_ij = |S| / |S0|  if s_ij = 0.
c_ij is the continuous similarity of multi-label data (cosine of the label vectors; the reference's
`continous_similarity`); it only scales similar pairs (it is 0 for dissimilar ones) and is 1 on
single-label data. `continuous_similarity: auto` uses it when some training item has several labels.

Averaging: attnhash divides the weighted sum by |S|, so L = mean over S1 of c * nll + mean over S0 of nll
(each class of pairs weighs the same, the point of the weights). S is the set of pairs of distinct images
of the batch (the paper's S is all training pairs; the reference forms them between two halves of a
batch), or batch x training set with `pairs: bank`. HashNet has no quantisation term (the continuation
does that job; the reference's q_weight is 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnhash.errors import ConfigError
from attnhash.losses.classification import is_single_label
from attnhash.losses.pairwise import Partners, label_cosine, label_similarity
from attnhash.methods.base import Method, TrainContext, register_method


@dataclass
class HashNetParams:
    alpha: float | None = None  # theta = alpha <h_i, h_j>; None = 10 / K (reference)
    continuation: str = "progress"  # progress | steps (see the module docstring)
    init_scale: float = 1.0  # beta at the start
    gamma: float = 0.005  # beta = init_scale * (1 + gamma * t)^power
    power: float = 0.5
    stage_steps: int = 200  # beta changes every this many (reference) iterations
    ref_iterations: int = 10000  # length of the reference's run, for continuation = progress
    continuous_similarity: str = "auto"  # auto | on | off: c_ij = label cosine on similar pairs
    pairs: str = "batch"  # batch | bank


def continuation_beta(step: int, total_steps: int, p: HashNetParams) -> float:
    """beta after `step` optimisation steps of a run of `total_steps` (stage-wise, as the reference)."""
    if p.continuation == "progress" and total_steps > 0:
        t = step * p.ref_iterations / total_steps
    else:
        t = float(step)
    t = math.floor(t / p.stage_steps) * p.stage_steps if p.stage_steps > 0 else t
    return p.init_scale * (1.0 + p.gamma * t) ** p.power


def balance_weights(s: Tensor, mask: Tensor, c: Tensor | None = None) -> Tensor:
    """w_ij = c_ij |S|/|S1| on similar pairs, |S|/|S0| on dissimilar pairs, 0 outside the pair set."""
    similar = s * mask
    dissimilar = (1.0 - s) * mask
    n_all = mask.sum()
    w_similar = n_all / similar.sum().clamp_min(1.0)
    w_dissimilar = n_all / dissimilar.sum().clamp_min(1.0)
    c = torch.ones_like(s) if c is None else c
    return similar * c * w_similar + dissimilar * w_dissimilar


def weighted_likelihood(h: Tensor, others: Tensor, s: Tensor, weights: Tensor, alpha: float, mask: Tensor) -> Tensor:
    """sum w_ij (log(1 + e^theta) - s theta) / |S| with theta = alpha <h_i, h_j> (softplus form, stable)."""
    theta = alpha * (h @ others.t())
    nll = F.softplus(theta) - s * theta
    return (weights * nll).sum() / mask.sum().clamp_min(1.0)


@register_method
class HashNet(Method):
    name = "hashnet"
    paper = "Cao, Long, Wang, Yu. HashNet: Deep Learning to Hash by Continuation. ICCV 2017"
    summary = "tanh(beta z) with beta raised by continuation; class-balanced weighted pairwise likelihood"
    supervised = True
    Params = HashNetParams

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params if params is not None else HashNetParams(), bits, num_classes, num_train, ablate)
        p = self.params
        if p.continuation not in ("progress", "steps"):
            raise ConfigError(f"hashnet: continuation must be progress or steps, got {p.continuation!r}")
        if p.continuous_similarity not in ("auto", "on", "off"):
            raise ConfigError(
                f"hashnet: continuous_similarity must be auto, on or off, got {p.continuous_similarity!r}")
        self.alpha = p.alpha if p.alpha is not None else 10.0 / bits
        self.partners = Partners(p.pairs)
        self.use_cosine = p.continuous_similarity == "on"

    def setup(self, ctx: TrainContext) -> None:
        self.partners = Partners(self.params.pairs, ctx.num_train, self.bits, ctx.train_labels, ctx.gather())
        if self.params.continuous_similarity == "auto":
            self.use_cosine = not is_single_label(ctx.train_labels)

    def beta(self, ctx: TrainContext) -> float:
        return continuation_beta(ctx.step, ctx.epochs * ctx.steps_per_epoch, self.params)

    def loss(self, out, batch, ctx):
        beta = self.beta(ctx)
        h = torch.tanh(beta * out["z"])
        labels = batch["label"]
        others, other_labels, mask = self.partners(h, labels, batch.get("index"))
        s = label_similarity(labels, other_labels)
        c = label_cosine(labels, other_labels) if self.use_cosine else None
        w = balance_weights(s, mask, c)
        loss = weighted_likelihood(h, others, s, w, self.alpha, mask)
        return loss, {"beta": beta}
