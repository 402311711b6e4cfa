"""The reference backend: XOR + popcount in numpy, then a counting select over the small integer distances.

Distances lie in 0..bits, so instead of argpartition each query counts how many items sit at each distance
(bincount), finds the threshold distance t where the running count reaches k, takes every item closer than t
and the first items at exactly t in insertion order, then orders them stably by distance. The result is the
exact top-k with ties broken by insertion order, the definition the other backends are tested against. The
scans are attnhash.index.scan's NumPy ones (the compiled scan's fallback), always NumPy here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnhash.index.base import Column, LocalIndex
from attnhash.index.distinct import distinct_summary
from attnhash.index.scan import numpy_distances, radius_numpy, topk_numpy

__all__ = ["NumpyIndex"]


class NumpyIndex(LocalIndex):
    """Exact brute-force index in numpy (the reference implementation); codes may stay memory-mapped."""

    backend = "numpy"

    def __init__(self, bits: int, fingerprint: str | None = None, info: dict[str, Any] | None = None) -> None:
        super().__init__(bits, fingerprint, info)
        self._codes = Column(np.zeros((0, self.code_size), dtype=np.uint8))

    # ---- storage hooks ------------------------------------------------------------------------------
    def _store_codes(self, codes: np.ndarray) -> None:
        self._codes.extend(codes)

    def _load_codes(self, codes: np.ndarray) -> None:
        self._codes = Column(codes)  # keep the memory map: no copy until the first change

    def _compact_codes(self, keep: np.ndarray) -> None:
        self._codes.compact(keep)

    def _codes_view(self) -> np.ndarray:
        return self._codes.view

    def memory_bytes(self) -> int:
        return super().memory_bytes() + self._codes._buf.nbytes

    def distinct_codes(self) -> dict[str, int]:
        """Distinct codes and the largest group of equal codes."""
        return distinct_summary(self._codes.view)

    # ---- queries ------------------------------------------------------------------------------------
    def distances(self, queries: np.ndarray) -> np.ndarray:
        """Full (nq, n) Hamming distance matrix in insertion order (for tests and small indexes)."""
        return numpy_distances(self._codes.view, self._queries(queries))

    def _search_positions(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return topk_numpy(self._codes.view, q, k)

    def _range_positions(self, q: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return radius_numpy(self._codes.view, q, radius)
