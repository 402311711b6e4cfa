"""The straight-through sign shared by the methods that train on discrete codes (GreedyHash, DBDH).

Forward: b = sign(h) with attnhash's convention sign(0) = +1, so the codes seen in training are exactly the
codes the encoder will store. Backward: the gradient passes through unchanged, dL/dh = dL/db (the
straight-through estimator of Bengio et al. 2013 without clipping; GreedyHash, Su et al. NeurIPS 2018,
argues for exactly this identity backward: its greedy update of the codes, carried out by backpropagation).
`clip` gives the saturating form instead (DBDH's default, see attnhash.methods.dbdh).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnhash.codes import sign


class _StraightThroughSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, clip: float | None) -> Tensor:  # noqa: D102 - see module docstring
        ctx.clip = clip
        if clip is not None:
            ctx.save_for_backward(h)
        return sign(h)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        if ctx.clip is None:
            return grad_output, None
        (h,) = ctx.saved_tensors
        return grad_output * (h.abs() <= ctx.clip).to(grad_output.dtype), None


def straight_through_sign(h: Tensor, clip: float | None = None) -> Tensor:
    """sign(h) in {-1, +1} (sign(0) = +1) whose backward pass is the identity.

    With `clip`, the gradient passes only where |h| <= clip (the saturating estimator of Hubara et al.,
    "Binarized Neural Networks", NIPS 2016: the backward of a hard tanh), so an entry already decided
    beyond the clip stops being pushed.
    """
    return _StraightThroughSign.apply(h, clip)
