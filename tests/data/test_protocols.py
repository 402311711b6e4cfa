"""Protocol splits: sizes, disjointness, determinism, and the persisted split file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from attnhash.data import (
    PROTOCOLS,
    ArraySource,
    from_arrays,
    load_or_create_split,
    make_split,
    read_hashnet_lists,
    save_split,
)
from attnhash.data import protocols as protocols_mod
from attnhash.errors import DataError


def single_label(counts, root=None, name="toy") -> ArraySource:
    """A single-label source with counts[c] items of class c, in shuffled order, 1x1 images."""
    ids = np.repeat(np.arange(len(counts)), counts)
    ids = np.random.default_rng(123).permutation(ids)
    src = ArraySource(np.zeros((ids.size, 1, 1), np.uint8), ids, name=name, root=root,
                      class_names=[f"class{c}" for c in range(len(counts))])
    return src


def _check_disjoint(split):
    assert not np.intersect1d(split.query, split.train).size
    assert not np.intersect1d(split.query, split.database).size
    for arr in (split.query, split.train, split.database):
        assert arr.dtype == np.int64
        assert np.all(np.diff(arr) > 0)  # sorted, unique


def test_cifar10_protocol_sizes_and_disjointness():
    counts = [700, 650, 800]
    src = single_label(counts)
    split = make_split(src, "cifar10", seed=0)
    ids = src.labels.argmax(1)
    assert split.sizes() == {"query": 300, "train": 1500, "database": sum(counts) - 1800}
    assert split.topk is None and split.classes is None and split.protocol == "cifar10"
    _check_disjoint(split)
    assert not np.intersect1d(split.train, split.database).size
    np.testing.assert_array_equal(np.sort(np.concatenate([split.query, split.train, split.database])),
                                  np.arange(len(src)))
    for c, n in enumerate(counts):
        assert (ids[split.query] == c).sum() == 100
        assert (ids[split.train] == c).sum() == 500
        assert (ids[split.database] == c).sum() == n - 600


def test_cifar10_1_database_is_all_but_queries():
    src = single_label([620, 610])
    split = make_split(src, "cifar10-1", seed=3)
    np.testing.assert_array_equal(split.database, np.setdiff1d(np.arange(len(src)), split.query))
    assert np.isin(split.train, split.database).all()
    assert split.sizes() == {"query": 200, "train": 1000, "database": 1030}
    # same draw of queries and training items as the cifar10 protocol with the same seed
    plain = make_split(src, "cifar10", seed=3)
    np.testing.assert_array_equal(plain.query, split.query)
    np.testing.assert_array_equal(plain.train, split.train)


def test_fmnist_protocol_is_cifar10_protocol():
    src = single_label([600, 601])
    a, b = make_split(src, "fmnist", seed=1), make_split(src, "cifar10", seed=1)
    assert a.protocol == "fmnist"
    for key in ("query", "train", "database"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


def test_seed_determinism():
    src = single_label([650, 700])
    a, b, c = make_split(src, "cifar10", 7), make_split(src, "cifar10", 7), make_split(src, "cifar10", 8)
    for key in ("query", "train", "database"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert not np.array_equal(a.query, c.query)


def test_small_class_and_multi_label_are_refused():
    with pytest.raises(DataError, match=r"class 'class1' \(column 1\) has 599 items, protocol cifar10 needs at "
                                        r"least 600 \(100 query \+ 500 train\)"):
        make_split(single_label([700, 599]), "cifar10")
    labels = np.zeros((1300, 2), np.uint8)
    labels[:, 0] = 1
    labels[650:, 1] = 1
    labels[650:, 0] = 0
    labels[5, 1] = 1
    src = from_arrays(np.zeros((1300, 1, 1), np.uint8), labels)
    with pytest.raises(DataError, match=r"needs single-label data, but item 5 \(arrays\[5\]\) has 2 labels"):
        make_split(src, "cifar10")
    with pytest.raises(DataError, match=r"unknown protocol 'cifar11'; known: cifar10, cifar10-1"):
        make_split(src, "cifar11")


def nuswide_like(n=20000, seed=0) -> ArraySource:
    """25 concepts with exact frequencies: 19 at 2000, three tied at 1000 (columns 5, 9, 13), three at 300."""
    rng = np.random.default_rng(seed)
    freq = {c: 2000 for c in range(25)}
    freq.update({5: 1000, 9: 1000, 13: 1000, 2: 300, 22: 300, 24: 300})
    labels = np.zeros((n, 25), np.uint8)
    for c, k in freq.items():
        labels[rng.choice(n, size=k, replace=False), c] = 1
    return from_arrays(np.zeros((n, 1, 1), np.uint8), labels, name="nus")


def test_nuswide21_columns_and_per_class_counts():
    src = nuswide_like()
    split = make_split(src, "nuswide21", seed=0)
    expected = sorted(set(range(25)) - {13, 2, 22, 24})  # the tie at 1000 keeps the lower columns 5 and 9
    np.testing.assert_array_equal(split.classes, expected)
    assert split.topk == 5000
    lab = src.labels[:, split.classes]
    kept = np.flatnonzero(lab.any(1))
    assert split.query.size == 21 * 100 and split.train.size == 21 * 500
    _check_disjoint(split)
    assert np.isin(split.train, split.database).all()  # train is part of the database
    np.testing.assert_array_equal(split.database, np.setdiff1d(kept, split.query))
    assert np.isin(split.query, kept).all()
    for j in range(21):  # every class got its draws (items may carry several labels)
        assert lab[split.query, j].sum() >= 100
        assert lab[split.train, j].sum() >= 500
    again = make_split(src, "nuswide21", seed=0)
    np.testing.assert_array_equal(again.train, split.train)


def test_nuswide21_needs_enough_columns_and_items():
    src = from_arrays(np.zeros((10, 1, 1), np.uint8), np.eye(10, dtype=np.uint8))
    with pytest.raises(DataError, match="needs at least 21 label columns, the data has 10"):
        make_split(src, "nuswide21")
    lab = np.zeros((3000, 21), np.uint8)
    lab[np.arange(3000), np.arange(3000) % 21] = 1
    with pytest.raises(DataError, match=r"class column 0 has 43 images left to draw as train, protocol nuswide21 "
                                        r"needs 500 per class"):
        make_split(from_arrays(np.zeros((3000, 1, 1), np.uint8), lab), "nuswide21")


def test_imagenet100_from_groups(tmp_path):
    for i in range(6):
        Image.fromarray(np.full((2, 2, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "train.txt").write_text("0.png 1 0\n1.png 0 1\n")
    (tmp_path / "test.txt").write_text("4.png 1 0\n5.png 0 1\n")
    (tmp_path / "database.txt").write_text("0.png 1 0\n1.png 0 1\n2.png 1 0\n3.png 0 1\n")
    src = read_hashnet_lists(tmp_path)
    split = make_split(src, "imagenet100", seed=0)
    assert split.topk == 1000
    np.testing.assert_array_equal(split.query, src.groups["test"])
    np.testing.assert_array_equal(split.train, src.groups["train"])
    np.testing.assert_array_equal(split.database, src.groups["database"])
    cifar_like = ArraySource(np.zeros((4, 1, 1), np.uint8), [0, 1, 0, 1], name="c",
                             groups={"train": [0, 1], "test": [2, 3]})
    with pytest.raises(DataError, match=r"c: protocol imagenet100 takes query/train/database from the data's own "
                                        r"groups .* missing 'database' \(groups present: test, train\)"):
        make_split(cifar_like, "imagenet100")
    with pytest.raises(DataError, match=r"missing 'test', 'train', 'database' \(groups present: none\)"):
        make_split(single_label([3]), "imagenet100")


def test_protocol_registry():
    assert set(PROTOCOLS) == {"cifar10", "cifar10-1", "nuswide21", "imagenet100", "fmnist", "stratified"}
    assert PROTOCOLS.get("nuswide21").topk == 5000 and PROTOCOLS.get("imagenet100").topk == 1000
    assert PROTOCOLS.get("cifar10").topk is None


# ------------------------------------------------------------------------------------------------------------
# Persistence
# ------------------------------------------------------------------------------------------------------------


def test_split_file_written_once_in_the_cache_never_in_the_data_folder_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNHASH_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    src = single_label([610, 620], root=str(tmp_path / "data"))
    split, path = load_or_create_split(src, "cifar10", seed=2)
    assert os.path.dirname(path) == str(tmp_path / "cache" / "splits") and path.endswith("-cifar10-seed2.json")
    doc = json.loads(open(path).read())
    assert doc["protocol"] == "cifar10" and doc["seed"] == 2 and doc["num_items"] == 1230
    assert doc["fingerprint"] == src.fingerprint() and doc["topk"] is None and doc["classes"] is None
    assert doc["query"] == split.query.tolist()
    mtime = os.stat(path).st_mtime_ns

    def no_regeneration(*args, **kwargs):
        raise AssertionError("the split must be read back, not drawn again")

    monkeypatch.setattr(protocols_mod, "make_split", no_regeneration)
    again, path2 = load_or_create_split(src, "cifar10", seed=2)
    assert path2 == path and os.stat(path).st_mtime_ns == mtime
    for key in ("query", "train", "database"):
        np.testing.assert_array_equal(getattr(again, key), getattr(split, key))
    # an equal source opened again (same fingerprint) reuses it too
    load_or_create_split(single_label([610, 620], root=str(tmp_path / "data")), "cifar10", seed=2)
    assert os.listdir(tmp_path / "data") == []  # the user's folder is never written
    assert os.listdir(tmp_path / "cache" / "splits") == [os.path.basename(path)]  # no temp files left
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # readable by the team, not 0600


def test_split_file_keeps_classes_and_topk(tmp_path):
    src = nuswide_like(seed=1)
    split, path = load_or_create_split(src, "nuswide21", seed=0, path=tmp_path / "s.json")
    back, _ = load_or_create_split(src, "nuswide21", seed=0, path=tmp_path / "s.json")
    np.testing.assert_array_equal(back.classes, split.classes)
    assert back.topk == 5000 and back.protocol == "nuswide21"
    np.testing.assert_array_equal(back.train, split.train)


def test_split_file_mismatch_is_detected(tmp_path):
    src = single_label([610, 620], root=str(tmp_path))
    _, path = load_or_create_split(src, "cifar10")
    bigger = single_label([610, 621], root=str(tmp_path))  # the same place, data that changed
    with pytest.raises(DataError, match=r"toy-[0-9a-f]{12}-cifar10-seed0\.json: split file was made for 1230 items, "
                                        r"the data \(toy\) has 1231; delete it to regenerate or pass another split path"):
        load_or_create_split(bigger, "cifar10")
    relabelled = single_label([620, 610], root=str(tmp_path))  # same size, other labels
    with pytest.raises(DataError, match=r"seed0\.json: split file was made for other data \(fingerprint .*"
                                        r"delete it to regenerate"):
        load_or_create_split(relabelled, "cifar10")
    with pytest.raises(DataError, match=r"s\.json: split file is for protocol 'cifar10', asked for 'cifar10-1'"):
        os.replace(path, tmp_path / "s.json")
        load_or_create_split(src, "cifar10-1", path=tmp_path / "s.json")
    with pytest.raises(DataError, match=r"split file is for seed 0, asked for seed 1"):
        load_or_create_split(src, "cifar10", seed=1, path=tmp_path / "s.json")


def test_corrupt_split_files(tmp_path):
    src = single_label([605, 606])
    good, _ = load_or_create_split(src, "cifar10", path=tmp_path / "good.json")
    doc = json.loads((tmp_path / "good.json").read_text())
    bad = {
        "trunc.json": (tmp_path / "good.json").read_text()[:200],
        "notjson.json": "\x00\x01 garbage",
        "other.json": json.dumps({"hello": 1}),
        "range.json": json.dumps({**doc, "query": [0, 99999]}),
        "types.json": json.dumps({**doc, "train": ["a"]}),
        "unsorted.json": json.dumps({**doc, "database": [5, 3]}),
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError) as info:
            load_or_create_split(src, "cifar10", path=tmp_path / name)
        msg = str(info.value)
        assert msg.startswith(str(tmp_path / name) + ": ") and "\n" not in msg


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    src = single_label([600, 600], root=str(tmp_path))

    def failing_replace(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(protocols_mod.os, "replace", failing_replace)
    monkeypatch.setenv("ATTNHASH_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="cannot write the split file .*No space left on device"):
        load_or_create_split(src, "cifar10")
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files]
    assert leftovers == []


def test_cache_location_when_no_root_or_not_writable(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNHASH_CACHE_DIR", str(tmp_path / "cache"))
    src = single_label([600, 601], name="my data/v1")
    _, path = load_or_create_split(src, "cifar10", seed=4)
    assert path == str(tmp_path / "cache" / "splits" / f"my_data_v1-{src.fingerprint()[:12]}-cifar10-seed4.json")
    # a root that cannot hold files (its parent is a file) falls back to the cache
    (tmp_path / "afile").write_text("x")
    src2 = single_label([600, 602], root=str(tmp_path / "afile" / "data"))
    _, path2 = load_or_create_split(src2, "cifar10")
    assert os.path.dirname(path2) == str(tmp_path / "cache" / "splits")
    assert load_or_create_split(src2, "cifar10")[1] == path2  # found again in the cache
    for _, _, files in os.walk(tmp_path):
        assert not [f for f in files if f.endswith(".tmp")]


def test_split_files_of_earlier_versions_beside_the_data_are_still_read(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNHASH_CACHE_DIR", str(tmp_path / "cache"))
    src = single_label([600, 600], root=str(tmp_path))
    split = make_split(src, "cifar10", seed=0)
    save_split(split, src, str(tmp_path / "attnhash-split-cifar10-seed0.json"))
    again, path = load_or_create_split(src, "cifar10")
    assert path == str(tmp_path / "attnhash-split-cifar10-seed0.json") and not (tmp_path / "cache").exists()
    np.testing.assert_array_equal(again.query, split.query)


# ------------------------------------------------------------------------------------------------------------
# Stratified: any data, from 2 images per class up
# ------------------------------------------------------------------------------------------------------------


def test_stratified_from_two_images_per_class():
    src = single_label([2, 2, 2])
    split = make_split(src, "stratified", seed=0)
    assert split.sizes() == {"query": 3, "train": 3, "database": 3}
    assert split.params == {"query": 0.1, "train": 0.5, "train_in_database": "yes"}  # "auto" resolved
    np.testing.assert_array_equal(split.database, split.train)  # too small for 3 parts: cifar10-1 style
    labels = src.labels.argmax(1)
    assert sorted(labels[split.query]) == [0, 1, 2] and sorted(labels[split.train]) == [0, 1, 2]


def test_stratified_fractions_and_counts_per_class():
    src = single_label([100, 50, 30])
    split = make_split(src, "stratified", seed=3)
    labels = src.labels.argmax(1)
    for part, expected in (("query", [10, 5, 3]), ("train", [50, 25, 15]), ("database", [40, 20, 12])):
        assert np.bincount(labels[getattr(split, part)], minlength=3).tolist() == expected
    assert not set(split.query) & set(split.train) and not set(split.train) & set(split.database)
    counted = make_split(src, "stratified", seed=3, params={"query": 5, "train": 20})
    assert counted.sizes() == {"query": 15, "train": 60, "database": 105}
    with_train = make_split(src, "stratified", seed=3, params={"train_in_database": "yes"})
    assert set(with_train.train) <= set(with_train.database) and len(with_train.database) == 180 - 18
    again = make_split(src, "stratified", seed=3)
    np.testing.assert_array_equal(again.train, split.train)  # seeded


def test_stratified_refuses_only_what_cannot_be_split():
    with pytest.raises(DataError, match=r"class 'class1' \(column 1\) has 1 image; the stratified split needs at "
                                        r"least 2 per class .*add images to it or leave it out"):
        make_split(single_label([5, 1]), "stratified")
    with pytest.raises(DataError, match=r"class 'class0' \(column 0\) has 20 images, fewer than the 5 query \+ 20 "
                                        r"train \+ 1 database asked for"):
        make_split(single_label([20, 40]), "stratified", params={"query": 5, "train": 20})
    with pytest.raises(DataError, match=r"data\.split_query must be a fraction in \(0, 1\) or a count >= 1"):
        make_split(single_label([20, 40]), "stratified", params={"query": 0})
    with pytest.raises(DataError, match="leave nothing for the database"):
        make_split(single_label([20, 40]), "stratified", params={"query": 0.5, "train": 0.5,
                                                                  "train_in_database": "no"})


def test_stratified_on_unlabelled_data_is_one_group(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNHASH_CACHE_DIR", str(tmp_path / "cache"))
    src = ArraySource(np.zeros((40, 4, 4), np.uint8), None, name="flat")
    split, path = load_or_create_split(src, "stratified", params={"query": 0.1, "train": 0.5})
    assert split.sizes() == {"query": 4, "train": 20, "database": 16}
    with pytest.raises(DataError, match=r"split file has query=0\.1, asked for 0\.2"):
        load_or_create_split(src, "stratified", path=path, params={"query": 0.2})
