"""Exact search of a local index: the compiled flat scan, the distinct-code layer, and the planner between them.

Plans, all exact (same ids, distances and tie order):
- "flat": the compiled scan over every code (attnhash.index.scan);
- "distinct": a scan over the distinct codes, merging item lists at the threshold distance;
- "hash": probing the Hamming ball of the query in the distinct codes' hash table, radius by radius, until
  the answer is certain (top-k: the ball holds k items; radius r: the whole ball of radius r).

The planner decides from what it measures, not from an assumed distribution:
- the code distribution as it is: the number of distinct codes D against n, and, per query, how many items
  each probed radius actually holds (a top-k query probes radius 0, 1, ... while that is cheaper than its
  scan, stops early when its neighbourhood is empty, and goes to a scan only when the ball does not hold k);
- the cost of each operation on this machine (`Costs`, timed once per process on the index's own codes):
  ns per code of a scan, per hash probe, per result emitted by a scan and per result expanded from groups.
  A radius query first finds its groups (ball or distinct scan, whichever is cheaper), then, knowing its
  exact result size, expands them or answers with a flat scan when that is cheaper (huge results on small
  indexes), so a plan is never slower than the flat scan by more than the group search it tried first.

The layer costs one pass over the codes to build (about 0.4 s per million codes here). It is built when a
query would use it and the flat scans done so far have cost as much as building it would (so a one-off
query on a fresh index never waits for it), or at once with `prepare()` (the service does it at start-up).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from attnhash.index import scan
from attnhash.index.compiled import threads
from attnhash.index.distinct import DistinctCodes, ball_size

__all__ = ["ExactSearch", "Costs", "measure_costs", "PLANS"]

PLANS = ("auto", "flat", "distinct", "hash")
Plan = Literal["auto", "flat", "distinct", "hash"]
MIN_LAYER_N = 4096  # below this every plan costs microseconds: the flat scan, without a layer
_MAX_PROBE_RADIUS = 3


@dataclass
class Costs:
    """Measured costs in ns on this machine, one thread."""

    scan_code: float  # per (query, code) of a batch scan
    probe: float  # per hash-table probe
    emit: float  # per result of a flat radius scan
    expand: float  # per result expanded from item lists
    build: float  # per code, building the distinct-code layer (estimate until a build is measured)

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


def _best_of(fn: Callable[[], Any], reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e9


def measure_costs(codes: np.ndarray, layer: DistinctCodes | None = None) -> Costs:
    """Time the operations the plans are made of, on (a sample of) the index's own codes: ~10-30 ms."""
    rng = np.random.default_rng(0)
    n = len(codes)
    sample = np.ascontiguousarray(codes[: min(n, 1 << 16)])
    queries = np.ascontiguousarray(codes[rng.integers(0, n, 8)]) if n else sample[:0]
    words, qw = scan.as_words(sample), scan.as_words(queries)
    nbits = codes.shape[1] * 8
    out_d = np.empty((8, 10), np.int32)
    out_p = np.empty((8, 10), np.int64)
    scan._topk_batch(words[:64], qw, 10, nbits, out_d, out_p)  # compiled before timing
    scan_code = _best_of(lambda: scan._topk_batch(words, qw, 10, nbits, out_d, out_p)) / max(1, 8 * len(sample))
    # a radius that takes every code: what a scan pays per result emitted
    scan._radius_chunk(words, qw[0], nbits, 0, min(64, len(words)))
    whole = _best_of(lambda: scan._radius_chunk(words, qw[0], nbits, 0, len(words)))
    emit = max(0.1, whole / max(1, len(sample)) - scan_code)
    probe, expand = 30.0, 4.0 * emit
    if layer is not None and len(layer):
        qd = layer.queries(queries[:4])
        layer.probe_count(qd[:1], 1)
        probes = 4 * ball_size(nbits, 2)
        probe = _best_of(lambda: layer.probe_count(qd, 2)) / probes
        small = DistinctCodes(np.repeat(sample[:256], max(1, len(sample) // 256), axis=0))
        sq = small.queries(sample[:1])
        small.scan_radius(sq, nbits)
        items = len(small)
        expand = max(0.1, _best_of(lambda: small.scan_radius(sq, nbits)) / max(1, items))
    return Costs(scan_code=scan_code, probe=probe, emit=emit, expand=expand, build=60.0)


class ExactSearch:
    """Top-k and radius search over the codes of a local index (see the module docstring).

    `codes` returns the current code array (n, code_size) in insertion order; the owner reports changes with
    `added(codes)` and `compacted(keep)`. Concurrent searches are safe; changes need the owner's write lock.
    """

    def __init__(self, codes: Callable[[], np.ndarray], nbits: int) -> None:
        self._codes = codes
        self.nbits = nbits
        self._layer: DistinctCodes | None = None
        self._lock = threading.Lock()
        self._costs: Costs | None = None
        self._flat_ns = 0.0  # estimated cost of the flat scans the layer could have answered (build policy)
        self.last_plan: dict[str, Any] = {}

    # ---- the layer ---------------------------------------------------------------------------------------
    @property
    def layer(self) -> DistinctCodes | None:
        return self._layer

    def prepare(self) -> DistinctCodes:
        """Build the distinct-code layer now (and measure the costs)."""
        with self._lock:
            if self._layer is None:
                codes = self._codes()
                t = time.perf_counter()
                layer = DistinctCodes(codes)
                build_ns = (time.perf_counter() - t) * 1e9
                self._costs = measure_costs(codes, layer)
                self._costs.build = build_ns / max(1, len(codes))
                self._layer = layer
            return self._layer

    def costs(self) -> Costs:
        if self._costs is None:
            with self._lock:
                if self._costs is None:
                    self._costs = measure_costs(self._codes(), self._layer)
        return self._costs

    def added(self, codes: np.ndarray) -> None:
        if self._layer is not None:
            self._layer.add(codes)

    def compacted(self, keep: np.ndarray) -> None:
        if self._layer is not None:
            self._layer.compact(keep, self._codes())

    def drop(self) -> None:
        self._layer = None

    def stats(self) -> dict[str, Any]:
        layer = self._layer
        out: dict[str, Any] = {"layer": "built" if layer is not None else "not built"}
        if layer is not None:
            out.update(layer.stats())
            out["layer_bytes"] = layer.memory_bytes()
        if self._costs is not None:
            out["costs_ns"] = self._costs.to_dict()
        return out

    def _want_layer(self, n: int, flat_ns: float) -> DistinctCodes | None:
        """The layer if built; built now when the flat scans so far (plus this one) cost as much as a build."""
        if self._layer is not None:
            return self._layer
        if n < MIN_LAYER_N:
            return None
        self._flat_ns += flat_ns
        if self._flat_ns >= n * self.costs().build:
            return self.prepare()
        return None

    # ---- top-k -------------------------------------------------------------------------------------------
    def topk(self, q: np.ndarray, k: int, plan: Plan = "auto") -> tuple[np.ndarray, np.ndarray]:
        codes = self._codes()
        n, nq = len(codes), len(q)
        if plan == "flat" or n == 0 or nq == 0 or (plan == "auto" and n < MIN_LAYER_N):
            self.last_plan = {"plan": "flat"}
            return scan.topk(codes, q, k)
        if plan == "auto":
            c = self.costs()
            layer = self._want_layer(n, nq * n * c.scan_code)
            if layer is None:
                self.last_plan = {"plan": "flat"}
                return scan.topk(codes, q, k)
        else:
            layer = self.prepare()
        c = self.costs()
        qw = layer.queries(q)
        parts = threads()
        if plan == "distinct":
            self.last_plan = {"plan": "distinct"}
            return layer.scan_topk(qw, k, parts)
        # probe while a radius costs less than half of what a scan of this query costs
        per_query_scan = min(n, 2 * layer.groups) * c.scan_code * (1 if nq >= parts else 1.0 / parts)
        rmax = 1
        while rmax < _MAX_PROBE_RADIUS and ball_size(self.nbits, rmax + 1) * c.probe <= 0.5 * per_query_scan:
            rmax += 1
        if plan == "hash":
            rmax = max(rmax, 2)
        out_d, out_p, resolved = layer.probe_topk(qw, k, rmax, parts)
        rest = np.flatnonzero(~resolved)
        rest_plan = "distinct" if 2 * layer.groups < n else "flat"
        if len(rest):
            if rest_plan == "distinct":
                d, p = layer.scan_topk(np.ascontiguousarray(qw[rest]), k, parts)
            else:
                d, p = scan.topk(codes, np.ascontiguousarray(q[rest]), k)
            out_d[rest], out_p[rest] = d, p
        self.last_plan = {"plan": "hash", "probe_radius": rmax, "resolved": int(resolved.sum()),
                          "rest": rest_plan, "queries": nq}
        return out_d, out_p

    # ---- radius ------------------------------------------------------------------------------------------
    def radius_plan(self, r: int, nq: int = 1) -> str:
        """Where the groups of a radius-r query are found: "hash" (ball probes), "distinct" (scan of the
        distinct codes) or "flat" (no layer: a flat scan), by measured costs."""
        codes = self._codes()
        n = len(codes)
        if n < MIN_LAYER_N:
            return "flat"
        c = self.costs()
        layer = self._layer
        groups = layer.groups if layer is not None else n
        # a group search may still end in a flat scan (huge results): it must cost under half of one to pay
        cost = {"flat": n * c.scan_code, "distinct": 2 * groups * c.scan_code,
                "hash": 2 * ball_size(self.nbits, r) * c.probe}
        if layer is None:  # not built yet: only a ball clearly cheaper than a scan makes it worth building
            cost["distinct"] = float("inf")
        return min(cost, key=cost.get)

    def radius(self, q: np.ndarray, r: int, plan: Plan = "auto") -> list[tuple[np.ndarray, np.ndarray]]:
        codes = self._codes()
        n, nq = len(codes), len(q)
        if plan == "flat" or n == 0 or nq == 0 or (plan == "auto" and n < MIN_LAYER_N):
            self.last_plan = {"plan": "flat"}
            return scan.radius(codes, q, r)
        c = self.costs()
        if plan == "auto":
            plan = self.radius_plan(r, nq)  # type: ignore[assignment]
            if plan == "flat" or self._want_layer(n, nq * n * c.scan_code) is None:
                self.last_plan = {"plan": "flat"}
                return scan.radius(codes, q, r)
        layer = self.prepare()
        qw = layer.queries(q)
        parts = threads()
        off, gd, gg = layer.find_groups(qw, r, "hash" if plan == "hash" else "distinct", parts)
        # each query's exact result size is now known: expand its groups, or scan when that is cheaper
        sizes = layer.result_sizes(off, gg)
        flat_each = n * c.scan_code + sizes * c.emit
        expand_each = sizes * c.expand
        flat_better = flat_each < expand_each
        to_flat = np.flatnonzero(flat_better)
        out = layer.expand_radius(off, gd, gg, r, parts, skip=flat_better)
        if len(to_flat):
            for i, res in zip(to_flat, scan.radius(codes, np.ascontiguousarray(q[to_flat]), r)):
                out[i] = res
        self.last_plan = {"plan": plan, "flat_fallback": int(len(to_flat)), "queries": nq}
        return out
