"""GreedyHash: Su, Zhang, Huang, Tian, "Greedy Hash: Towards Fast Optimization for Accurate Hash Coding in
CNN", NeurIPS 2018 (supervised variant).

The hash layer output h = z is binarised in the forward pass, b = sign(h), and the gradient goes straight
through, dL/dh = dL/db (the paper's greedy update of the codes, carried out by backpropagation; see
attnhash.methods._straight_through). So the loss is computed on the very codes the encoder stores.

Loss (the paper's supervised objective):
    L = classification(W^T b, y) + alpha * mean(| |h| - 1 |^p),   p = 3, alpha = 0.1
  - the classification layer W (K -> classes, no bias, as the authors' code) is this method's own
    nn.Linear on b, trained with the network (the optimiser gets the method's parameters). It is not part
    of the encoder: only the network is saved.
  - classification: cross-entropy for single-label data, per-class binary cross-entropy for multi-label
    data (choice: the paper only has single-label experiments); `classification: auto` picks by whether
    every training item has exactly one label.
  - the penalty pulls |h| to 1 so that sign(h) and h stay close and the straight-through gradient is
    accurate (the paper's motivation for it). alpha multiplies the mean over entries, as the authors' code
    (alpha = 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnhash.errors import ConfigError
from attnhash.losses.classification import classification_loss, is_single_label
from attnhash.losses.straight_through import straight_through_sign
from attnhash.methods.base import Method, TrainContext, register_method


@dataclass
class GreedyHashParams:
    alpha: float = 0.1  # weight of the | |h| - 1 |^p penalty (mean over entries)
    p: float = 3.0  # its exponent (the paper's p = 3)
    classification: str = "auto"  # auto | softmax (cross-entropy) | sigmoid (per-class BCE, multi-label)


def greedy_penalty(h: Tensor, p: float = 3.0) -> Tensor:
    """mean over entries of | |h| - 1 |^p (GreedyHash's regulariser, averaged)."""
    return (h.abs() - 1.0).abs().pow(p).mean()


@register_method
class GreedyHash(Method):
    name = "greedyhash"
    paper = ("Su, Zhang, Huang, Tian. Greedy Hash: Towards Fast Optimization for Accurate Hash Coding in CNN. "
             "NeurIPS 2018")
    summary = "sign in the forward pass with a straight-through gradient; classification on the codes + | |h|-1 |^3"
    supervised = True
    Params = GreedyHashParams

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params or GreedyHashParams(), bits, num_classes, num_train, ablate)
        p = self.params
        if p.classification not in ("auto", "softmax", "sigmoid"):
            raise ConfigError(f"greedyhash: classification must be auto, softmax or sigmoid, got {p.classification!r}")
        if p.alpha < 0 or p.p <= 0:
            raise ConfigError("greedyhash: alpha >= 0 and p > 0 are required")
        # Drawn without advancing the global RNG, so the network of a run starts as it would with any
        # other method and the same seed.
        with torch.random.fork_rng(devices=[]):
            self.code_classifier = nn.Linear(bits, num_classes, bias=False)
        self.softmax = p.classification != "sigmoid"  # "auto" is settled in setup from the training labels

    def setup(self, ctx: TrainContext) -> None:
        if self.params.classification == "auto":
            self.softmax = is_single_label(ctx.train_labels)

    def loss(self, out, batch, ctx):
        h = out["z"]
        b = straight_through_sign(h)
        cls = classification_loss(self.code_classifier(b), batch["label"], self.softmax)
        penalty = greedy_penalty(h, self.params.p)
        loss = cls + self.params.alpha * penalty
        return loss, {"classification": float(cls.detach()), "penalty": float(penalty.detach())}
