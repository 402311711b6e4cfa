"""The planner of the compiled search: when the distinct-code layer is built, how radius plans are measured,
concurrent searches, and the fallback to FAISS without numba."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from attnhash.index import compiled, create_index
from attnhash.index.planner import MIN_LAYER_N
from search_fixtures import codes, definition_radius, definition_topk

needs_numba = pytest.mark.skipif(not compiled.AVAILABLE, reason=f"numba unavailable: {compiled.REASON}")


@needs_numba
def test_layer_is_built_once_the_flat_scans_have_cost_as_much():
    rng = np.random.default_rng(0)
    db = codes(rng, 2 * MIN_LAYER_N, 8, "clustered")
    index = create_index("faiss", 64)
    index.add(db)
    q = db[:50]
    index.search(q[:1], 10)
    assert index.search_stats()["layer"] == "not built"  # one query never waits for a build
    for _ in range(2000):
        index.search(q, 10)
        if index.search_stats()["layer"] == "built":
            break
    stats = index.search_stats()
    assert stats["layer"] == "built" and stats["distinct_codes"] <= len(db)
    want = definition_topk(q, db, 10)
    got = index.search(q, 10)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@needs_numba
def test_radius_plans_are_timed_on_the_queries_and_measured_again_when_the_index_grows():
    rng = np.random.default_rng(1)
    db = np.concatenate([codes(rng, 2 * MIN_LAYER_N, 8, "clustered"), codes(rng, MIN_LAYER_N, 8, "random")])
    index = create_index("faiss", 64)
    index.add(db)
    index.build_layer()
    q = np.concatenate([db[:20], codes(rng, 20, 8, "random")])
    got = index.range_search(q, 2)
    plan = index.search_stats()["last_plan"]
    assert set(plan["measured_ms"]) >= {"flat", "distinct", "hash"} and plan["plan"] in plan["measured_ms"]
    assert plan["measured_ms"][plan["plan"]] == min(plan["measured_ms"].values())
    for (gd, gp), (wd, wp) in zip(got, definition_radius(q, db, 2), strict=True):
        np.testing.assert_array_equal(gp, wp)
        np.testing.assert_array_equal(gd, wd)
    index.range_search(q, 2)
    assert index.search_stats()["last_plan"]["plan"] == plan["plan"]  # the choice is kept ...
    more = codes(rng, len(db), 8, "clustered")
    index.add(more)
    index.range_search(q[:3], 2)
    assert "measured_ms" in index.search_stats()["last_plan"]  # ... until the index has grown by a quarter
    assert index.range_plan(2) in ("flat", "distinct", "hash")


@needs_numba
def test_concurrent_searches_while_the_layer_is_built_stay_exact():
    rng = np.random.default_rng(2)
    db = codes(rng, 3 * MIN_LAYER_N, 8, "clustered")
    index = create_index("faiss", 64)
    index.add(db)
    q = db[:40]
    want = definition_topk(q, db, 20)
    want_r = definition_radius(q[:10], db, 1)

    def job(i):
        method = ("auto", "hash", "distinct", "flat")[i % 4]
        d, p = index.search(q, 20, method=method)
        r = index.range_search(q[:10], 1, method=method)
        return d, p, r

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(job, range(24)))
    for d, p, r in results:
        np.testing.assert_array_equal(d, want[0])
        np.testing.assert_array_equal(p, want[1])
        for (gd, gp), (wd, wp) in zip(r, want_r, strict=True):
            np.testing.assert_array_equal(gp, wp)
            np.testing.assert_array_equal(gd, wd)


def test_without_numba_the_faiss_backend_answers_with_faiss(tmp_path):
    script = textwrap.dedent("""
        import numpy as np
        from attnhash.index import create_index, scan
        assert not scan.COMPILED
        rng = np.random.default_rng(0)
        db = rng.choice(np.array([0, 1, 3, 255], np.uint8), size=(5000, 8))
        f, r = create_index("faiss", 64), create_index("numpy", 64)
        f.add(db); r.add(db)
        q = db[:7]
        for k in (1, 50, 600):
            a, b = f.search(q, k), r.search(q, k)
            assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
        for x, y in zip(f.range_search(q, 3), r.range_search(q, 3)):
            assert (x[1] == y[1]).all() and (x[0] == y[0]).all()
        assert f.search_stats()["compiled"] is False
        assert f.distinct_codes()["distinct_codes"] == len(np.unique(db.view(np.uint64)))
        print("ok")
    """)
    env = {**os.environ, "ATTNHASH_NO_NUMBA": "1",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
