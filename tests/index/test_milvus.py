"""The milvus backend against the numpy reference, on milvus-lite started by the tests (one server per module)."""

from __future__ import annotations

import numpy as np
import pytest

from attnhash.errors import AttnHashError, IndexFileError
from attnhash.index import create_index, open_index
from index_fixtures import real_codes

pytestmark = pytest.mark.milvus


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory):
    """A milvus-lite database file; skip the module cleanly when milvus-lite cannot start here."""
    uri = str(tmp_path_factory.mktemp("milvus") / "test.db")
    try:
        probe = create_index("milvus", 8, uri=uri, collection="probe")
    except (AttnHashError, ImportError) as err:
        pytest.skip(f"milvus-lite cannot start: {err}")
    probe._c.drop_collection("probe")
    probe._c.drop_collection("probe_attnhash")
    yield uri
    probe.close()


def _pair(uri, name, bits, db, ids=None, metas=None):
    m = create_index("milvus", bits, uri=uri, collection=name, overwrite=True, fingerprint="f" * 64)
    r = create_index("numpy", bits)
    m.add(db, ids=ids, metadata=metas)
    r.add(db, ids=ids, metadata=metas)
    return m, r


def _same_topk(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def _same_ranges(a, b):
    for (da, ia), (db, ib) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(da, db)


def test_milvus_topk_and_radius_match_reference_with_ties(milvus_uri):
    rng = np.random.default_rng(0)
    # few distinct byte values: most distances tie, and the k-th distance ties with items left out
    db = rng.choice(np.array([0, 1, 3, 255], np.uint8), size=(2000, 8))
    q = rng.choice(np.array([0, 1, 3, 255], np.uint8), size=(15, 8))
    ids = rng.permutation(100_000)[:2000]
    m, r = _pair(milvus_uri, "ties", 64, db, ids)
    assert len(m) == 2000
    for k in (1, 10, 100):
        _same_topk(m.search(q, k), r.search(q, k))
    for radius in (0, 2, 6):
        _same_ranges(m.range_search(q, radius), r.range_search(q, radius))
    gone = ids[:300]
    assert m.remove(np.concatenate([gone, [10**9]])) == 300
    r.remove(gone)
    _same_topk(m.search(q, 50), r.search(q, 50))
    _same_ranges(m.range_search(q, 4), r.range_search(q, 4))
    np.testing.assert_array_equal(m.all_ids(), r.all_ids())


def test_milvus_on_real_codes_metadata_and_file_round_trip(milvus_uri, tmp_path):
    db = real_codes(64, 1200)
    if db is None:
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
    metas = [{"path": f"/img/{j}.png", "labels": [j % 10]} if j % 3 else None for j in range(1100)]
    m, r = _pair(milvus_uri, "real", 64, db[100:], metas=metas)
    q = db[:100]
    _same_topk(m.search(q, 20), r.search(q, 20))
    _same_ranges(m.range_search(q, 5), r.range_search(q, 5))
    assert m.metadata([1, 2, 3]) == r.metadata([1, 2, 3])
    np.testing.assert_array_equal(m.reconstruct([5, 7]), db[[105, 107]])
    assert list(m.contains([0, 5000])) == [True, False]
    with pytest.raises(KeyError, match="unknown id"):
        m.metadata([5000])
    with pytest.raises(ValueError, match="already in the index"):
        m.add(db[:1], ids=[3])
    assert m.add(db[:2]).tolist() == [1100, 1101]

    # export to the common file, read back by another backend, and load into a new collection
    path = str(tmp_path / "m.idx")
    m.save(path)
    back = open_index(path, backend="faiss")
    assert back.fingerprint == "f" * 64 and len(back) == 1102
    _same_topk(back.search(q, 20), m.search(q, 20))
    m2 = open_index(path, backend="milvus", uri=milvus_uri, collection="reloaded")
    _same_topk(m2.search(q, 20), m.search(q, 20))
    assert m2.metadata([4]) == back.metadata([4])

    # reattaching to an existing collection keeps its state; another model's fingerprint is refused
    again = create_index("milvus", 64, uri=milvus_uri, collection="real")
    assert len(again) == 1102 and again.next_id == 1102 and again.fingerprint == "f" * 64
    with pytest.raises(IndexFileError, match="fingerprint"):
        create_index("milvus", 64, uri=milvus_uri, collection="real", fingerprint="0" * 64)
    with pytest.raises(AttnHashError, match="holds 64-bit codes"):
        create_index("milvus", 32, uri=milvus_uri, collection="real")
