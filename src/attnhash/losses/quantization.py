"""Quantisation terms: how far relaxed codes are from binary ones."""

from __future__ import annotations

from torch import Tensor

from attnhash.codes import sign


def quantization_loss(u: Tensor) -> Tensor:
    """Mean squared distance of relaxed codes to their signs, ||u - sign(u)||^2 / (n K)."""
    return (u - sign(u).detach()).pow(2).mean()
