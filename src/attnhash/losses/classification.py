"""The classification loss of the methods with a classification branch (DPFAH, EGA, GreedyHash)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnhash.errors import ConfigError

CLASSIFICATION_MODES = ("auto", "ce", "bce")


def is_single_label(labels: Tensor) -> bool:
    """True when every row of a multi-hot label matrix holds exactly one 1."""
    return bool((labels.sum(dim=1) == 1).all())


def single_label_mode(mode: str, labels: Tensor, owner: str) -> bool:
    """Whether to use cross-entropy: `mode` "ce" / "bce" forces it, "auto" reads the labels."""
    if mode not in CLASSIFICATION_MODES:
        raise ConfigError(f"{owner}: classification must be auto, ce or bce, got {mode!r}")
    return is_single_label(labels) if mode == "auto" else mode == "ce"


def classification_loss(logits: Tensor, labels: Tensor, single_label: bool) -> Tensor:
    """Cross-entropy on the label index (single-label) or mean BCE-with-logits on the multi-hot rows."""
    if single_label:
        return F.cross_entropy(logits, labels.argmax(dim=1))
    return F.binary_cross_entropy_with_logits(logits, labels.float())
