"""SimAM, the parameter-free attention (PFA) of DPFAH (Yang, Wang, Cheng, Sci Rep 2022; seed 000).

SimAM (Yang et al., ICML 2021) scores every neuron of a channel by the minimal energy of a linear
separation of that neuron from the other neurons of its channel. The closed-form solution needs only the
channel's spatial mean and variance, so the module has no parameters:

    d = (X - mean_hw X)^2,  v = sum_hw d / n,  n = H*W - 1,
    E = d / (4 (v + lambda)) + 0.5,   SimAM(X) = X * sigmoid(E),   lambda = 1e-4.

`simam` is the module as the SimAM reference places it (inside every residual block, right after conv2
and before bn2: model.attention_placement=blocks); `simam_residual` is DPFAH's Fig. 1 form, whose output is added element-wise to the feature map
it attends: X + SimAM(X).

Both keep `last_map`, the channel mean of the 3-D weights sigmoid(E) of the last forward (B, h, w),
detached, so `attnhash explain` can draw where the module looked.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnhash.models.attention.base import ATTENTION


def simam_weights(x: Tensor, lam: float = 1e-4) -> Tensor:
    """The 3-D attention weights sigmoid(E) of a (B, C, H, W) feature map, same shape.

    A 1x1 map has n = H*W - 1 = 0 and d = 0: the variance is taken as 0 (n clamped to 1), so E = 0.5
    everywhere instead of 0/0.
    """
    h, w = x.shape[-2:]
    n = max(h * w - 1, 1)
    d = (x - x.mean(dim=(-2, -1), keepdim=True)).pow(2)
    v = d.sum(dim=(-2, -1), keepdim=True) / n
    energy = d / (4 * (v + lam)) + 0.5
    return torch.sigmoid(energy)


class SimAM(nn.Module):
    """X * sigmoid(E) (residual=False) or X + X * sigmoid(E) (residual=True, DPFAH Fig. 1). No parameters."""

    def __init__(self, lam: float = 1e-4, residual: bool = False):
        super().__init__()
        if lam <= 0:
            raise ValueError(f"SimAM lambda must be positive, got {lam}")
        self.lam = float(lam)
        self.residual = residual
        self.last_map: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        weights = simam_weights(x, self.lam)
        self.last_map = weights.detach().mean(dim=1)
        attended = x * weights
        return x + attended if self.residual else attended

    def extra_repr(self) -> str:
        return f"lambda={self.lam:g}, residual={self.residual}"


@ATTENTION.register("simam")
def simam(channels: int, lam: float = 1e-4) -> SimAM:
    """Plain SimAM; `channels` is unused (the module is the same for any width)."""
    return SimAM(lam=lam, residual=False)


@ATTENTION.register("simam_residual")
def simam_residual(channels: int, lam: float = 1e-4) -> SimAM:
    """DPFAH's PFA block: X + SimAM(X), the element-wise sum of Fig. 1 of seed 000."""
    return SimAM(lam=lam, residual=True)
