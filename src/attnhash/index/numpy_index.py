"""The reference backend: XOR + popcount in numpy, then a counting select over the small integer distances.

Distances lie in 0..bits, so instead of argpartition each query counts how many items sit at each distance
(bincount), finds the threshold distance t where the running count reaches k, takes every item closer than t
and the first items at exactly t in insertion order, then orders them stably by distance. The result is the
exact top-k with ties broken by insertion order, the definition the other backends are tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnhash.codes import popcount
from attnhash.index.base import Column, LocalIndex, sort_range_hits

__all__ = ["NumpyIndex"]

_BLOCK_ELEMS = 1 << 23  # distance-matrix elements per block (bounds the temporary memory to ~64 MB)


def _word_dtype(code_size: int) -> np.dtype:
    for size, dt in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if code_size % size == 0:
            return np.dtype(dt)
    return np.dtype(np.uint8)


class NumpyIndex(LocalIndex):
    """Exact brute-force index in numpy (the reference implementation); codes may stay memory-mapped."""

    backend = "numpy"

    def __init__(self, bits: int, fingerprint: str | None = None, info: dict[str, Any] | None = None) -> None:
        super().__init__(bits, fingerprint, info)
        self._codes = Column(np.zeros((0, self.code_size), dtype=np.uint8))
        self._word = _word_dtype(self.code_size)
        self._dist_dtype = np.uint8 if bits < 256 else np.uint16

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

    # ---- distances ------------------------------------------------------------------------------------
    def _distance_blocks(self, q: np.ndarray):
        """Yield (query slice, distances (bq, n)) over blocks of queries."""
        db = self._codes.view
        n = len(db)
        dbw = db.view(self._word) if n else np.zeros((0, 1), dtype=self._word)
        qw = q.view(self._word)
        bq = max(1, _BLOCK_ELEMS // max(n, 1))
        for s in range(0, len(q), bq):
            block = qw[s : s + bq]
            d = np.zeros((len(block), n), dtype=self._dist_dtype)
            for w in range(dbw.shape[1]):
                d += popcount(block[:, w : w + 1] ^ dbw[:, w]).astype(self._dist_dtype, copy=False)
            yield slice(s, s + len(block)), d

    def distances(self, queries: np.ndarray) -> np.ndarray:
        """Full (nq, n) Hamming distance matrix in insertion order (for tests and small indexes)."""
        q = self._queries(queries)
        out = np.zeros((len(q), len(self)), dtype=np.int32)
        for sl, d in self._distance_blocks(q):
            out[sl] = d
        return out

    # ---- queries ------------------------------------------------------------------------------------
    def _search_positions(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._codes)
        dist = np.full((len(q), k), -1, dtype=np.int32)
        pos = np.full((len(q), k), -1, dtype=np.int64)
        kk = min(k, n)
        if kk == 0:
            return dist, pos
        for sl, block in self._distance_blocks(q):
            for row, d in zip(range(sl.start, sl.stop), block):
                counts = np.bincount(d, minlength=self.bits + 1)
                t = int(np.searchsorted(np.cumsum(counts), kk))  # first distance where the count reaches kk
                closer = np.flatnonzero(d < t)
                at_t = np.flatnonzero(d == t)[: kk - len(closer)]
                sel = np.concatenate([closer, at_t])
                order = np.argsort(d[sel], kind="stable")  # stable: equal distances keep position order
                pos[row, :kk] = sel[order]
                dist[row, :kk] = d[sel[order]]
        return dist, pos

    def _range_positions(self, q: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        qi, di, pi = [], [], []
        for sl, block in self._distance_blocks(q):
            rows, cols = np.nonzero(block <= radius)
            qi.append(rows + sl.start)
            pi.append(cols.astype(np.int64))
            di.append(block[rows, cols].astype(np.int32))
        if not qi:
            return [(np.zeros(0, np.int32), np.zeros(0, np.int64)) for _ in range(len(q))]
        return sort_range_hits(np.concatenate(qi), np.concatenate(di), np.concatenate(pi), len(q))
