"""PCAH: the sign of the top principal components of centred data.

The standard PCA baseline of the hashing literature, e.g. Wang, Kumar, Chang, "Semi-supervised hashing for
large-scale search", TPAMI 2012, and the "PCA-Direct" baseline of Gong & Lazebnik (ITQ), CVPR 2011.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnhash.errors import ConfigError
from attnhash.shallow._numeric import pca
from attnhash.shallow.base import ShallowHasher, register_shallow

__all__ = ["PCAH", "check_pca_bits"]


def check_pca_bits(owner: str, bits: int, n: int, d: int) -> None:
    """PCA gives at most min(d, n - 1) directions with non-zero variance; one bit per direction needs that many."""
    if bits > d:
        raise ConfigError(
            f"{owner}: {bits} bits need {bits} PCA directions but the features are {d}-D; "
            f"use bits <= {d} (or a method not limited by d: lsh, sh, sph, density_sensitive)"
        )
    if bits > n - 1:
        raise ConfigError(f"{owner}: {bits} PCA directions need at least {bits + 1} training points, got {n}")


@register_shallow
class PCAH(ShallowHasher):
    """Bit j = sign(<u_j, x - mean>), u_j the j-th principal direction of the training data."""

    name = "pcah"
    paper = "Wang, Kumar, Chang, TPAMI 2012 (PCA baseline)"
    _array_names = ("mean", "components")

    def __init__(self, bits: int, seed: int = 0, **unknown: Any) -> None:
        super().__init__(bits, seed, **unknown)  # unknown keywords: a clear ConfigError
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None

    def _fit(self, x: np.ndarray) -> None:
        check_pca_bits(self.name, self.bits, *x.shape)
        self.mean_, self.components_, _ = pca(x, self.bits)

    def _prepare(self) -> None:
        self._offset = self.mean_ @ self.components_  # (x - m) W = x W - m W: no centred copy of x

    def _project(self, x: np.ndarray) -> np.ndarray:
        return x @ self.components_ - self._offset

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"mean": (self.dim_,), "components": (self.dim_, self.bits)}
