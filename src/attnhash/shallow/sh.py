"""SH: Spectral Hashing.

Weiss, Torralba, Fergus, "Spectral hashing", NIPS 2008 (pp. 1753-1760 of the 2009 proceedings).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnhash.errors import CheckpointError, ConfigError
from attnhash.shallow._numeric import pca
from attnhash.shallow.base import ShallowHasher, register_shallow

__all__ = ["SpectralHashing"]


@register_shallow
class SpectralHashing(ShallowHasher):
    """Thresholded analytical eigenfunctions of a uniform box in PCA space.

    The paper relaxes "similar points get similar codes" to the graph-Laplacian eigenproblem and solves it
    in closed form for data uniform on a box [a_j, b_j] along each principal direction j: the 1-D
    eigenfunctions are cos(k pi (x - a) / (b - a)) = sin(pi/2 + k pi (x - a) / (b - a)), k = 1, 2, ...,
    with eigenvalue growing with (k / (b_j - a_j))^2. The bits are the ``bits`` smallest-eigenvalue
    (direction, mode) pairs, so a long side of the box receives several modes (several bits) before a
    short side gets its first. Mode k changes sign k times across the box.

    PCA keeps min(bits, d) directions; the box is the training range along each.
    ``modes_`` is (bits, 2): the PCA direction and the mode k of each bit, in eigenvalue order.
    """

    name = "sh"
    paper = "Weiss, Torralba, Fergus, NIPS 2008"
    _array_names = ("mean", "components", "lower", "upper", "modes")

    def __init__(self, bits: int, seed: int = 0, **unknown: Any) -> None:
        super().__init__(bits, seed, **unknown)  # unknown keywords: a clear ConfigError
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self.lower_: np.ndarray | None = None
        self.upper_: np.ndarray | None = None
        self.modes_: np.ndarray | None = None

    def _n_directions(self, dim: int) -> int:
        return min(self.bits, dim)

    def _fit(self, x: np.ndarray) -> None:
        n_dir = self._n_directions(x.shape[1])
        mean, components, _ = pca(x, n_dir)
        y = (x - mean) @ components
        lower, upper = y.min(axis=0), y.max(axis=0)
        width = upper - lower
        scale = width.max()
        if not scale > 0:
            raise ConfigError(f"{self.name}.fit: all training features are identical; nothing to hash")
        # Candidates: every (direction, k) with k = 1..bits. The longest side alone offers `bits` modes with
        # (k / width)^2 <= (bits / max width)^2, so no mode beyond k = bits can be among the smallest.
        ks = np.arange(1, self.bits + 1, dtype=np.float64)
        with np.errstate(divide="ignore"):
            # a flat direction (width ~ 0 relative to the longest) has no usable mode: infinite eigenvalue
            inv_width = np.where(width > 1e-12 * scale, 1.0 / np.maximum(width, 1e-300), np.inf)
        eig = (ks[None, :] * inv_width[:, None]) ** 2  # (n_dir, bits), proportional to the eigenvalue
        direction, mode = np.meshgrid(np.arange(n_dir), np.arange(1, self.bits + 1), indexing="ij")
        # smallest eigenvalue first; exact ties broken by direction then mode, for determinism
        order = np.lexsort((mode.ravel(), direction.ravel(), eig.ravel()))[: self.bits]
        self.mean_, self.components_ = mean, components
        self.lower_, self.upper_ = lower, upper
        self.modes_ = np.stack([direction.ravel()[order], mode.ravel()[order]], axis=1).astype(np.int64)

    def _prepare(self) -> None:
        d, k = self.modes_[:, 0], self.modes_[:, 1]
        width = self.upper_ - self.lower_
        self._projection = self.components_[:, d]  # one column per bit (repeated for multi-mode directions)
        self._start = self.mean_ @ self._projection + self.lower_[d]  # x.u - (m.u + a): distance into the box
        self._omega = k * np.pi / width[d]

    def _project(self, x: np.ndarray) -> np.ndarray:
        t = x @ self._projection - self._start
        return np.sin(np.pi / 2 + self._omega * t)

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        n_dir = self._n_directions(self.dim_)
        return {
            "mean": (self.dim_,),
            "components": (self.dim_, n_dir),
            "lower": (n_dir,),
            "upper": (n_dir,),
            "modes": (self.bits, 2),
        }

    def _check_state(self) -> None:
        n_dir = self._n_directions(self.dim_)
        d, k = self.modes_[:, 0], self.modes_[:, 1]
        if np.any(d < 0) or np.any(d >= n_dir) or np.any(k < 1):
            raise CheckpointError("sh state: modes hold an out-of-range direction or a mode < 1")
        if np.any(self.upper_[d] <= self.lower_[d]):
            raise CheckpointError("sh state: a selected direction has an empty box")
        self.modes_ = self.modes_.astype(np.int64)
