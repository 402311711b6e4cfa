"""The distinct-code layer against the definition: probing the Hamming ball and scanning the distinct codes give
exactly the (distance, position) order of a flat scan, for top-k and radius, through adds and removals."""

from __future__ import annotations

import numpy as np
import pytest

from attnhash.index import compiled
from attnhash.index.distinct import DistinctCodes, ball_size, distinct_summary
from search_fixtures import codes, definition_radius, definition_topk

pytestmark = pytest.mark.skipif(not compiled.AVAILABLE, reason=f"numba unavailable: {compiled.REASON}")


def check_layer(layer: DistinctCodes, db: np.ndarray, q: np.ndarray, ks=(1, 10, 100, 700), radii=(0, 1, 2, 5)):
    qw = layer.queries(q)
    for k in ks:
        want = definition_topk(q, db, k)
        d, p = layer.scan_topk(qw, k, parts=2)
        np.testing.assert_array_equal(d, want[0])
        np.testing.assert_array_equal(p, want[1])
        d, p, resolved = layer.probe_topk(qw, k, rmax=3, parts=2)
        np.testing.assert_array_equal(d[resolved], want[0][resolved])
        np.testing.assert_array_equal(p[resolved], want[1][resolved])
    for r in radii:
        want = definition_radius(q, db, r)
        for got in (layer.probe_radius(qw, r, parts=2), layer.scan_radius(qw, r, parts=2)):
            for (gd, gp), (wd, wp) in zip(got, want, strict=True):
                np.testing.assert_array_equal(gp, wp)
                np.testing.assert_array_equal(gd, wd)


@pytest.mark.parametrize("nbytes", [1, 2, 3, 8, 16])
@pytest.mark.parametrize("kind", ["clustered", "ties", "random"])
def test_layer_is_the_definition(nbytes, kind):
    rng = np.random.default_rng(nbytes * 3 + len(kind))
    db = codes(rng, 2500, nbytes, kind)
    q = np.concatenate([codes(rng, 8, nbytes, kind), db[:4]])
    layer = DistinctCodes(db)
    assert layer.stats() == distinct_summary(db)
    check_layer(layer, db, q, radii=(0, 1, 2) if nbytes > 2 else (0, 1, 2, 5))


def test_probing_resolves_clustered_queries_and_stops_on_empty_neighbourhoods():
    rng = np.random.default_rng(1)
    db = codes(rng, 4000, 8, "clustered")  # 20 centres: every query near a centre has hundreds of neighbours
    layer = DistinctCodes(db)
    uniq, counts = np.unique(db.view(np.uint64).ravel(), return_counts=True)
    centres = uniq[counts >= 20].view(np.uint8).reshape(-1, 8)  # the cluster centres: ~50 copies each
    assert len(centres) == 20
    _, _, resolved = layer.probe_topk(layer.queries(centres), 100, rmax=2)
    assert resolved.all()
    far = codes(rng, 20, 8, "random")
    _, _, resolved = layer.probe_topk(layer.queries(far), 10, rmax=2)
    assert not resolved.any()


def test_adds_and_removals_keep_the_layer_exact():
    rng = np.random.default_rng(4)
    db = codes(rng, 1500, 8, "clustered")
    layer = DistinctCodes(db[:500])
    store = db[:500]
    for step in range(5):
        more = db[500 + 200 * step : 700 + 200 * step]
        layer.add(more)
        store = np.concatenate([store, more])
        keep = rng.random(len(store)) > 0.3
        store = store[keep]
        layer.compact(keep, store)
        assert len(layer) == len(store)
        assert layer.stats() == distinct_summary(store)
        check_layer(layer, store, np.concatenate([db[:3], codes(rng, 3, 8, "clustered")]), ks=(1, 50, 300),
                    radii=(0, 2))


def test_removing_most_items_rebuilds_the_groups():
    rng = np.random.default_rng(6)
    db = codes(rng, 3000, 8, "random")
    layer = DistinctCodes(db)
    keep = np.zeros(len(db), bool)
    keep[::10] = True
    layer.compact(keep, db[keep])
    assert layer.groups == int(keep.sum())  # emptied groups dropped
    check_layer(layer, db[keep], db[:5], ks=(1, 20), radii=(0, 3))


def test_ball_size():
    assert [ball_size(64, r) for r in range(4)] == [1, 65, 2081, 43745]
    assert ball_size(8, 20) == 256
