"""LSH: random hyperplanes through the origin (sign random projections).

Charikar, "Similarity estimation techniques from rounding algorithms", STOC 2002; the hashing-for-retrieval
use of Andoni & Indyk, "Near-optimal hashing algorithms for approximate nearest neighbor in high
dimensions", FOCS 2006 / CACM 2008. Two points collide on a bit with probability 1 - angle / pi.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnhash.errors import CheckpointError
from attnhash.shallow.base import ShallowHasher, register_shallow

__all__ = ["LSH"]


@register_shallow
class LSH(ShallowHasher):
    """Bit j = sign(<w_j, x>) with w_j ~ N(0, I_d): data-independent, a function of (d, bits, seed) only.

    ``fit`` only records d (encode before fit takes d from its input). The hyperplanes go through the
    origin, as in the paper, so the data are not centred: features far from the origin (all-positive
    pixels, ReLU outputs) give unbalanced bits, one reason LSH trails the learned methods.
    """

    name = "lsh"
    paper = "Charikar, STOC 2002; Andoni & Indyk, FOCS 2006"
    data_dependent = False
    _array_names = ("projection",)
    _min_fit_samples = 1

    def __init__(self, bits: int, seed: int = 0, **unknown: Any) -> None:
        super().__init__(bits, seed, **unknown)  # unknown keywords: a clear ConfigError
        self.projection_: np.ndarray | None = None

    def _init_dim(self, dim: int) -> None:
        # a fresh generator from the seed alone, so the hyperplanes never depend on the data or on call order
        self.projection_ = np.random.default_rng(self.seed).standard_normal((dim, self.bits))

    def _fit(self, x: np.ndarray) -> None:
        self._init_dim(x.shape[1])

    def _project(self, x: np.ndarray) -> np.ndarray:
        return x @ self.projection_

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"projection": (self.dim_, self.bits)}

    def _check_state(self) -> None:
        if not np.any(self.projection_):
            raise CheckpointError("lsh state: the projection is all zeros")
