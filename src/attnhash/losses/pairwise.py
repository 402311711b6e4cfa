"""Pairwise loss parts shared by the pairwise methods: label similarities, DPSH's likelihood, and the
partners a batch is compared with.

A pairwise loss compares each item i of a batch with partners j. Two sets of partners:
- "batch": the other items of the same mini-batch (the pairs DSH, DHN, HashNet and IDHN form in their
  papers and code). Self pairs (i, i) are left out: the papers sum over pairs of distinct images; u u^T
  implementations include the diagonal only as a side effect.
- "bank": the relaxed codes of the whole training set, kept in a MemoryBank (DPSH-style; DFH's code
  compares each batch with the codes U of every training image). Many more pairs per step, which helps
  short CPU runs; the bank side carries no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from attnhash.errors import ConfigError

PAIR_MODES = ("batch", "bank")


def label_similarity(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """s_ij = 1 when items i and j share at least one label (multi-hot rows), else 0."""
    return (labels_a @ labels_b.t() > 0).float()


def label_cosine(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """Cosine of multi-hot label rows, in [0, 1]: 1 for identical label sets, 0 for disjoint ones.

    This is the soft similarity of IDHN and the continuous similarity c_ij of HashNet (multi-label data).
    """
    a = labels_a.float()
    b = labels_b.float()
    norms = a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True).t()
    return (a @ b.t()) / norms.clamp_min(1e-12)


def pairwise_likelihood(u_a: Tensor, u_b: Tensor, s: Tensor, scale: float = 0.5, mask: Tensor | None = None) -> Tensor:
    """DPSH's negative log-likelihood of pairwise similarities, averaged over pairs.

    theta_ij = scale * <u_i, u_j>;  -log p(s_ij | u_i, u_j) = log(1 + exp(theta_ij)) - s_ij * theta_ij,
    written with softplus so that large |theta| neither overflows nor loses precision.
    `mask` (same shape as s, 0/1) keeps only some pairs, e.g. the known pairs of an unsupervised similarity.
    """
    theta = scale * (u_a @ u_b.t())
    nll = F.softplus(theta) - s * theta
    if mask is None:
        return nll.mean()
    return (nll * mask).sum() / mask.sum().clamp_min(1.0)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over the pairs where mask is 1."""
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class MemoryBank:
    """Relaxed codes and labels of every training item, updated as batches pass (DPSH-style training:
    each batch is compared against the whole training set, not only against itself).

    `gather` (TrainContext.dist.all_gather in the trainer) collects every process's batch under distributed
    training, so each process's bank holds the same codes."""

    def __init__(self, num_items: int, bits: int, labels: Tensor, gather: Callable[[Tensor], Tensor] | None = None):
        self.codes = torch.zeros(num_items, bits, device=labels.device)
        self.labels = labels
        self.filled = torch.zeros(num_items, dtype=torch.bool, device=labels.device)
        self.gather = gather

    def update(self, index: Tensor, u: Tensor) -> None:
        u = u.detach().float()
        if self.gather is not None:
            index, u = self.gather(index), self.gather(u)
        self.codes[index] = u
        self.filled[index] = True

    def pairs(self, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(bank codes, similarity of the batch to the bank, mask of bank rows filled so far)."""
        s = label_similarity(labels, self.labels)
        mask = self.filled.float().unsqueeze(0).expand_as(s)
        return self.codes, s, mask


class Partners:
    """The codes, labels and pair mask a batch is compared with (see the module docstring)."""

    def __init__(self, mode: str, num_train: int = 0, bits: int = 0, train_labels: Tensor | None = None,
                 gather: Callable[[Tensor], Tensor] | None = None):
        if mode not in PAIR_MODES:
            raise ConfigError(f"pairs must be one of {', '.join(PAIR_MODES)}; got {mode!r}")
        self.mode = mode
        # without the training labels (a loss called outside the trainer) there is no bank: batch pairs
        self.bank = MemoryBank(num_train, bits, train_labels, gather) \
            if mode == "bank" and train_labels is not None else None

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
