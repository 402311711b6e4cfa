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
  ns per code of a scan, per hash probe; they set how far a top-k query probes and which scan answers the
  queries the probes did not;
- for radius queries, the plans themselves timed on the queries: a radius's first queries are answered by
  every candidate plan (flat, distinct, hash), and the fastest answers the next ones, measured again as the
  index grows or after 2,000 queries. Result sizes, tie groups and cache behaviour all count, as they are.

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
_RADIUS_SAMPLE = 16  # queries of a radius's first batch answered by every candidate plan, to time them


@dataclass
class Costs:
    """Measured costs in ns on this machine, one thread."""

    scan_code: float  # per (query, code) of a batch scan
    probe: float  # per hash-table probe
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
    """Time the operations the plans are made of, on (a sample of) the index's own codes: a few ms."""
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
    probe = 30.0
    if layer is not None and len(layer):
        qd = layer.queries(queries[:4])
        layer.probe_count(qd[:1], 1)
        probe = _best_of(lambda: layer.probe_count(qd, 2)) / (4 * ball_size(nbits, 2))
    return Costs(scan_code=scan_code, probe=probe, build=60.0)


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
        self._radius_choice: dict[int, dict[str, Any]] = {}  # radius -> the plan measured fastest, and when
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
        # what a scan costs one query: a batch shares the threads by query, a single query splits only the flat
        # scan across them (the distinct-code scan makes two passes, on one thread per query)
        share = 1.0 if nq >= parts else 1.0 / parts
        flat_each = n * c.scan_code * share
        distinct_each = 2 * layer.groups * c.scan_code * (1.0 if nq >= parts else 1.0)
        rest_plan = "distinct" if distinct_each < flat_each else "flat"
        per_query_scan = min(flat_each, distinct_each)
        # probe radius by radius while a radius costs less than half of that scan
        rmax = 1
        while rmax < _MAX_PROBE_RADIUS and ball_size(self.nbits, rmax + 1) * c.probe <= 0.5 * per_query_scan:
            rmax += 1
        if plan == "hash":
            rmax = max(rmax, 2)
        out_d, out_p, resolved = layer.probe_topk(qw, k, rmax, parts)
        rest = np.flatnonzero(~resolved)
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
    def _radius_candidates(self, r: int, layer: DistinctCodes | None) -> list[str]:
        n = len(self._codes())
        if layer is None:
            return ["flat"]
        out = ["flat"]
        if layer.groups < n:
            out.append("distinct")
        if ball_size(self.nbits, r) <= layer.groups:  # more probes than groups: the distinct scan reads less
            out.append("hash")
        return out

    def radius_plan(self, r: int, nq: int = 1) -> str:
        """The plan radius-r queries take now: the one last measured fastest, or before any measurement the
        cheapest by the measured unit costs ("flat", "distinct" or "hash")."""
        chosen = self._radius_choice.get(r)
        if chosen is not None:
            return chosen["plan"]
        codes = self._codes()
        n = len(codes)
        if n < MIN_LAYER_N:
            return "flat"
        c = self.costs()
        layer = self._layer
        groups = layer.groups if layer is not None else n
        cost = {"flat": n * c.scan_code, "distinct": 2 * groups * c.scan_code,
                "hash": 2 * ball_size(self.nbits, r) * c.probe}
        if layer is None:  # not built yet: only a ball clearly cheaper than a scan makes it worth building
            cost["distinct"] = float("inf")
        return min(cost, key=cost.get)

    def _radius_run(self, plan: str, codes: np.ndarray, q: np.ndarray, r: int, parts: int | None = None
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
        parts = parts or threads()
        if plan == "flat":
            return scan.radius(codes, q, r, parts)
        layer = self.prepare()
        qw = layer.queries(q)
        off, gd, gg = layer.find_groups(qw, r, plan, parts)
        return layer.expand_radius(off, gd, gg, r, parts)

    def radius(self, q: np.ndarray, r: int, plan: Plan = "auto") -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact radius search. "auto": the plan measured fastest on the queries themselves: the first queries
        at a radius (up to 16 of a batch) are answered by every candidate plan, on one thread, timed, and the fastest answers
        the rest and later queries at that radius, until the index changes size by a quarter or 2,000 queries
        have been answered (then it is measured again). Every plan gives the same result."""
        codes = self._codes()
        n, nq = len(codes), len(q)
        if plan != "auto" or n == 0 or nq == 0 or n < MIN_LAYER_N:
            plan = "flat" if plan == "auto" else plan
            self.last_plan = {"plan": plan}
            return self._radius_run(plan, codes, q, r)
        c = self.costs()
        layer = self._layer
        if layer is None and self.radius_plan(r, nq) != "flat":
            layer = self._want_layer(n, nq * n * c.scan_code)
        chosen = self._radius_choice.get(r)
        if chosen is not None and (abs(n - chosen["n"]) > n // 4 or chosen["answered"] >= 2000
                                   or (layer is not None and chosen["layer"] is None)):
            chosen = None
        if chosen is not None:
            chosen["answered"] += nq
            self.last_plan = {"plan": chosen["plan"], "measured_ms": chosen["ms"]}
            return self._radius_run(chosen["plan"], codes, q, r)
        candidates = self._radius_candidates(r, layer)
        # on one thread, so the timings compare the plans' work rather than the threads' start-up
        sample = np.ascontiguousarray(q[: min(_RADIUS_SAMPLE, nq)])
        timings, answers = {}, {}
        for cand in candidates:
            self._radius_run(cand, codes, sample[:1], r, parts=1)  # first calls load compiled code: not timed
            t = time.perf_counter()
            answers[cand] = self._radius_run(cand, codes, sample, r, parts=1)
            timings[cand] = (time.perf_counter() - t) * 1e3
        best = min(timings, key=timings.get)
        self._radius_choice[r] = {"plan": best, "n": n, "answered": nq, "layer": layer,
                                  "ms": {k: round(v, 3) for k, v in timings.items()}}
        out = answers[best]
        if nq > len(sample):
            out = out + self._radius_run(best, codes, np.ascontiguousarray(q[len(sample) :]), r)
        self.last_plan = {"plan": best, "measured_ms": self._radius_choice[r]["ms"]}
        return out
