"""The default backend: FAISS binary indexes.

- top-k: exact Hamming ranking on `IndexBinaryFlat`. FAISS's heaps order equal distances by label and the
  labels are insertion positions, so ties come out in insertion order, as in the reference.
- removal: `IndexBinaryFlat.remove_ids` compacts the code array in place, keeping order, so positions stay
  dense and ties stay in insertion order (O(n) per call, batched removals cost one pass).
- radius search: a hash-table index built on first use and kept up to date on adds (dropped on removal):
  `IndexBinaryMultiHash` (the code cut into `nhash` disjoint b-bit pieces, which for 64 or more bits shares
  the flat index's code storage) or `IndexBinaryHash` (one table on the whole code, shorter codes). Both are
  exact when every bucket within the right number of flipped bits is probed: with the code split into
  nhash pieces, an item within distance r differs from the query in at most floor(r / nhash) bits of some
  piece (pigeonhole), so nflip = r // nhash; with one table on all bits, nflip = r. A cost model picks the
  hash tables or a flat range scan per query batch, whichever reads less (the flat scan wins for large radii).
  FAISS's range_search keeps distances strictly below its threshold, so it is given radius + 1.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Literal

import faiss
import numpy as np

from attnhash.index.base import LocalIndex, sort_range_hits

__all__ = ["FaissIndex", "hash_layout"]

# Rough per-operation costs (ns) measured on the development machine, used only to choose a plan.
_NS_PER_PROBE = 100.0
_NS_PER_CANDIDATE = 5.0
_NS_PER_FLAT_BYTE = 0.06  # a flat scan reads ~0.5 ns per 64-bit code per query
_MIN_HASH_N = 20_000  # below this a flat scan is always fast enough


def hash_layout(bits: int) -> tuple[str, int, int]:
    """("multihash", nhash, b) for codes of 64 bits and more, ("hash", 1, bits) for shorter ones.

    The pieces of a multi-hash cover every bit exactly once (nhash * b == bits) so the pigeonhole bound holds.
    """
    if bits >= 64:
        for b in sorted(range(8, 25), key=lambda b: (abs(b - 16), b)):
            if bits % b == 0:
                return "multihash", bits // b, b
    return "hash", 1, bits


class FaissIndex(LocalIndex):
    """Exact Hamming top-k and radius search on FAISS binary indexes (see module docstring)."""

    backend = "faiss"

    def __init__(self, bits: int, fingerprint: str | None = None, info: dict[str, Any] | None = None) -> None:
        super().__init__(bits, fingerprint, info)
        self._flat = faiss.IndexBinaryFlat(self.bits)
        self._hash: Any = None  # IndexBinaryMultiHash / IndexBinaryHash, built on first radius search
        self._kind, self._nhash, self._b = hash_layout(self.bits)
        self._hash_lock = threading.Lock()  # concurrent radius queries may race to build the tables

    # ---- storage hooks ------------------------------------------------------------------------------
    def _store_codes(self, codes: np.ndarray) -> None:
        if self._hash is None:
            self._flat.add(codes)
        elif self._kind == "multihash":
            self._hash.add(codes)  # adds to the shared flat storage and to the tables
        else:
            self._flat.add(codes)
            self._hash.add(codes)

    def _compact_codes(self, keep: np.ndarray) -> None:
        removed = np.flatnonzero(~keep).astype(np.int64)
        if self._hash is not None and self._kind == "multihash":
            # the flat storage belongs to the multi-hash index: move the codes to a fresh flat index first
            flat = faiss.IndexBinaryFlat(self.bits)
            flat.add(np.ascontiguousarray(self._codes_view()[keep]))
            self._flat = flat
        else:
            self._flat.remove_ids(faiss.IDSelectorBatch(removed))
        self._hash = None  # the hash tables have no removal: rebuilt on the next radius search

    def _codes_view(self) -> np.ndarray:
        n = self._flat.ntotal
        if n == 0:
            return np.zeros((0, self.code_size), dtype=np.uint8)
        return faiss.rev_swig_ptr(self._flat.xb.data(), n * self.code_size).reshape(n, self.code_size)

    def memory_bytes(self) -> int:
        """ids + metadata + the flat codes (+ the hash tables' id lists when built, estimated)."""
        total = super().memory_bytes() + self._flat.xb.size()
        if self._hash is not None:
            n = self._flat.ntotal
            total += 8 * n * self._nhash + (0 if self._kind == "multihash" else n * self.code_size)
        return total

    # ---- top-k --------------------------------------------------------------------------------------
    def _search_positions(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._flat.search(q, k)

    # ---- radius -------------------------------------------------------------------------------------
    def _hash_cost_ns(self, radius: int) -> float:
        n = max(self._flat.ntotal, 1)
        nflip = radius // self._nhash if self._kind == "multihash" else radius
        probes = self._nhash * sum(math.comb(self._b, i) for i in range(min(nflip, self._b) + 1))
        candidates = probes * n / 2.0**self._b
        return probes * _NS_PER_PROBE + candidates * _NS_PER_CANDIDATE

    def range_plan(self, radius: int) -> Literal["hash", "flat"]:
        """Which structure answers a radius query: the hash tables when they read less than a flat scan."""
        n = self._flat.ntotal
        if n < _MIN_HASH_N:
            return "flat"
        flat_ns = n * self.code_size * _NS_PER_FLAT_BYTE
        return "hash" if self._hash_cost_ns(radius) < 0.5 * flat_ns else "flat"

    def build_hash(self) -> None:
        """Build the radius-search hash tables now (otherwise done on the first radius query that uses them)."""
        with self._hash_lock:
            if self._hash is None:
                self._build_hash()

    def _build_hash(self) -> None:
        codes = self._codes_view()
        if self._kind == "multihash":
            mh = faiss.IndexBinaryMultiHash(self.bits, self._nhash, self._b)
            mh.add(codes)
            # share one copy of the codes: the multi-hash index's own storage becomes the flat index
            self._hash = mh
            self._flat = faiss.downcast_IndexBinary(mh.storage)
        else:
            h = faiss.IndexBinaryHash(self.bits, self._b)
            h.add(codes)
            self._hash = h

    def _range_positions(self, q: np.ndarray, radius: int, method: str = "auto") -> list[tuple[np.ndarray, np.ndarray]]:
        plan = self.range_plan(radius) if method == "auto" else method
        if plan == "hash":
            # nflip is a field of the shared index: build, set and search under one lock so concurrent radius
            # queries with different radii cannot see each other's setting
            with self._hash_lock:
                if self._hash is None:
                    self._build_hash()
                self._hash.nflip = radius // self._nhash if self._kind == "multihash" else radius
                lims, d, p = self._hash.range_search(q, radius + 1)
        else:
            lims, d, p = self._flat.range_search(q, radius + 1)
        qidx = np.repeat(np.arange(len(q)), np.diff(lims.astype(np.int64)))
        return sort_range_hits(qidx, d, p, len(q))

    def range_search(self, queries: np.ndarray, radius: int, method: Literal["auto", "hash", "flat"] = "auto"):
        """Exact radius search; `method` forces the hash tables or the flat scan (both give the same result)."""
        if method == "auto":
            return super().range_search(queries, radius)
        radius = int(radius)
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        q = self._queries(queries)
        ids = self._ids.view
        return [(ids[p], d) for p, d in self._range_positions(q, radius, method)]
