"""GreedyHash, unsupervised variant: Su, Zhang, Huang, Tian, "Greedy Hash: Towards Fast Optimization for
Accurate Hash Coding in CNN", NeurIPS 2018 (its unsupervised experiments).

No labels are read (the trainer leaves them out of the batches). The codes b = sign(h) (straight-through
backward, attnhash.methods._straight_through) keep the cosine similarity structure of pretrained features f:

    L = mean over pairs i != j of the batch (cos(f_i, f_j) - cos(b_i, b_j))^2 + alpha * mean(| |h| - 1 |^p)

with p = 3 and alpha = 0.1 as the supervised variant and the authors' code.

Target features (the paper: fc7 of a frozen ImageNet VGG16, with only the hash layer trained): the pooled
features of this run's own network at set-up, in eval mode, i.e. of the pretrained backbone before any
training, kept fixed for the whole run (a frozen copy, stored as unit vectors, N x D floats). They stay the
targets when the backbone is fine-tuned too, so the codes cannot pull their own targets along. The recipe
freezes the whole backbone (model.freeze: all), as the paper. With data.augment the targets are those of the
unaugmented images (choice).

Pairs (choice): every pair of the batch; the authors' code pairs the first half of a batch with the second
half, which has the same expectation with B/2 instead of B(B-1) pairs per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnhash.errors import ConfigError
from attnhash.losses.straight_through import straight_through_sign
from attnhash.methods.base import Method, TrainContext, register_method
from attnhash.methods.greedyhash import greedy_penalty


@dataclass
class GreedyHashUnsupParams:
    alpha: float = 0.1  # weight of the | |h| - 1 |^p penalty (mean over entries)
    p: float = 3.0


def cosine_structure_loss(f: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over the off-diagonal pairs (i, j) of the batch of (cos(f_i, f_j) - cos(b_i, b_j))^2.

    `mask` (B bools) drops items without a target: pairs that involve one do not count.
    """
    fu, bu = F.normalize(f, dim=1), F.normalize(b, dim=1)
    diff = (fu @ fu.t() - bu @ bu.t()).pow(2)
    n = f.shape[0]
    keep = ~torch.eye(n, dtype=torch.bool, device=f.device)
    if mask is not None:
        keep &= mask.unsqueeze(0) & mask.unsqueeze(1)
    return (diff * keep).sum() / keep.sum().clamp_min(1)


@register_method
class GreedyHashUnsup(Method):
    name = "greedyhash_unsup"
    paper = ("Su, Zhang, Huang, Tian. Greedy Hash: Towards Fast Optimization for Accurate Hash Coding in CNN. "
             "NeurIPS 2018")
    summary = "unsupervised: straight-through sign codes keep the cosine structure of pretrained features + | |h|-1 |^3"
    supervised = False
    Params = GreedyHashUnsupParams

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params or GreedyHashUnsupParams(), bits, num_classes, num_train, ablate)
        if self.params.alpha < 0 or self.params.p <= 0:
            raise ConfigError("greedyhash_unsup: alpha >= 0 and p > 0 are required")
        self.register_buffer("targets", torch.zeros(0), persistent=False)  # N x D unit features, at setup
        self.register_buffer("has_target", torch.zeros(0, dtype=torch.bool), persistent=False)

    def setup(self, ctx: TrainContext) -> None:
        features, filled = ctx.collect_outputs("features")
        self.targets = F.normalize(features, dim=1)
        self.has_target = filled
        ctx.log(f"greedyhash_unsup: target features of {int(filled.sum())} training items "
                f"({features.shape[1]} dimensions) fixed at set-up")

    def loss(self, out, batch, ctx):
        h = out["z"]
        b = straight_through_sign(h)
        index = batch["index"].to(self.targets.device)
        structure = cosine_structure_loss(self.targets[index], b, self.has_target[index])
        penalty = greedy_penalty(h, self.params.p)
        loss = structure + self.params.alpha * penalty
        return loss, {"structure": float(structure.detach()), "penalty": float(penalty.detach())}
