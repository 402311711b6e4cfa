"""Loss pieces shared by several methods (each method file says which it uses and with what weights)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def label_similarity(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """s_ij = 1 when items i and j share at least one label (multi-hot rows), else 0."""
    return (labels_a @ labels_b.t() > 0).float()


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


def quantization_loss(u: Tensor) -> Tensor:
    """Mean squared distance of relaxed codes to their signs, ||u - sign(u)||^2 / (n K)."""
    return (u - sign(u).detach()).pow(2).mean()


def sign(x: Tensor) -> Tensor:
    """sign with sign(0) = +1, the convention of attnhash codes."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class MemoryBank:
    """Relaxed codes and labels of every training item, updated as batches pass (DPSH-style training:
    each batch is compared against the whole training set, not only against itself)."""

    def __init__(self, num_items: int, bits: int, labels: Tensor):
        self.codes = torch.zeros(num_items, bits, device=labels.device)
        self.labels = labels
        self.filled = torch.zeros(num_items, dtype=torch.bool, device=labels.device)

    def update(self, index: Tensor, u: Tensor) -> None:
        self.codes[index] = u.detach().float()
        self.filled[index] = True

    def pairs(self, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(bank codes, similarity of the batch to the bank, mask of bank rows filled so far)."""
        s = label_similarity(labels, self.labels)
        mask = self.filled.float().unsqueeze(0).expand_as(s)
        return self.codes, s, mask
