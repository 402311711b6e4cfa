"""The straight-through sign shared by the methods that train on discrete codes (GreedyHash, DBDH).

Forward: b = sign(h) with attnhash's convention sign(0) = +1, so the codes seen in training are exactly the
codes the encoder will store. Backward: the gradient passes through unchanged, dL/dh = dL/db (the
straight-through estimator of Bengio et al. 2013 without clipping; GreedyHash, Su et al. NeurIPS 2018,
sec. 3.2 and eq. 7, argues for exactly this identity backward).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnhash.methods.losses import sign


class _StraightThroughSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:  # noqa: D102 - see module docstring
        return sign(h)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:  # noqa: D102
        return grad_output


def straight_through_sign(h: Tensor) -> Tensor:
    """sign(h) in {-1, +1} (sign(0) = +1) whose backward pass is the identity."""
    return _StraightThroughSign.apply(h)
