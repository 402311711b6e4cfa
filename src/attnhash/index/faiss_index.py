"""The default backend: codes stored in a FAISS binary index, searched by attnhash's compiled exact search.

- search: `attnhash.index.planner.ExactSearch` (a compiled flat scan, the distinct-code layer and a planner
  between them; see that module), exactly the ids, distances and tie order of `IndexBinaryFlat` sorted by
  (distance, position). Without numba, FAISS itself answers: `IndexBinaryFlat` top-k (its heaps order equal
  distances by label, the labels are insertion positions, so ties come out in insertion order) and the radius
  plan below. `method="faiss"` asks for FAISS's own flat scan in any case (the reference of the benchmarks).
- removal: `IndexBinaryFlat.remove_ids` compacts the code array in place, keeping order, so positions stay
  dense and ties stay in insertion order (O(n) per call, batched removals cost one pass).
- radius search: hash tables built on first use and kept up to date on adds (dropped on removal):
  `IndexBinaryMultiHash` for 64 bits and more (the code cut into `nhash` disjoint b-bit pieces; it shares the
  flat index's code storage) or `IndexBinaryHash` (one table on the first b bits) for shorter codes. Both
  are exact when every bucket within the right number of flipped bits is probed: an item within distance r
  of the query differs in at most floor(r / nhash) bits of some piece (pigeonhole; bits outside the pieces
  only lower that count), so nflip = r // nhash; with one table on b bits, nflip = r. The piece width b is
  chosen when the tables are built to minimise the expected work of a radius-2 query at the current size
  (few probes, small buckets: 3 x 21 bits for 1e7 64-bit codes), and a cost model picks the tables or a
  flat range scan per query batch, whichever reads less (the flat scan wins for large radii). These tables
  are `method="multihash"` now; the planner of the compiled search does not use them (on learned codes each
  bucket holds a query's whole cluster: slower than a flat scan).
  FAISS's range_search keeps distances strictly below its threshold, so it is given radius + 1.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Literal

import faiss
import numpy as np

from attnhash.index import scan
from attnhash.index.base import LocalIndex, sort_range_hits
from attnhash.index.compiled import REASON
from attnhash.index.distinct import distinct_summary
from attnhash.index.planner import PLANS, ExactSearch

__all__ = ["FaissIndex", "hash_layout", "TOPK_METHODS", "RANGE_METHODS"]

TOPK_METHODS = (*PLANS, "faiss")
RANGE_METHODS = (*PLANS, "faiss", "multihash")

# Rough per-operation costs (ns) on the development machine, used only to choose layouts and plans.
_NS_PER_PROBE = 100.0  # one hash-table lookup
_NS_PER_CANDIDATE = 10.0  # fetch a candidate's code, dedupe, compare
_NS_PER_FLAT_BYTE = 0.03  # a flat scan reads ~0.25 ns per 64-bit code per query
_MIN_HASH_N = 20_000  # below this a flat scan is always fast enough
_DESIGN_RADIUS = 2  # the radius the table layout is tuned for (P@H<=2 is the field's usual query)


def _hash_cost_ns(n: int, nhash: int, b: int, nflip: int) -> float:
    probes = nhash * sum(math.comb(b, i) for i in range(min(nflip, b) + 1))
    return probes * _NS_PER_PROBE + probes * n / 2.0**b * _NS_PER_CANDIDATE


def hash_layout(bits: int, n: int = 1 << 20, radius: int = _DESIGN_RADIUS) -> tuple[str, int, int]:
    """(kind, nhash, b): "multihash" with nhash pieces of b bits for codes of 64 bits and more, "hash" (one
    table on b bits) for shorter codes; b minimises the expected cost of a `radius` query over n codes."""
    n = max(n, 1 << 16)
    if bits >= 64:
        options = [(bits // b, b, radius // (bits // b)) for b in range(8, min(32, bits // 2) + 1)]
        kind = "multihash"
    else:
        options = [(1, b, radius) for b in range(min(8, bits), min(32, bits) + 1)]
        kind = "hash"
    nhash, b, _ = min(options, key=lambda o: (_hash_cost_ns(n, *o), o[1]))
    return kind, nhash, b


class FaissIndex(LocalIndex):
    """Exact Hamming top-k and radius search on FAISS binary indexes (see module docstring)."""

    backend = "faiss"

    def __init__(self, bits: int, fingerprint: str | None = None, info: dict[str, Any] | None = None) -> None:
        super().__init__(bits, fingerprint, info)
        self._flat = faiss.IndexBinaryFlat(self.code_size * 8)
        self._hash: Any = None  # IndexBinaryMultiHash / IndexBinaryHash, built on first radius search
        self._kind, self._nhash, self._b = hash_layout(self.code_size * 8)
        self._hash_n = 0  # size when the tables were built: they are re-laid out after 4x growth
        self._hash_lock = threading.Lock()  # concurrent radius queries may race to build the tables
        self._exact = ExactSearch(self._codes_view, self.bits) if scan.COMPILED else None

    # ---- storage hooks ------------------------------------------------------------------------------
    def _store_codes(self, codes: np.ndarray) -> None:
        if self._hash is None:
            self._flat.add(codes)
        elif self._kind == "multihash":
            self._hash.add(codes)  # adds to the shared flat storage and to the tables
        else:
            self._flat.add(codes)
            self._hash.add(codes)
        if self._exact is not None:
            self._exact.added(codes)

    def _compact_codes(self, keep: np.ndarray) -> None:
        if self._hash is not None and self._kind == "multihash":
            self._drop_hash(keep)
        else:
            self._flat.remove_ids(faiss.IDSelectorBatch(np.flatnonzero(~keep).astype(np.int64)))
            self._hash = None  # the hash tables have no removal: rebuilt on the next radius search
        if self._exact is not None:
            self._exact.compacted(keep)

    def _drop_hash(self, keep: np.ndarray | None = None) -> None:
        """Forget the hash tables; a multi-hash index owns the code storage, so move the codes out first."""
        if self._hash is not None and self._kind == "multihash":
            codes = self._codes_view()
            flat = faiss.IndexBinaryFlat(self.code_size * 8)
            flat.add(np.ascontiguousarray(codes if keep is None else codes[keep]))
            self._flat = flat
        self._hash = None

    def _codes_view(self) -> np.ndarray:
        n = self._flat.ntotal
        if n == 0:
            return np.zeros((0, self.code_size), dtype=np.uint8)
        return faiss.rev_swig_ptr(self._flat.xb.data(), n * self.code_size).reshape(n, self.code_size)

    def memory_bytes(self) -> int:
        """ids + metadata + the flat codes (+ the distinct-code layer, + the hash tables' id lists when built,
        a lower bound)."""
        total = super().memory_bytes() + self._flat.xb.size()
        if self._hash is not None:
            n = self._flat.ntotal
            total += 8 * n * self._nhash + (0 if self._kind == "multihash" else n * self.code_size)
        if self._exact is not None and self._exact.layer is not None:
            total += self._exact.layer.memory_bytes()
        return total

    # ---- the compiled search ------------------------------------------------------------------------------
    def build_layer(self) -> None:
        """Build the distinct-code layer now (otherwise built when the searches so far have cost as much)."""
        if self._exact is not None:
            self._exact.prepare()

    def search_stats(self) -> dict[str, Any]:
        """How searches are answered: compiled or not, the distinct-code layer and the measured costs."""
        if self._exact is None:
            return {"compiled": False, "reason": REASON}
        return {"compiled": True, **self._exact.stats(), "last_plan": self._exact.last_plan}

    def distinct_codes(self) -> dict[str, int]:
        """Distinct codes and the largest group of equal codes (from the layer when built)."""
        if self._exact is not None and self._exact.layer is not None:
            return self._exact.layer.stats()
        return distinct_summary(self._codes_view())

    @property
    def hash_tables(self) -> dict[str, Any] | None:
        """The radius-search tables' layout, or None while they are not built."""
        if self._hash is None:
            return None
        return {"kind": self._kind, "nhash": self._nhash, "b": self._b, "built_at_n": self._hash_n}

    # ---- top-k --------------------------------------------------------------------------------------
    def _search_positions(self, q: np.ndarray, k: int, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        if method == "faiss" or self._exact is None:
            return self._flat.search(q, k)
        return self._exact.topk(q, k, method)  # type: ignore[arg-type]

    def search(self, queries: np.ndarray, k: int, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k; `method` forces a plan ("flat", "distinct", "hash", or "faiss": FAISS's own scan);
        every plan gives the same result."""
        if method not in TOPK_METHODS:
            raise ValueError(f"unknown search method {method!r}; one of {', '.join(TOPK_METHODS)}")
        if method == "auto":
            return super().search(queries, k)
        k = int(k)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        q = self._queries(queries)
        dist, pos = self._search_positions(q, k, method)
        ids = self._ids.view
        pad = pos < 0
        out = ids[np.where(pad, 0, pos)] if len(ids) else np.zeros(pos.shape, dtype=np.int64)
        out[pad] = -1
        dist[pad] = -1
        return dist, out

    # ---- radius -------------------------------------------------------------------------------------
    def range_plan(self, radius: int) -> str:
        """Which plan answers a radius query: the compiled search's ("flat", "distinct" or "hash"), or without
        numba FAISS's ("multihash" tables when they read less than a flat scan, else "faiss")."""
        if self._exact is not None:
            return self._exact.radius_plan(radius)
        return "multihash" if self._faiss_range_plan(radius) == "hash" else "faiss"

    def _faiss_range_plan(self, radius: int) -> Literal["hash", "flat"]:
        n = self._flat.ntotal
        if n < _MIN_HASH_N:
            return "flat"
        kind, nhash, b = (self._kind, self._nhash, self._b) if self._hash is not None else hash_layout(self.code_size * 8, n)
        nflip = radius // nhash if kind == "multihash" else radius
        flat_ns = n * self.code_size * _NS_PER_FLAT_BYTE
        return "hash" if _hash_cost_ns(n, nhash, b, nflip) < 0.5 * flat_ns else "flat"

    def build_hash(self) -> None:
        """Build the radius-search hash tables now (otherwise done on the first radius query that uses them)."""
        with self._hash_lock:
            if self._hash is None:
                self._build_hash()

    def _build_hash(self) -> None:
        n = self._flat.ntotal
        self._kind, self._nhash, self._b = hash_layout(self.code_size * 8, n)
        codes = self._codes_view()
        if self._kind == "multihash":
            mh = faiss.IndexBinaryMultiHash(self.code_size * 8, self._nhash, self._b)
            mh.add(codes)
            # share one copy of the codes: the multi-hash index's own storage becomes the flat index
            self._hash = mh
            self._flat = faiss.downcast_IndexBinary(mh.storage)
        else:
            h = faiss.IndexBinaryHash(self.code_size * 8, self._b)
            h.add(codes)
            self._hash = h
        self._hash_n = n

    def _range_positions(self, q: np.ndarray, radius: int, method: str = "auto") -> list[tuple[np.ndarray, np.ndarray]]:
        if method in PLANS and self._exact is not None:
            return self._exact.radius(q, radius, method)  # type: ignore[arg-type]
        if method == "auto":
            plan = self._faiss_range_plan(radius)
        else:
            plan = {"multihash": "hash", "faiss": "flat", "flat": "flat"}.get(method, "hash")
        if plan == "hash":
            # nflip is a field of the shared index: build, set and search under one lock so concurrent radius
            # queries with different radii cannot see each other's setting
            with self._hash_lock:
                if self._hash is not None and self._flat.ntotal > 4 * max(self._hash_n, _MIN_HASH_N):
                    self._drop_hash()  # grown well past the size the layout was chosen for
                if self._hash is None:
                    self._build_hash()
                self._hash.nflip = radius // self._nhash if self._kind == "multihash" else radius
                lims, d, p = self._hash.range_search(q, radius + 1)
        else:
            lims, d, p = self._flat.range_search(q, radius + 1)
        qidx = np.repeat(np.arange(len(q)), np.diff(lims.astype(np.int64)))
        return sort_range_hits(qidx, d, p, len(q))

    def range_search(self, queries: np.ndarray, radius: int, method: str = "auto"):
        """Exact radius search; `method` forces a plan of the compiled search ("flat", "distinct", "hash"),
        FAISS's flat range scan ("faiss") or FAISS's multi-hash tables ("multihash"): all give the same result."""
        if method not in RANGE_METHODS:
            raise ValueError(f"unknown radius method {method!r}; one of {', '.join(RANGE_METHODS)}")
        if method == "auto":
            return super().range_search(queries, radius)
        radius = int(radius)
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        q = self._queries(queries)
        ids = self._ids.view
        return [(d, ids[p]) for d, p in self._range_positions(q, radius, method)]
