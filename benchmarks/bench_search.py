"""Search benchmark: attnhash's exact search against faiss.IndexBinaryFlat, side by side in one run.

    python benchmarks/bench_search.py                    # 1e6 and 1e7 (about 10 minutes on 2 cores)
    python benchmarks/bench_search.py --sizes 1e6 --no-milvus

Codes (64 bits):
- random: uniform random codes and 1,000 random queries;
- learned: the demo's real database codes (`runs/demo/database.idx`, written by `python -m attnhash demo`),
  resampled to n items with 0, 1, 2 or 3 random bit flips each (uniform), queried with the demo's 1,000 real
  query codes (`runs/demo/codes.npz`); and the demo's 64,000 codes themselves (`demo` rows).

Per case (top-100 and radius 2; a batch of 1,000 queries in one call, or single queries one call each):
attnhash's search through `create_index("faiss")` (the planner, "auto"; and each plan forced: "flat" the
compiled scan, "distinct" the distinct-code scan, "hash" the Hamming-ball probes) against FAISS's
`IndexBinaryFlat.search` / `range_search` on the same codes, interleaved, best of --repeats; `identical`:
same ids, distances and tie order as FAISS sorted by (distance, id). Radius batches are submitted in calls of
100 queries to both (a learned-like 1e7 radius-2 answer holds ~0.5 million items per query).

The machine's read bandwidth is measured in the same run (a compiled XOR over 512 MiB, one thread and all
threads) and each case reports the fraction of it its scan reaches: n x 8 bytes x queries/s over the
all-thread bandwidth (above 1: the plan reads less than the codes).

Also: the distinct-code layer of each code set (distinct codes, largest group, build time, memory); Milvus
(milvus-lite) on the demo's codes: bare pymilvus search against the tie-exact wrapper, before and after the
wrapper's overhead was cut.

Writes benchmarks/results/search.md and search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from attnhash.atomic import atomic_write_text
from attnhash.index import compiled, create_index, open_index, scan

RESULTS = Path(__file__).with_name("results")
K = 100
RADIUS = 2
RADIUS_CALL = 100  # queries per radius call (both sides): bounds the answers held in memory


# ---- data ---------------------------------------------------------------------------------------------
def flip_masks(rng: np.random.Generator, n: int, max_flips: int = 3, nbits: int = 64) -> np.ndarray:
    """uint64 masks with 0..max_flips distinct random bits set (the number uniform)."""
    flips = rng.integers(0, max_flips + 1, n)
    mask = np.zeros(n, np.uint64)
    chosen: list[np.ndarray] = []
    for j in range(max_flips):
        b = rng.integers(0, nbits - j, n)
        for c in np.sort(np.stack(chosen, 1), axis=1).T if chosen else []:  # skip the bits taken (ascending)
            b = b + (b >= c)
        chosen.append(b)
        mask |= np.where(j < flips, np.uint64(1) << b.astype(np.uint64), np.uint64(0))
    return mask


def learned_like(base: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    words = base.view(np.uint64).ravel()
    return (words[rng.integers(0, len(words), n)] ^ flip_masks(rng, n)).view(np.uint8).reshape(n, 8)


def demo_codes(run: Path) -> tuple[np.ndarray, np.ndarray]:
    idx, codes = run / "database.idx", run / "codes.npz"
    if not idx.exists() or not codes.exists():
        sys.exit(f"{idx} or {codes} missing: run `python3 -m attnhash demo` first (about 2 minutes)")
    db = np.ascontiguousarray(open_index(str(idx), backend="numpy")._codes_view())
    queries = np.load(codes)["query_codes"]
    return db, np.ascontiguousarray(queries)


# ---- measuring ------------------------------------------------------------------------------------------
def read_bandwidth() -> dict[str, float]:
    """GB/s of a compiled XOR over 512 MiB: one thread and every thread."""
    from attnhash.index.compiled import jit

    @jit
    def xor_all(a):
        x = np.uint64(0)
        for i in range(a.shape[0]):
            x ^= a[i]
        return x

    a = np.random.default_rng(0).integers(0, 2**63, 1 << 26, dtype=np.uint64)
    xor_all(a[:16])
    out = {}
    for threads in (1, compiled.threads()):
        parts = np.array_split(a, threads)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            scan.run_parallel([(lambda p=p: xor_all(p)) for p in parts])
            best = min(best, time.perf_counter() - t)
        out[f"gbps_{threads}_threads" if threads > 1 else "gbps_1_thread"] = a.nbytes / best / 1e9
    out["gbps"] = max(out.values())
    out["threads"] = compiled.threads()
    return out


def faiss_sorted_ranges(lims, d, p) -> list[tuple[np.ndarray, np.ndarray]]:
    """FAISS range results per query, sorted by (distance, label)."""
    out = []
    for i in range(len(lims) - 1):
        di, pi = d[lims[i] : lims[i + 1]], p[lims[i] : lims[i + 1]]
        sd, sp = scan.sort_by_distance(di, pi, 64)
        same = sd[1:] == sd[:-1]
        if (sp[1:][same] <= sp[:-1][same]).any():  # not in label order within a distance: sort fully
            o = np.lexsort((pi, di))
            sd, sp = di[o].astype(np.int32), pi[o]
        out.append((sd, sp))
    return out


def same_ranges(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x[1], y[1]) and np.array_equal(x[0], y[0]) for x, y in zip(a, b))


class Case:
    """One (code set, query kind, batch or single) comparison: FAISS and every attnhash path, interleaved."""

    def __init__(self, name: str, n: int, codes: str, query: str, mode: str, queries: np.ndarray,
                 flat: faiss.IndexBinaryFlat, index, paths: list[str], repeats: int) -> None:
        self.name, self.n, self.codes, self.query, self.mode = name, n, codes, query, mode
        self.q, self.flat, self.index, self.paths, self.repeats = queries, flat, index, paths, repeats

    def _calls(self):
        q = self.q
        if self.mode == "single":
            return [q[i : i + 1] for i in range(len(q))]
        if self.query == "radius":
            return [q[s : s + RADIUS_CALL] for s in range(0, len(q), RADIUS_CALL)]
        return [q]

    def _faiss(self, calls):
        if self.query == "topk":
            return [self.flat.search(c, K) for c in calls]
        return [self.flat.range_search(c, RADIUS + 1) for c in calls]  # FAISS keeps distances < its threshold

    def _ours(self, calls, path):
        if self.query == "topk":
            return [self.index.search(c, K, method=path) for c in calls]
        return [self.index.range_search(c, RADIUS, method=path) for c in calls]

    def _identical(self, faiss_out, ours) -> bool:
        if self.query == "topk":
            return all(np.array_equal(f[0], o[0]) and np.array_equal(f[1], o[1]) for f, o in zip(faiss_out, ours))
        return all(same_ranges(faiss_sorted_ranges(*f), o) for f, o in zip(faiss_out, ours))

    def run(self) -> list[dict]:
        calls = self._calls()
        best = {p: float("inf") for p in ["faiss", *self.paths]}
        identical = {p: True for p in self.paths}
        plans = {}
        for rep in range(self.repeats):
            t = time.perf_counter()
            f_out = self._faiss(calls)
            best["faiss"] = min(best["faiss"], time.perf_counter() - t)
            for path in self.paths:
                t = time.perf_counter()
                o_out = self._ours(calls, path)
                best[path] = min(best[path], time.perf_counter() - t)
                plans[path] = dict(self.index.search_stats().get("last_plan") or {})
                if rep == 0:
                    identical[path] = self._identical(f_out, o_out)
                del o_out
            del f_out
        nq = len(self.q)
        faiss_qps = nq / best["faiss"]
        rows = []
        for path in self.paths:
            qps = nq / best[path]
            rows.append({"name": self.name, "n": self.n, "codes": self.codes, "query": self.query,
                         "mode": self.mode, "path": path, "nq": nq, "qps": qps, "faiss_qps": faiss_qps,
                         "speedup_vs_faiss": qps / faiss_qps, "identical": bool(identical[path]),
                         "plan": plans.get(path), "bytes_per_query": self.n * 8})
        return rows


def layer_facts(index, codes: np.ndarray) -> dict:
    t = time.perf_counter()
    index.build_layer()
    build_s = time.perf_counter() - t
    stats = index.search_stats()
    return {"distinct_codes": stats.get("distinct_codes"), "largest_group": stats.get("largest_group"),
            "build_s": build_s, "layer_bytes": stats.get("layer_bytes"), "costs_ns": stats.get("costs_ns")}


def bench_codes(name: str, codes_kind: str, db: np.ndarray, queries: np.ndarray, singles: int, repeats: int,
                log) -> tuple[list[dict], dict]:
    n = len(db)
    flat = faiss.IndexBinaryFlat(64)
    flat.add(db)
    index = create_index("faiss", 64)
    index.add(db)
    layer = layer_facts(index, db)
    log(f"{name}: n={n:,} distinct={layer['distinct_codes']:,} largest group={layer['largest_group']:,} "
        f"layer built in {layer['build_s']:.2f} s")
    rows = []
    single_q = queries[:singles]
    for query in ("topk", "radius"):
        batch_paths = ["auto", "flat", "distinct"] + (["hash"] if query == "radius" else [])
        for mode, q, paths in (("batch", queries, batch_paths), ("single", single_q, ["auto", "flat"])):
            case = Case(name, n, codes_kind, query, mode, q, flat, index, paths, repeats)
            for row in case.run():
                rows.append(row)
                log(f"  {query:<6} {mode:<6} {row['path']:<8} {row['qps']:>10,.0f} q/s  faiss "
                    f"{row['faiss_qps']:>8,.0f} q/s  x{row['speedup_vs_faiss']:6.2f}  identical={row['identical']}")
    del index, flat
    return rows, layer


# ---- Milvus ---------------------------------------------------------------------------------------------
def old_wrapper_search(index, q: np.ndarray, k: int):
    """The tie-exact wrapper before this benchmark's issue: k results with their seq fetched, and a range
    search at the k-th distance for every full row."""
    rows = []
    res_all = []
    for s in range(0, len(q), 1000):
        res = index._c.search(index.collection, data=[r.tobytes() for r in q[s : s + 1000]], anns_field="code",
                              limit=k, search_params={"metric_type": "HAMMING", "params": {}}, output_fields=["seq"])
        res_all += [[(int(round(h["distance"])), int(h["entity"]["seq"]), int(h["id"])) for h in hits] for hits in res]
    rows = [sorted(h) for h in res_all]
    by_dist: dict[int, list[int]] = {}
    for i, hits in enumerate(rows):
        if len(hits) == k:
            by_dist.setdefault(hits[-1][0], []).append(i)
    for dk, qs in by_dist.items():
        ties = []
        for s in range(0, len(qs), 1000):
            sub = q[qs[s : s + 1000]]
            res = index._c.search(index.collection, data=[r.tobytes() for r in sub], anns_field="code", limit=16384,
                                  search_params={"metric_type": "HAMMING",
                                                 "params": {"radius": dk + 1, "range_filter": dk}},
                                  output_fields=["seq"])
            ties += [[(int(round(h["distance"])), int(h["entity"]["seq"]), int(h["id"])) for h in hits]
                     for hits in res]
        for i, at in zip(qs, ties):
            closer = [h for h in rows[i] if h[0] < dk]
            rows[i] = closer + sorted(at)[: k - len(closer)]
    return np.array([[h[2] for h in r] for r in rows])


def bench_milvus(name: str, db: np.ndarray, queries: np.ndarray, repeats: int, log) -> dict:
    try:
        from attnhash.index.milvus_index import MilvusIndex
    except ImportError as err:
        return {"skipped": str(err)}
    tmp = tempfile.mkdtemp(prefix="bench-milvus-")
    index = MilvusIndex(64, uri=os.path.join(tmp, "bench.db"), collection="bench")
    t = time.perf_counter()
    index.add(db)
    insert_s = time.perf_counter() - t
    flat = faiss.IndexBinaryFlat(64)
    flat.add(db)
    want = flat.search(queries, K)
    out: dict = {"codes": name, "n": len(db), "nq": len(queries), "k": K, "insert_s": insert_s}
    params = {"metric_type": "HAMMING", "params": {}}

    def bare():
        for s in range(0, len(queries), 1000):
            index._c.search(index.collection, data=[r.tobytes() for r in queries[s : s + 1000]], anns_field="code",
                            limit=K, search_params=params)

    for name, fn in (("bare_pymilvus", bare), ("old_wrapper", lambda: old_wrapper_search(index, queries, K)),
                     ("wrapper", lambda: index.search(queries, K))):
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            res = fn()
            best = min(best, time.perf_counter() - t)
        out[f"{name}_qps"] = len(queries) / best
        if name == "wrapper":
            out["wrapper_identical_to_faiss"] = bool(np.array_equal(res[1], want[1]) and np.array_equal(res[0],
                                                                                                        want[0]))
        if name == "old_wrapper":
            out["old_wrapper_identical_to_faiss"] = bool(np.array_equal(res, want[1]))
    out["overhead_before"] = out["bare_pymilvus_qps"] / out["old_wrapper_qps"]
    out["overhead_after"] = out["bare_pymilvus_qps"] / out["wrapper_qps"]
    log(f"milvus-lite {name} n={len(db):,}: bare {out['bare_pymilvus_qps']:,.0f} q/s, wrapper {out['wrapper_qps']:,.0f} q/s "
        f"(overhead x{out['overhead_after']:.2f}, was x{out['overhead_before']:.2f}), identical to FAISS "
        f"{out['wrapper_identical_to_faiss']}")
    index.close()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---- report ---------------------------------------------------------------------------------------------
def holds(rows: list[dict]) -> dict:
    """The issue's targets, on the planner's ("auto") top-100 rows."""
    def pick(**kw):
        return [r for r in rows if all(r[k] == v for k, v in kw.items())]

    learned_batch = pick(n=10_000_000, codes="learned", query="topk", mode="batch", path="auto")
    learned_single = pick(n=10_000_000, codes="learned", query="topk", mode="single", path="auto")
    random_auto = pick(codes="random", path="auto")
    out = {
        "learned_1e7_batch_topk_x": learned_batch[0]["speedup_vs_faiss"] if learned_batch else None,
        "learned_1e7_single_topk_x": learned_single[0]["speedup_vs_faiss"] if learned_single else None,
        "random_min_x": min((r["speedup_vs_faiss"] for r in random_auto), default=None),
        "all_identical": all(r["identical"] for r in rows),
    }
    out["holds"] = bool(out["learned_1e7_batch_topk_x"] is not None and out["learned_1e7_batch_topk_x"] >= 20
                        and out["learned_1e7_single_topk_x"] >= 25 and out["random_min_x"] >= 2.5
                        and out["all_identical"])
    return out


def planner_check(rows: list[dict]) -> list[dict]:
    """On the demo's codes: the planner against the compiled flat scan (it must never be slower)."""
    out = []
    for query in ("topk", "radius"):
        for mode in ("batch", "single"):
            by = {r["path"]: r for r in rows if r["name"] == "demo" and r["query"] == query and r["mode"] == mode}
            if "auto" in by and "flat" in by:
                out.append({"query": query, "mode": mode, "auto_qps": by["auto"]["qps"], "flat_qps": by["flat"]["qps"],
                            "auto_vs_flat": by["auto"]["qps"] / by["flat"]["qps"], "plan": by["auto"]["plan"]})
    return out


def write_report(res: dict) -> str:
    bw = res["bandwidth"]
    lines = [
        "# Search: attnhash's exact search vs faiss.IndexBinaryFlat",
        "",
        f"`python benchmarks/bench_search.py` on {res['machine']} ({bw['threads']} threads), {res['date']}. "
        f"Top-{K} and radius {RADIUS}, 64-bit codes; a batch is 1,000 queries, single queries are one call each; "
        "FAISS and attnhash interleaved on the same codes, best of "
        f"{res['repeats']}. identical = same ids, distances and tie order as FAISS sorted by (distance, id).",
        "",
        f"Read bandwidth measured in this run: {bw['gbps_1_thread']:.1f} GB/s on one thread, {bw['gbps']:.1f} GB/s "
        f"on {bw['threads']}. `read` = n x 8 bytes x queries/s over {bw['gbps']:.1f} GB/s (above 1: the plan "
        "reads less than every code).",
        "",
        "| codes | n | query | mode | path | q/s | FAISS q/s | vs FAISS | read | FAISS read | identical | plan |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in res["cases"]:
        plan = r.get("plan") or {}
        plan_s = ", ".join(f"{k}={v}" for k, v in plan.items() if k not in ("queries", "measured_ms"))
        lines.append(
            f"| {r['name']} | {r['n']:,} | {'top-100' if r['query'] == 'topk' else 'radius 2'} | {r['mode']} | "
            f"{r['path']} | {r['qps']:,.0f} | {r['faiss_qps']:,.0f} | **{r['speedup_vs_faiss']:.1f}x** | "
            f"{r['read_fraction']:.2f} | {r['faiss_read_fraction']:.2f} | {r['identical']} | {plan_s} |")
    h = res["holds"]
    lines += ["", "## What must hold (issue 15)", "",
              f"- learned-like 1e7, top-100, batch: **{h['learned_1e7_batch_topk_x']:.1f}x** FAISS (target 20x)"
              if h["learned_1e7_batch_topk_x"] is not None else "- learned-like 1e7: not run",
              f"- learned-like 1e7, top-100, single queries: **{h['learned_1e7_single_topk_x']:.1f}x** (target 25x)"
              if h["learned_1e7_single_topk_x"] is not None else "",
              f"- random codes, lowest of every planner row: **{h['random_min_x']:.2f}x** (target >= 2.5x)"
              if h["random_min_x"] is not None else "",
              f"- every row identical to FAISS: {h['all_identical']}",
              f"- all hold: **{h['holds']}**", "",
              "## The distinct-code layer", "",
              "| codes | n | distinct codes | largest group | build s | layer MB | measured ns: scan/code, probe, "
              "build/code |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for name, lay in res["layers"].items():
        c = lay.get("costs_ns") or {}
        lines.append(f"| {name} | {lay['n']:,} | {lay['distinct_codes']:,} | {lay['largest_group']:,} | "
                     f"{lay['build_s']:.2f} | {lay['layer_bytes'] / 2**20:.0f} | "
                     f"{c.get('scan_code')}, {c.get('probe')}, {c.get('build')} |")
    lines += ["", "## The planner on the demo's codes (never slower than the flat scan)", "",
              "| query | mode | planner q/s | flat q/s | planner / flat | plan |", "|---|---|---:|---:|---:|---|"]
    for p in res["planner_on_demo"]:
        plan_s = ", ".join(f"{k}={v}" for k, v in (p["plan"] or {}).items() if k != "queries")
        plan_s = plan_s.replace("measured_ms=", "measured ms: ")
        lines.append(f"| {'top-100' if p['query'] == 'topk' else 'radius 2'} | {p['mode']} | {p['auto_qps']:,.0f} | "
                     f"{p['flat_qps']:,.0f} | {p['auto_vs_flat']:.2f} | {plan_s} |")
    milvus = [m for m in (res.get("milvus") or []) if "wrapper_qps" in m]
    if milvus:
        lines += ["", "## Milvus (milvus-lite): attnhash's tie-exact wrapper over bare pymilvus", "",
                  "Top-100, 1,000 queries in one call. Bare pymilvus returns any k of the items tied at the k-th "
                  "distance; the wrapper returns the ones inserted first, as FAISS does, fetching the tie group "
                  "when it was cut.", "",
                  "| codes | n | bare pymilvus q/s | wrapper q/s | overhead | before the cut | wrapper = FAISS |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for m in milvus:
            lines.append(f"| {m['codes']} | {m['n']:,} | {m['bare_pymilvus_qps']:,.0f} | {m['wrapper_qps']:,.0f} | "
                         f"x{m['overhead_after']:.2f} | x{m['overhead_before']:.2f} ({m['old_wrapper_qps']:,.0f} q/s) | "
                         f"{m['wrapper_identical_to_faiss']} |")
    return "\n".join(line for line in lines if line is not None) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e6,1e7", help="database sizes (comma-separated)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--singles", type=int, default=200, help="single queries timed per case")
    ap.add_argument("--demo", default="runs/demo", help="the demo's run folder (database.idx, codes.npz)")
    ap.add_argument("--no-milvus", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if not scan.COMPILED:
        sys.exit(f"the compiled scan is unavailable: {compiled.REASON}")

    def log(msg: str) -> None:
        print(msg, flush=True)

    base, real_queries = demo_codes(Path(args.demo))
    rng = np.random.default_rng(0)
    bandwidth = read_bandwidth()
    log(f"read bandwidth: {bandwidth['gbps_1_thread']:.1f} GB/s (1 thread), {bandwidth['gbps']:.1f} GB/s "
        f"({bandwidth['threads']} threads)")
    cases, layers = [], {}
    rows, lay = bench_codes("demo", "learned", base, real_queries, args.singles, args.repeats, log)
    cases += rows
    layers["demo"] = {**lay, "n": len(base)}
    for size in [int(float(s)) for s in args.sizes.split(",") if s]:
        for kind in ("random", "learned"):
            if kind == "random":
                db = rng.integers(0, 256, (size, 8), dtype=np.uint8)
                q = rng.integers(0, 256, (1000, 8), dtype=np.uint8)
            else:
                db, q = learned_like(base, size, rng), real_queries
            rows, lay = bench_codes(f"{kind} {size:.0e}".replace("+0", ""), kind, db, q, args.singles,
                                    args.repeats, log)
            cases += rows
            layers[f"{kind} {size:.0e}".replace("+0", "")] = {**lay, "n": size}
            del db
    for r in cases:
        r["read_fraction"] = r["bytes_per_query"] * r["qps"] / (bandwidth["gbps"] * 1e9)
        r["faiss_read_fraction"] = r["bytes_per_query"] * r["faiss_qps"] / (bandwidth["gbps"] * 1e9)
    end_bw = read_bandwidth()
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "faiss": faiss.__version__,
        "repeats": args.repeats,
        "bandwidth": bandwidth,
        "bandwidth_at_end": end_bw,
        "cases": cases,
        "layers": layers,
        "planner_on_demo": planner_check(cases),
        "milvus": None if args.no_milvus else [
            bench_milvus("demo", base, real_queries, args.repeats, log),
            bench_milvus("random", rng.integers(0, 256, base.shape, dtype=np.uint8),
                         rng.integers(0, 256, (1000, 8), dtype=np.uint8), args.repeats, log)],
    }
    res["holds"] = holds(cases)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "search.json", json.dumps(res, indent=2, default=float))
    report = write_report(res)
    atomic_write_text(out / "search.md", report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
