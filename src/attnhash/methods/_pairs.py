"""Pair bookkeeping shared by the pairwise comparison methods (dsh, dhn, hashnet, idhn, dfh).

Private helper module, not a method (it registers nothing); a candidate for losses.py.

A pairwise loss compares each item i of a batch with partners j. Two sets of partners:
- "batch": the other items of the same mini-batch (the pairs DSH, DHN, HashNet and IDHN form in their
  papers and code). Self pairs (i, i) are left out: the papers sum over pairs of distinct images; u u^T
  implementations include the diagonal only as a side effect.
- "bank": the relaxed codes of the whole training set, kept in a MemoryBank (DPSH-style; DFH's code
  compares each batch with the codes U of every training image). Many more pairs per step, which helps
  short CPU runs; the bank side carries no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnhash.errors import ConfigError
from attnhash.methods.losses import MemoryBank

PAIR_MODES = ("batch", "bank")


def label_cosine(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """Cosine of multi-hot label rows, in [0, 1]: 1 for identical label sets, 0 for disjoint ones.

    This is the soft similarity of IDHN and the continuous similarity c_ij of HashNet (multi-label data).
    """
    a = labels_a.float()
    b = labels_b.float()
    norms = a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True).t()
    return (a @ b.t()) / norms.clamp_min(1e-12)


def is_single_label(labels: Tensor) -> bool:
    """True when every row of a multi-hot label matrix holds exactly one 1."""
    return bool((labels.sum(dim=1) == 1).all())


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over the pairs where mask is 1."""
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class Partners:
    """The codes, labels and pair mask a batch is compared with (see the module docstring)."""

    def __init__(self, mode: str, num_train: int = 0, bits: int = 0, train_labels: Tensor | None = None):
        if mode not in PAIR_MODES:
            raise ConfigError(f"pairs must be one of {', '.join(PAIR_MODES)}; got {mode!r}")
        self.mode = mode
        # without the training labels (a loss called outside the trainer) there is no bank: batch pairs
        self.bank = MemoryBank(num_train, bits, train_labels) if mode == "bank" and train_labels is not None else None

    def __call__(self, u: Tensor, labels: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(partner codes P, partner labels, mask M): pair (i, j) compares u_i with P_j where M_ij = 1."""
        if self.bank is None or index is None:
            return batch_partners(u, labels)
        self.bank.update(index, u)
        mask = self.bank.filled.float().unsqueeze(0).expand(u.shape[0], -1)
        return self.bank.codes, self.bank.labels, mask


def batch_partners(u: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every ordered pair of distinct items of the batch."""
    n = u.shape[0]
    return u, labels, 1.0 - torch.eye(n, device=u.device, dtype=u.dtype)
