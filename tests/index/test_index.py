"""Index backends against the numpy reference; the index file (round trip, integrity, atomic writes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from attnhash.codes import hamming_distances, unpack_codes
from attnhash.errors import IndexFileError
from attnhash.index import create_index, open_index, read_header
from attnhash.index.faiss_index import FaissIndex, hash_layout
from attnhash.index.fileformat import HEADER_SIZE
from index_fixtures import real_codes


def brute_force_topk(q: np.ndarray, db: np.ndarray, ids: np.ndarray, k: int):
    """The definition, written independently of the backends: lexsort on (distance, position)."""
    d = hamming_distances(q, db)
    nd, ni = np.full((len(q), k), -1, np.int32), np.full((len(q), k), -1, np.int64)
    for i, row in enumerate(d):
        order = np.lexsort((np.arange(len(row)), row))[:k]
        nd[i, : len(order)] = row[order]
        ni[i, : len(order)] = ids[order]
    return nd, ni


def assert_same_topk(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def assert_same_ranges(a, b):
    assert len(a) == len(b)
    for (da, ia), (db, ib) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(da, db)


def rand_codes(rng, n, bits, low_entropy=False):
    if low_entropy:  # few distinct byte values: huge numbers of equal distances
        return rng.choice(np.array([0, 1, 3, 255], np.uint8), size=(n, bits // 8))
    return rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)


def planted(rng, queries, per, bits, max_flips):
    """Codes at known small distances from each query (so radius searches have something to find)."""
    out = []
    for q in unpack_codes(queries):
        for _ in range(per):
            v = q.copy()
            flips = rng.choice(bits, rng.integers(0, max_flips + 1), replace=False)
            v[flips] *= -1
            out.append(v)
    return np.packbits(np.array(out) > 0, axis=1)


# ---- top-k ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 24, 64, 128, 256])
def test_numpy_reference_is_the_definition(bits):
    rng = np.random.default_rng(bits)
    db, q = rand_codes(rng, 700, bits, low_entropy=bits <= 24), rand_codes(rng, 9, bits)
    ids = rng.permutation(10_000)[:700]
    index = create_index("numpy", bits)
    index.add(db, ids=ids)
    for k in (1, 7, 700, 705):
        assert_same_topk(index.search(q, k), brute_force_topk(q, db, ids, k))


@pytest.mark.parametrize("bits", [16, 64, 128])
@pytest.mark.parametrize("low_entropy", [False, True])
def test_faiss_topk_matches_reference(bits, low_entropy):
    rng = np.random.default_rng(bits + low_entropy)
    db, q = rand_codes(rng, 3000, bits, low_entropy), rand_codes(rng, 25, bits, low_entropy)
    ids = rng.permutation(1_000_000)[:3000]
    f, r = create_index("faiss", bits), create_index("numpy", bits)
    f.add(db, ids=ids)
    r.add(db, ids=ids)
    for k in (1, 10, 100, 2999, 3000, 3100):
        assert_same_topk(f.search(q, k), r.search(q, k))
    d, i = f.search(q, 3100)
    assert (i[:, 3000:] == -1).all() and (d[:, 3000:] == -1).all()


def test_faiss_topk_matches_reference_on_real_codes():
    db = real_codes(64, 3000)
    if db is None:
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
    f, r = create_index("faiss", 64), create_index("numpy", 64)
    f.add(db[100:])
    r.add(db[100:])
    q = db[:100]
    for k in (1, 50, 500):
        assert_same_topk(f.search(q, k), r.search(q, k))
    # real codes are clustered: many ties inside the top 50, the case the tie rule exists for
    d, _ = r.search(q, 50)
    assert (np.diff(d, axis=1) == 0).mean() > 0.3
    for radius in (0, 3, 8):
        assert_same_ranges(f.range_search(q, radius), r.range_search(q, radius))


def test_removal_and_readd_keep_backends_equal():
    rng = np.random.default_rng(3)
    f, r = create_index("faiss", 32), create_index("numpy", 32)
    q = rand_codes(rng, 20, 32, True)
    alive: set[int] = set()
    for step in range(6):
        codes = rand_codes(rng, 500, 32, low_entropy=True)
        metas = [{"path": f"/img/{step}/{j}.png", "labels": [j % 5]} for j in range(500)]
        got_f = f.add(codes, metadata=metas)
        got_r = r.add(codes, metadata=metas)
        np.testing.assert_array_equal(got_f, got_r)
        alive.update(got_f.tolist())
        gone = rng.choice(sorted(alive), 150, replace=False)
        assert f.remove(np.concatenate([gone, [10**9]])) == 150  # unknown ids are ignored
        r.remove(gone)
        alive.difference_update(gone.tolist())
        for k in (1, 25, 400):
            assert_same_topk(f.search(q, k), r.search(q, k))
        assert_same_ranges(f.range_search(q, 3, method="flat"), r.range_search(q, 3))
        assert not set(f.search(q, 400)[1].ravel().tolist()) & set(gone.tolist())
    assert len(f) == len(r) == len(alive)
    np.testing.assert_array_equal(f.all_ids(), r.all_ids())
    some = f.all_ids()[::97]
    assert f.metadata(some) == r.metadata(some)
    assert f.metadata(some[:1])[0]["path"].startswith("/img/")
    np.testing.assert_array_equal(f.reconstruct(some), r.reconstruct(some))
    # new auto ids never reuse a removed id
    assert f.add(rand_codes(rng, 1, 32))[0] == 6 * 500


def test_add_checks_its_input():
    index = create_index("faiss", 64)
    index.add(np.zeros((3, 8), np.uint8), ids=[5, 6, 7])
    with pytest.raises(ValueError, match="already in the index"):
        index.add(np.zeros((1, 8), np.uint8), ids=[6])
    with pytest.raises(ValueError, match="repeat"):
        index.add(np.zeros((2, 8), np.uint8), ids=[1, 1])
    with pytest.raises(ValueError, match="64-bit"):
        index.add(np.zeros((1, 4), np.uint8))
    with pytest.raises(ValueError, match="k must be positive"):
        index.search(np.zeros((1, 8), np.uint8), 0)
    with pytest.raises(KeyError, match="unknown id"):
        index.metadata([99])
    # {-1,+1} codes are packed on the way in; a 1-D code is one query
    signs = np.where(np.random.default_rng(0).random((2, 64)) > 0.5, 1, -1)
    new = index.add(signs)
    np.testing.assert_array_equal(new, [8, 9])
    d, i = index.search(signs[1], 1)
    assert d.shape == (1, 1) and i[0, 0] == 9 and d[0, 0] == 0
    assert 9 in index and 4 not in index


def test_empty_index_pads():
    for backend in ("faiss", "numpy"):
        d, i = create_index(backend, 16).search(np.zeros((2, 2), np.uint8), 3)
        assert (d == -1).all() and (i == -1).all()
        assert create_index(backend, 16).range_search(np.zeros((1, 2), np.uint8), 4)[0][0].size == 0


# ---- radius search ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [16, 32, 64, 128])
def test_radius_search_plans_are_exact(bits):
    rng = np.random.default_rng(bits)
    q = rand_codes(rng, 12, bits)
    db = np.concatenate([rand_codes(rng, 25_000, bits), planted(rng, q, 40, bits, 6)])
    db = db[rng.permutation(len(db))]
    f, r = create_index("faiss", bits), create_index("numpy", bits)
    f.add(db)
    r.add(db)
    assert hash_layout(bits)[0] == ("multihash" if bits >= 64 else "hash")
    for radius in (0, 1, 2, 3, 5):
        ref = r.range_search(q, radius)
        assert sum(len(i) for i, _ in ref) > 0
        for method in ("auto", "flat", "distinct", "hash", "faiss", "multihash"):
            assert_same_ranges(f.range_search(q, radius, method=method), ref)
        assert_same_ranges(f.range_search(q[:1], radius), ref[:1])
    if bits >= 64:  # all codes distinct: a large radius is cheaper as a flat scan
        assert f.range_plan(bits // 2) == "flat"
    assert_same_ranges(f.range_search(q, bits // 2), r.range_search(q, bits // 2))
    with pytest.raises(ValueError, match="unknown radius method"):
        f.range_search(q, 2, method="bogus")


@pytest.mark.parametrize("bits", [16, 64, 128])
def test_every_topk_plan_is_exact(bits):
    rng = np.random.default_rng(bits + 1)
    q = rand_codes(rng, 10, bits)
    db = np.concatenate([rand_codes(rng, 6_000, bits, low_entropy=True), planted(rng, q, 60, bits, 3),
                         rand_codes(rng, 3_000, bits)])
    db = db[rng.permutation(len(db))]
    f, r = create_index("faiss", bits), create_index("numpy", bits)
    ids = rng.permutation(100_000)[: len(db)]
    f.add(db, ids=ids)
    r.add(db, ids=ids)
    qs = np.concatenate([q, db[:5]])
    for k in (1, 10, 100, 1000):
        ref = r.search(qs, k)
        for method in ("auto", "flat", "distinct", "hash", "faiss"):
            assert_same_topk(f.search(qs, k, method=method), ref)
            assert_same_topk(f.search(qs[:1], k, method=method), (ref[0][:1], ref[1][:1]))
    with pytest.raises(ValueError, match="unknown search method"):
        f.search(qs, 3, method="bogus")


def test_radius_hash_tables_follow_adds_and_removes():
    rng = np.random.default_rng(7)
    q = rand_codes(rng, 8, 64)
    f, r = create_index("faiss", 64), create_index("numpy", 64)
    for index in (f, r):
        index.add(rand_codes(np.random.default_rng(1), 20_000, 64))
    f.build_hash()
    f.build_layer()
    near = planted(rng, q, 10, 64, 2)
    f.add(near)
    r.add(near)
    for method in ("multihash", "hash", "distinct", "auto"):
        assert_same_ranges(f.range_search(q, 2, method=method), r.range_search(q, 2))
    gone = f.range_search(q, 2)[0][1][:5]
    f.remove(gone)
    r.remove(gone)
    for method in ("multihash", "hash", "distinct", "auto"):
        assert_same_ranges(f.range_search(q, 2, method=method), r.range_search(q, 2))
    for method in ("hash", "distinct", "auto"):
        assert_same_topk(f.search(q, 30, method=method), r.search(q, 30))


# ---- the index file ------------------------------------------------------------------------------------
def _sample_index(backend="faiss", n=1000, bits=64, fingerprint="ab" * 32):
    rng = np.random.default_rng(0)
    index = create_index(backend, bits, fingerprint=fingerprint, info={"class_names": ["a", "b", "c"]})
    metas = [{"path": f"/data/{j}.png", "labels": [j % 3]} if j % 4 else None for j in range(n)]
    index.add(rand_codes(rng, n, bits), ids=rng.permutation(10 * n)[:n], metadata=metas)
    index.remove(index.all_ids()[::10])
    return index


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path, backend, mmap):
    index = _sample_index(backend)
    path = tmp_path / "a.idx"
    index.save(str(path))
    q = np.random.default_rng(1).integers(0, 256, (5, 8), dtype=np.uint8)
    for other in ("faiss", "numpy"):
        back = open_index(str(path), backend=other, mmap=mmap)
        assert (len(back), back.bits, back.fingerprint, back.next_id) == (len(index), 64, "ab" * 32, index.next_id)
        assert back.info == {"class_names": ["a", "b", "c"]}
        np.testing.assert_array_equal(back.all_ids(), index.all_ids())
        ids = index.all_ids()[:40]
        assert back.metadata(ids) == index.metadata(ids)
        assert_same_topk(back.search(q, 20), index.search(q, 20))
        # a loaded (read-only, memory-mapped) index takes changes and saves again
        back.add(q, metadata=[{"path": "new"}] * 5)
        back.remove(index.all_ids()[:3])
        back.save(str(tmp_path / f"b-{other}.idx"))
        again = open_index(str(tmp_path / f"b-{other}.idx"))
        assert len(again) == len(index) + 2
        assert again.metadata([again.all_ids()[-1]]) == [{"path": "new"}]
    assert read_header(str(path))["count"] == len(index)
    # memory-mapped loading: the numpy backend reads codes and ids in place, FAISS copies only the codes
    mapped = open_index(str(path), backend="numpy", mmap=mmap)
    assert isinstance(mapped._codes.view, np.memmap) == mmap and isinstance(mapped.all_ids(), np.memmap) == mmap
    assert isinstance(open_index(str(path), mmap=mmap).all_ids(), np.memmap) == mmap


def test_file_without_metadata_has_no_metadata_section(tmp_path):
    index = create_index("faiss", 64)
    index.add(np.zeros((10, 8), np.uint8))
    index.save(str(tmp_path / "x.idx"))
    head = read_header(str(tmp_path / "x.idx"))
    assert head["sections"]["meta_offsets"][1] == 0
    assert open_index(str(tmp_path / "x.idx")).metadata([3]) == [{}]


def _corrupt(path, offset, value=None):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([(b[0] ^ 0xFF) if value is None else value]))


def test_corrupted_and_truncated_files_are_refused(tmp_path):
    path = str(tmp_path / "a.idx")
    _sample_index().save(path)
    size = os.path.getsize(path)
    secs = read_header(path)["sections"]
    good = open(path, "rb").read()

    def restore():
        with open(path, "wb") as f:
            f.write(good)

    for section in ("codes", "ids", "meta"):
        _corrupt(path, secs[section][0] + 5)
        with pytest.raises(IndexFileError, match=f"a.idx is corrupted: checksum mismatch in its {section}"):
            open_index(path)
        if section == "ids":  # even unverified, ids past the next id are refused: they would be issued again
            with pytest.raises(IndexFileError, match="a.idx is corrupted: ids outside"):
                open_index(path, verify=False)
        else:
            open_index(path, verify=False)  # skipping the payload checksums is allowed, and only that
        restore()
    _corrupt(path, 20)
    with pytest.raises(IndexFileError, match="header checksum"):
        open_index(path)
    restore()
    os.truncate(path, size - 100)
    with pytest.raises(IndexFileError, match=f"a.idx is truncated: {size - 100} bytes"):
        open_index(path, verify=False)
    os.truncate(path, HEADER_SIZE - 10)
    with pytest.raises(IndexFileError, match="truncated"):
        open_index(path)
    with open(path, "wb") as f:
        f.write(b"hello, not an index")
    with pytest.raises(IndexFileError, match="not an attnhash index file"):
        open_index(path)
    with pytest.raises(IndexFileError, match="does not exist"):
        open_index(str(tmp_path / "missing.idx"))


def test_fingerprint_mismatch_is_refused():
    index = _sample_index(fingerprint="a" * 64)
    index.path = "/x/my.idx"
    index.check_fingerprint("a" * 64)
    index.check_fingerprint(None)  # unknown model: nothing to compare
    with pytest.raises(IndexFileError, match=r"index /x/my.idx was built by model with fingerprint aaaaaaaaaaaa…, "
                                             r"the query model is bbbbbbbbbbbb…"):
        index.check_fingerprint("b" * 64)


_WRITER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from attnhash.index import create_index
    from attnhash.index import fileformat

    def hook(section):
        if section == "ids":  # the codes are on disk, the header is not: stop here and wait to be killed
            open(sys.argv[2], "w").close()
            time.sleep(60)

    fileformat._after_section_hook = hook
    index = create_index("faiss", 64, info={"version": "new"})
    index.add(np.full((200_000, 8), 7, np.uint8))
    index.save(sys.argv[1])
    """
)


def test_kill_during_write_leaves_old_index_readable(tmp_path):
    path = tmp_path / "a.idx"
    old = create_index("faiss", 64, info={"version": "old"})
    old.add(np.arange(800, dtype=np.uint8).reshape(100, 8))
    old.save(str(path))
    marker = tmp_path / "in-the-middle"
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(marker)])
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert child.poll() is None, "writer exited early"
            assert time.time() < deadline, "writer never reached the middle of its write"
            time.sleep(0.05)
        temps = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
        assert temps and os.path.getsize(tmp_path / temps[0]) > 1_000_000  # a partial new file exists
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    back = open_index(str(path))
    assert back.info == {"version": "old"} and len(back) == 100
    np.testing.assert_array_equal(back.reconstruct([42]), old.reconstruct([42]))


def test_faiss_index_memory_is_close_to_raw(tmp_path):
    index = FaissIndex(64)
    index.add(np.zeros((100_000, 8), np.uint8))
    raw = 100_000 * (8 + 8)
    assert index.memory_bytes() <= 1.5 * raw
