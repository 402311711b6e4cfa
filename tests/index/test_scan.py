"""The compiled exact scan against the definition and against faiss.IndexBinaryFlat: same ids, distances and
tie order, for top-k and radius, single queries and batches, split across threads or not."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from attnhash.index import compiled, scan
from index_fixtures import real_codes
from search_fixtures import codes, definition_radius, definition_topk

needs_numba = pytest.mark.skipif(not scan.COMPILED, reason=f"numba unavailable: {compiled.REASON}")


@pytest.fixture
def split_small(monkeypatch):
    """Split single queries across threads even on small databases (the merge is what is tested)."""
    monkeypatch.setattr(scan, "SPLIT_MIN", 64)
    compiled.set_threads(3)
    yield
    compiled.set_threads(None)


@needs_numba
@pytest.mark.parametrize("nbytes", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("kind", ["random", "ties", "clustered"])
def test_topk_is_the_definition(nbytes, kind, split_small):
    rng = np.random.default_rng(nbytes * 7 + len(kind))
    db = codes(rng, 5000, nbytes, kind)
    q = np.concatenate([codes(rng, 6, nbytes, kind), db[:3]])
    for k in (1, 10, 100, 4999, 5000, 5050):
        want = definition_topk(q, db, k)
        for batch in (q, q[:1], q[1:2]):  # a batch (split by query) and single queries (split by position)
            got = scan.topk(db, batch, k)
            exp = (want[0][: len(batch)], want[1][: len(batch)]) if batch is q else \
                definition_topk(batch, db, k)
            np.testing.assert_array_equal(got[0], exp[0])
            np.testing.assert_array_equal(got[1], exp[1])


@needs_numba
@pytest.mark.parametrize("kind", ["random", "ties", "clustered"])
def test_topk_is_faiss_binary_flat(kind):
    """faiss.IndexBinaryFlat (labels = insertion positions) is the reference the issue names."""
    rng = np.random.default_rng(5)
    db = codes(rng, 20_000, 8, kind)
    q = np.concatenate([codes(rng, 40, 8, kind), db[::997]])
    flat = faiss.IndexBinaryFlat(64)
    flat.add(db)
    for k in (1, 10, 100, 1000):
        fd, fi = flat.search(q, k)
        sd, si = scan.topk(db, q, k)
        np.testing.assert_array_equal(sd, fd)
        np.testing.assert_array_equal(si, fi)
        sd1, si1 = scan.topk(db, q[:1], k)
        np.testing.assert_array_equal(si1, fi[:1])


@needs_numba
def test_topk_on_real_codes_with_an_exact_match_exits_early_and_stays_exact():
    db = real_codes(64, 6000)
    if db is None:
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
    db = np.concatenate([db] * 5)  # every code at least 5 times: k items at distance 0 for small k
    q = db[:50]
    for k in (3, 5, 10, 100):
        want = definition_topk(q, db, k)
        got = scan.topk(db, q, k)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert (scan.topk(db, q, 5)[0] == 0).all()


@needs_numba
@pytest.mark.parametrize("nbytes", [1, 3, 8, 16])
@pytest.mark.parametrize("kind", ["random", "ties", "clustered"])
def test_radius_is_the_definition(nbytes, kind, split_small):
    rng = np.random.default_rng(nbytes + 100 * len(kind))
    db = codes(rng, 3000, nbytes, kind)
    q = np.concatenate([codes(rng, 5, nbytes, kind), db[:3]])
    for r in (0, 1, 3, nbytes * 4, nbytes * 8, nbytes * 8 + 5):
        want = definition_radius(q, db, r)
        for batch, exp in ((q, want), (q[:1], want[:1])):
            got = scan.radius(db, batch, r)
            assert len(got) == len(exp)
            for (gd, gp), (wd, wp) in zip(got, exp):
                np.testing.assert_array_equal(gp, wp)
                np.testing.assert_array_equal(gd, wd)


@needs_numba
def test_radius_is_faiss_range_search():
    rng = np.random.default_rng(9)
    db = codes(rng, 20_000, 8, "clustered")
    q = np.concatenate([codes(rng, 20, 8, "clustered"), db[:5]])
    flat = faiss.IndexBinaryFlat(64)
    flat.add(db)
    lims, d, p = flat.range_search(q, 4)  # faiss keeps distances strictly below its threshold
    got = scan.radius(db, q, 3)
    for i, (gd, gp) in enumerate(got):
        fd, fp = d[lims[i] : lims[i + 1]], p[lims[i] : lims[i + 1]]
        order = np.lexsort((fp, fd))
        np.testing.assert_array_equal(gp, fp[order])
        np.testing.assert_array_equal(gd, fd[order])


def test_numpy_fallback_is_the_definition():
    rng = np.random.default_rng(2)
    db = codes(rng, 1500, 8, "ties")
    q = codes(rng, 7, 8, "ties")
    for k in (1, 50, 1500, 1600):
        got = scan.topk_numpy(db, q, k)
        want = definition_topk(q, db, k)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    for (gd, gp), (wd, wp) in zip(scan.radius_numpy(db, q, 5), definition_radius(q, db, 5)):
        np.testing.assert_array_equal(gp, wp)
        np.testing.assert_array_equal(gd, wd)


@needs_numba
def test_empty_and_bad_input():
    db = np.zeros((0, 8), np.uint8)
    d, p = scan.topk(db, np.zeros((2, 8), np.uint8), 3)
    assert (d == -1).all() and (p == -1).all()
    assert [len(x[1]) for x in scan.radius(db, np.zeros((2, 8), np.uint8), 3)] == [0, 0]
    with pytest.raises(ValueError, match="k must be positive"):
        scan.topk(np.zeros((3, 8), np.uint8), np.zeros((1, 8), np.uint8), 0)
    with pytest.raises(ValueError, match="do not fit"):
        scan.topk(np.zeros((3, 8), np.uint8), np.zeros((1, 4), np.uint8), 1)
