"""Readers of the data layer on fixtures written here in each format's real layout."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from attnhash.data import (
    ArraySource,
    FileSource,
    from_arrays,
    open_dataset,
    open_item_ref,
    read_cifar,
    read_hashnet_lists,
    read_idx,
    read_idx_folder,
    read_image_folder,
    read_list_file,
    read_npz,
)
from attnhash.errors import DataError


def _rand_image(rng: np.random.Generator, h: int = 9, w: int = 7, grey: bool = False) -> np.ndarray:
    shape = (h, w) if grey else (h, w, 3)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _save(path, arr: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


# ------------------------------------------------------------------------------------------------------------
# List files
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def list_tree(tmp_path):
    """Four images (PNG RGB, PNG grey, JPEG, PNG RGBA) under tmp_path/img, with their pixels."""
    rng = np.random.default_rng(0)
    pix = {
        "img/a.png": _rand_image(rng),
        "img/b.png": _rand_image(rng, grey=True),
        "img/sub/c.jpg": np.full((8, 8, 3), (200, 30, 90), dtype=np.uint8),
        "img/d.png": _rand_image(rng),
    }
    for rel, arr in pix.items():
        _save(tmp_path / rel, arr)
    rgba = np.dstack([pix["img/d.png"], np.full(pix["img/d.png"].shape[:2], 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "img/d.png")
    return tmp_path, pix


def test_list_file_multi_hot_round_trip(list_tree):
    root, pix = list_tree
    (root / "train.txt").write_text(
        "# a comment\n"
        "img/a.png 1 0 1\n"
        "\n"
        "img/b.png 0 1 0\n"
        "   img/sub/c.jpg   0 0 1  \n"
        "img/d.png 1 1 1\n"
    )
    src = read_list_file(root / "train.txt")
    assert isinstance(src, FileSource)
    assert len(src) == 4
    assert src.labels.dtype == np.uint8
    np.testing.assert_array_equal(src.labels, [[1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 1, 1]])
    assert src.root == str(root)
    np.testing.assert_array_equal(src.image(0), pix["img/a.png"])
    grey = src.image(1)
    assert grey.shape == (9, 7, 3)
    for ch in range(3):  # grey expanded to three equal channels
        np.testing.assert_array_equal(grey[:, :, ch], pix["img/b.png"])
    jpg = src.image(2)
    assert jpg.shape == (8, 8, 3) and jpg.dtype == np.uint8
    assert np.abs(jpg.astype(int) - [200, 30, 90]).max() <= 3  # JPEG is lossy
    np.testing.assert_array_equal(src.image(3), pix["img/d.png"])  # RGBA -> RGB
    assert src.describe(2) == os.path.join(str(root), "img/sub/c.jpg")
    assert src.item_ref(0) == os.path.join(str(root), "img/a.png")
    np.testing.assert_array_equal(open_item_ref(src.item_ref(0)), pix["img/a.png"])


def test_list_file_one_hot_and_root_and_num_classes(list_tree, tmp_path):
    root, pix = list_tree
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "l.txt").write_text("img/a.png 0 1\nimg/b.png 1 0\n")
    src = read_list_file(lists / "l.txt", root=root, num_classes=2)
    np.testing.assert_array_equal(src.labels, [[0, 1], [1, 0]])
    np.testing.assert_array_equal(src.image(0), pix["img/a.png"])
    with pytest.raises(DataError, match=r"l\.txt:1: label vector has 2 values, expected 3 \(num_classes\)"):
        read_list_file(lists / "l.txt", root=root, num_classes=3)


def test_list_file_class_id_form(list_tree):
    root, _ = list_tree
    (root / "ids.txt").write_text("img/a.png 2\nimg/b.png 0\nimg/d.png 2\n")
    src = read_list_file(root / "ids.txt")
    np.testing.assert_array_equal(src.labels, [[0, 0, 1], [1, 0, 0], [0, 0, 1]])
    src5 = read_list_file(root / "ids.txt", num_classes=5)
    assert src5.labels.shape == (3, 5)
    with pytest.raises(DataError, match=r"ids\.txt:1: class id 2 out of range for 2 classes"):
        read_list_file(root / "ids.txt", num_classes=2)
    (root / "mixed.txt").write_text("img/a.png 2\nimg/b.png 0 1 0\n")
    with pytest.raises(DataError, match=r"mixed\.txt:2: 3 label values, expected one class id"):
        read_list_file(root / "mixed.txt")


def test_list_file_path_with_spaces(tmp_path):
    _save(tmp_path / "my images" / "x 1.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "l.txt").write_text("my images/x 1.png 0 1\n")
    src = read_list_file(tmp_path / "l.txt")
    assert src.paths == ["my images/x 1.png"]
    np.testing.assert_array_equal(src.labels, [[0, 1]])


def test_list_file_errors_name_file_and_line(list_tree):
    root, _ = list_tree
    cases = {
        "missing.txt": ("img/a.png 1 0\n# c\nimg/nope.png 0 1\n", r"missing\.txt:3: image not found: .*img/nope\.png"),
        "length.txt": ("img/a.png 1 0 0 1\nimg/b.png 0 1 0 0\n\nimg/d.png 1 0 1\n",
                       r"length\.txt:4: label vector has 3 values, expected 4 \(line 1\)"),
        "values.txt": ("img/a.png 1 0\nimg/b.png 0 2\n", r"values\.txt:2: label values must be 0 or 1, got '2'"),
        "nolabel.txt": ("img/a.png 1 0\nimg/b.png\n", r"nolabel\.txt:2: expected '<image path> <labels>'"),
        "nopath.txt": ("img/zz.png\n", r"nopath\.txt:1: image not found: .*img/zz\.png"),
        "twice.txt": ("img/a.png 1 0\nimg/b.png 0 1\n./img/a.png 0 1\n", r"twice\.txt:3: \./img/a\.png is listed again "
                      r"with other labels \(first on line 1\)"),
        "empty.txt": ("# nothing\n\n", r"empty\.txt: list file has no items"),
        "negid.txt": ("img/a.png -1\n", r"negid\.txt:1: class id must be a non-negative integer"),
    }
    for name, (text, pattern) in cases.items():
        (root / name).write_text(text)
        with pytest.raises(DataError, match=pattern) as info:
            read_list_file(root / name)
        assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=r"absent\.txt: list file not found"):
        read_list_file(root / "absent.txt")


def test_unreadable_and_truncated_images(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"this is not an image at all")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "l.txt").write_text("bad.jpg 1 0\ncut.jpg 0 1\n")
    src = read_list_file(tmp_path / "l.txt")  # files exist: decoding is lazy
    for i, name in enumerate(["bad.jpg", "cut.jpg"]):
        with pytest.raises(DataError, match=rf"{name}: cannot read image \(") as info:
            src.image(i)
        assert str(tmp_path / name) in str(info.value)
        assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=r"nothere\.png: no such image file"):
        open_item_ref(str(tmp_path / "nothere.png"))


# ------------------------------------------------------------------------------------------------------------
# Image folders
# ------------------------------------------------------------------------------------------------------------


def test_image_folder(tmp_path):
    rng = np.random.default_rng(2)
    a0 = _rand_image(rng)
    _save(tmp_path / "cat" / "z.PNG", a0)
    _save(tmp_path / "cat" / "deep" / "er" / "y.bmp", _rand_image(rng))
    _save(tmp_path / "dog" / "x.Jpeg", _rand_image(rng))
    _save(tmp_path / "dog" / "w.gif", _rand_image(rng, grey=True))
    _save(tmp_path / "ant" / "v.webp", _rand_image(rng))
    _save(tmp_path / "ant" / "u.tiff", _rand_image(rng))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    _save(tmp_path / ".hidden" / "h.png", _rand_image(rng))
    (tmp_path / "top.png").write_bytes(b"files at the top level are ignored")
    src = read_image_folder(tmp_path)
    assert src.class_names == ["ant", "cat", "dog"]
    assert len(src) == 6
    np.testing.assert_array_equal(src.labels.argmax(1), [0, 0, 1, 1, 2, 2])
    assert src.labels.sum() == 6
    assert src.paths[2] == os.path.join("cat", "z.PNG")  # files of a folder before its sub-folders
    assert src.paths[3] == os.path.join("cat", "deep", "er", "y.bmp")
    np.testing.assert_array_equal(src.image(2), a0)
    assert src.image(4).shape == (9, 7, 3)
    # the same tree through open_dataset
    assert open_dataset(str(tmp_path)).fingerprint() == src.fingerprint()


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        read_image_folder(tmp_path / "none")
    with pytest.raises(DataError, match="no class sub-folders"):
        read_image_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"empty_class: class folder has no images"):
        read_image_folder(tmp_path)


# ------------------------------------------------------------------------------------------------------------
# CIFAR python batches, written the way Python 2's cPickle wrote the official files (protocol 2, byte
# strings), so the reader sees the real opcodes: BINSTRING keys, numpy.core.multiarray._reconstruct.
# ------------------------------------------------------------------------------------------------------------


def _p2_str(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def _p2_int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def _p2_value(v) -> bytes:
    if isinstance(v, (bytes, str)):
        return _p2_str(v)
    if isinstance(v, int):
        return _p2_int(v)
    if isinstance(v, list):
        return b"](" + b"".join(_p2_value(x) for x in v) + b"e"
    if isinstance(v, np.ndarray):
        assert v.dtype == np.uint8
        return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"(" + _p2_int(0) + b"t"
                + _p2_str("b") + b"\x87R"
                + b"(" + _p2_int(1) + b"(" + b"".join(_p2_int(d) for d in v.shape) + b"t"
                + b"cnumpy\ndtype\n(" + _p2_str("u1") + _p2_int(0) + _p2_int(1) + b"tR"
                + b"(" + _p2_int(3) + _p2_str("|") + b"NNN" + _p2_int(-1) + _p2_int(-1) + _p2_int(0) + b"tb"
                + b"\x89" + _p2_str(v.tobytes()) + b"tb")
    raise TypeError(type(v))


def py2_pickle(d: dict) -> bytes:
    return b"\x80\x02}(" + b"".join(_p2_str(k) + _p2_value(v) for k, v in d.items()) + b"u."


def _cifar_rows(rng, n):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(folder, rng, per_batch=4, test=3):
    """cifar-10-batches-py layout; returns (data rows, labels) in reader order."""
    folder.mkdir(parents=True)
    rows, labels = [], []
    for b in range(1, 6):
        d, lab = _cifar_rows(rng, per_batch), [int(x) for x in rng.integers(0, 10, per_batch)]
        (folder / f"data_batch_{b}").write_bytes(py2_pickle(
            {"batch_label": f"training batch {b} of 5", "labels": lab, "data": d,
             "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)]}))
        rows.append(d)
        labels += lab
    d, lab = _cifar_rows(rng, test), [int(x) for x in rng.integers(0, 10, test)]
    (folder / "test_batch").write_bytes(py2_pickle({"batch_label": "testing batch 1 of 1", "labels": lab, "data": d}))
    rows.append(d)
    labels += lab
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(py2_pickle({"num_cases_per_batch": per_batch, "label_names": names,
                                                      "num_vis": 3072}))
    (folder / "readme.html").write_text("<html></html>")
    return np.concatenate(rows), np.asarray(labels)


def write_cifar100(folder, rng, n_train=6, n_test=3, py3=False):
    folder.mkdir(parents=True)
    dump = (lambda d: pickle.dumps(d, protocol=4)) if py3 else py2_pickle
    out = []
    for name, n in (("train", n_train), ("test", n_test)):
        d = _cifar_rows(rng, n)
        fine = [int(x) for x in rng.integers(0, 100, n)]
        (folder / name).write_bytes(dump({"filenames": [f"{name}{i}.png" for i in range(n)], "batch_label": name,
                                          "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": d}))
        out.append((d, fine))
    (folder / "meta").write_bytes(dump({"fine_label_names": [f"fine{i}" for i in range(100)],
                                        "coarse_label_names": [f"coarse{i}" for i in range(20)]}))
    return np.concatenate([o[0] for o in out]), np.asarray(out[0][1] + out[1][1])


def _check_cifar(src: ArraySource, rows: np.ndarray, labels: np.ndarray, c: int):
    assert isinstance(src, ArraySource)
    assert len(src) == rows.shape[0]
    assert src.labels.shape == (rows.shape[0], c)
    np.testing.assert_array_equal(src.labels.argmax(1), labels)
    assert src.labels.sum() == rows.shape[0]
    for i in (0, 5, rows.shape[0] - 1):  # planar R, G, B rows -> H x W x 3
        np.testing.assert_array_equal(src.image(i), rows[i].reshape(3, 32, 32).transpose(1, 2, 0))


def _tar(folder, out_path):
    with tarfile.open(out_path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)


def test_cifar10_folder_and_tarball(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-10-batches-py"
    rows, labels = write_cifar10(folder, rng)
    src = read_cifar(folder)
    _check_cifar(src, rows, labels, 10)
    assert src.name == "cifar10"
    assert src.class_names[0] == "airplane" and src.class_names[9] == "truck"
    np.testing.assert_array_equal(src.groups["train"], np.arange(20))
    np.testing.assert_array_equal(src.groups["test"], np.arange(20, 23))
    assert read_cifar(tmp_path).fingerprint() == src.fingerprint()  # the parent folder works too
    tarball = tmp_path / "cifar-10-python.tar.gz"
    _tar(folder, tarball)
    from_tar = read_cifar(tarball)
    _check_cifar(from_tar, rows, labels, 10)
    assert from_tar.fingerprint() == src.fingerprint()
    assert from_tar.root == str(tmp_path)
    # by name, and re-opened from an item reference in a fresh lookup
    named = open_dataset("cifar10", root=str(tarball))
    ref = named.item_ref(21)
    assert ref == f"dataset:cifar10@{tarball}#21"
    np.testing.assert_array_equal(open_item_ref(ref), src.image(21))
    np.testing.assert_array_equal(open_item_ref(from_tar.item_ref(2)), src.image(2))
    with pytest.raises(DataError, match="holds cifar10, not cifar100"):
        open_dataset("cifar100", root=str(tarball))


def test_cifar100_folder_tarball_and_python3_pickles(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "cifar-100-python"
    rows, labels = write_cifar100(folder, rng)
    src = read_cifar(folder)
    _check_cifar(src, rows, labels, 100)
    assert src.name == "cifar100" and src.class_names[7] == "fine7"
    np.testing.assert_array_equal(src.groups["test"], [6, 7, 8])
    _tar(folder, tmp_path / "cifar-100-python.tar.gz")
    assert open_dataset(str(tmp_path / "cifar-100-python.tar.gz")).fingerprint() == src.fingerprint()
    py3 = tmp_path / "py3" / "cifar-100-python"
    rows3, labels3 = write_cifar100(py3, rng, py3=True)  # str keys, protocol 4
    _check_cifar(read_cifar(py3), rows3, labels3, 100)


def test_cifar_errors(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "c10"
    write_cifar10(folder, rng)
    os.remove(folder / "data_batch_3")
    with pytest.raises(DataError, match=r"data_batch_3: missing cifar10 batch"):
        read_cifar(folder)
    (folder / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match=r"data_batch_3: cannot unpickle CIFAR batch"):
        read_cifar(folder)
    # a pickle that would run code is refused, not executed
    (folder / "data_batch_3").write_bytes(b"\x80\x02cos\nsystem\nU\x04trueR.")
    with pytest.raises(DataError, match=r"refusing to load global os\.system"):
        read_cifar(folder)
    (folder / "data_batch_3").write_bytes(py2_pickle({"labels": [1], "data": np.zeros((1, 100), np.uint8)}))
    with pytest.raises(DataError, match=r"data_batch_3: 'data' must be a uint8 array \(N, 3072\)"):
        read_cifar(folder)
    (folder / "data_batch_3").write_bytes(py2_pickle({"labels": [1, 12], "data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(DataError, match=r"data_batch_3: label 12 outside 0\.\.9"):
        read_cifar(folder)
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 broken")
    with pytest.raises(DataError, match=r"broken\.tar\.gz: not a readable tar archive"):
        read_cifar(tmp_path / "broken.tar.gz")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no CIFAR batches found"):
        read_cifar(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------------------------
# idx files
# ------------------------------------------------------------------------------------------------------------


def idx_images(arr: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x00000803, *arr.shape) + arr.tobytes()


def idx_labels(ids: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, ids.shape[0]) + ids.astype(np.uint8).tobytes()


def test_idx_gz_and_raw(tmp_path):
    rng = np.random.default_rng(6)
    imgs = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    ids = rng.integers(0, 10, 12)
    ids[0] = 9
    (tmp_path / "i.gz").write_bytes(gzip.compress(idx_images(imgs)))
    (tmp_path / "l-raw").write_bytes(idx_labels(ids))  # no .gz suffix, not compressed
    (tmp_path / "i-gz-without-suffix").write_bytes(gzip.compress(idx_images(imgs)))
    for images_path in ("i.gz", "i-gz-without-suffix"):
        src = read_idx(tmp_path / images_path, tmp_path / "l-raw")
        assert len(src) == 12 and src.labels.shape == (12, 10)
        np.testing.assert_array_equal(src.labels.argmax(1), ids)
        np.testing.assert_array_equal(src.images, imgs)
        img = src.image(3)
        assert img.shape == (28, 28, 3)
        np.testing.assert_array_equal(img[:, :, 1], imgs[3])
    assert src.describe(4) == f"{src.name}[4]"
    with pytest.raises(DataError, match="no re-openable item reference"):
        src.item_ref(0)


def test_idx_folder_and_open_dataset(tmp_path):
    rng = np.random.default_rng(7)
    tr, te = rng.integers(0, 256, (8, 5, 5), dtype=np.uint8), rng.integers(0, 256, (3, 5, 5), dtype=np.uint8)
    tr_ids, te_ids = np.arange(8) % 4, np.array([3, 2, 1])
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_images(tr)))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels(tr_ids)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_images(te))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_labels(te_ids))
    src = open_dataset(str(tmp_path))
    assert len(src) == 11
    np.testing.assert_array_equal(src.images[8:], te)
    np.testing.assert_array_equal(src.labels.argmax(1), np.concatenate([tr_ids, te_ids]))
    np.testing.assert_array_equal(src.groups["train"], np.arange(8))
    np.testing.assert_array_equal(src.groups["test"], np.arange(8, 11))
    np.testing.assert_array_equal(open_item_ref(src.item_ref(9)), np.repeat(te[1][:, :, None], 3, 2))
    with pytest.raises(DataError, match="an idx file needs its partner"):
        open_dataset(str(tmp_path / "t10k-images-idx3-ubyte"))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\]: missing idx file"):
        read_idx_folder(tmp_path)


def test_idx_errors(tmp_path):
    imgs = np.zeros((4, 6, 6), np.uint8)
    good_l = tmp_path / "l"
    good_l.write_bytes(idx_labels(np.arange(4)))
    cases = {
        "magic": (struct.pack(">IIII", 0x00000801, 4, 6, 6) + imgs.tobytes(),
                  r"bad idx magic number 0x00000801, expected 0x00000803 \(images\)"),
        "trunc": (idx_images(imgs)[:-10], r"truncated idx file: header says 4 x 6 x 6 = 144 bytes, found 134"),
        "long": (idx_images(imgs) + b"xx", r"too long idx file"),
        "header": (b"\x00\x00\x08\x03\x00\x00", r"truncated idx header"),
        "tiny": (b"\x00", r"too short for an idx header"),
        "gztrunc": (gzip.compress(idx_images(imgs))[:-12], r"corrupt or truncated gzip data"),
    }
    for name, (data, pattern) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=pattern) as info:
            read_idx(tmp_path / name, good_l)
        assert str(info.value).startswith(str(tmp_path / name) + ": ")
    (tmp_path / "i").write_bytes(idx_images(imgs))
    (tmp_path / "l3").write_bytes(idx_labels(np.arange(3)))
    with pytest.raises(DataError, match=r"l3: 3 labels for 4 images in .*/i$"):
        read_idx(tmp_path / "i", tmp_path / "l3")
    with pytest.raises(DataError, match=r"i: bad idx magic number 0x00000803, expected 0x00000801 \(labels\)"):
        read_idx(tmp_path / "i", tmp_path / "i")
    with pytest.raises(DataError, match=r"nope: idx images file not found"):
        read_idx(tmp_path / "nope", good_l)


# ------------------------------------------------------------------------------------------------------------
# HashNet lists, arrays, .npz, open_dataset
# ------------------------------------------------------------------------------------------------------------


def test_hashnet_lists_build_one_source(tmp_path):
    rng = np.random.default_rng(8)
    names = [f"im/{i}.png" for i in range(7)]
    for n in names:
        _save(tmp_path / n, _rand_image(rng, 4, 4))
    vec = {n: [int(i % 3 == 0), int(i % 3 == 1), int(i % 3 == 2)] for i, n in enumerate(names)}
    line = lambda n: f"{n} {' '.join(map(str, vec[n]))}\n"  # noqa: E731
    (tmp_path / "train.txt").write_text("".join(line(n) for n in names[:3]))
    (tmp_path / "test.txt").write_text("".join(line(n) for n in names[5:]))
    # the database repeats the training images (once with a ./ prefix) and adds two more
    (tmp_path / "database.txt").write_text(line(names[0]) + f"./{line(names[1])}" + "".join(line(n) for n in names[2:5]))
    src = read_hashnet_lists(tmp_path)
    assert len(src) == 7
    np.testing.assert_array_equal(src.groups["train"], [0, 1, 2])
    np.testing.assert_array_equal(src.groups["test"], [3, 4])
    np.testing.assert_array_equal(src.groups["database"], [0, 1, 2, 5, 6])
    assert src.paths[3] == names[5]
    np.testing.assert_array_equal(src.labels[3], vec[names[5]])
    assert open_dataset("imagenet100", root=str(tmp_path)).fingerprint() == src.fingerprint()
    assert open_dataset(str(tmp_path)).fingerprint() == src.fingerprint()
    (tmp_path / "database.txt").write_text(f"{names[0]} 0 0 1\n")
    with pytest.raises(DataError, match=r"database\.txt:1: im/0\.png has other labels than at .*train\.txt:1"):
        read_hashnet_lists(tmp_path)
    (tmp_path / "database.txt").write_text(f"{names[0]} 1 0\n")
    with pytest.raises(DataError, match=r"database\.txt:1: label vector has 2 values, expected 3"):
        read_hashnet_lists(tmp_path)
    os.remove(tmp_path / "test.txt")
    with pytest.raises(DataError, match=r"test\.txt: missing; a HashNet list folder needs"):
        read_hashnet_lists(tmp_path)


def test_from_arrays_and_npz(tmp_path):
    rng = np.random.default_rng(9)
    imgs = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    src = from_arrays(imgs, [0, 2, 1, 2, 0], name="toy")
    np.testing.assert_array_equal(src.labels, np.eye(3, dtype=np.uint8)[[0, 2, 1, 2, 0]])
    np.testing.assert_array_equal(src.image(1), imgs[1])
    multi = from_arrays(imgs[..., :1], np.array([[1, 1], [0, 1], [1, 0], [0, 0], [1, 1]]))
    assert multi.images.shape == (5, 6, 6) and multi.image(0).shape == (6, 6, 3)
    assert src.fingerprint() != from_arrays(imgs, [0, 2, 1, 2, 1]).fingerprint()  # labels count
    imgs2 = imgs.copy()
    imgs2[4, 0, 0, 0] ^= 1
    assert src.fingerprint() != from_arrays(imgs2, [0, 2, 1, 2, 0]).fingerprint()  # pixels count
    with pytest.raises(DataError, match="images must be uint8"):
        from_arrays(imgs.astype(np.float32), [0] * 5)
    with pytest.raises(DataError, match="4 labels for 5 images"):
        from_arrays(imgs, [0] * 4)
    with pytest.raises(DataError, match="label values must be 0 or 1, item 1 column 0 is 3"):
        from_arrays(imgs, np.array([[0, 1], [3, 0], [1, 0], [1, 0], [1, 0]]))
    with pytest.raises(DataError, match=r"must have shape \(N,H,W\) or \(N,H,W,1\|3\)"):
        from_arrays(imgs[..., :2], [0] * 5)
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.array([0, 2, 1, 2, 0]), class_names=np.array(["a", "b", "c"]))
    z = open_dataset(str(tmp_path / "d.npz"))
    assert z.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(z.labels, src.labels)
    np.testing.assert_array_equal(open_item_ref(z.item_ref(3)), imgs[3])
    np.savez(tmp_path / "bad.npz", pixels=imgs)
    with pytest.raises(DataError, match=r"bad\.npz: \.npz has no 'images' and 'labels' array"):
        read_npz(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"junk\.npz: cannot read \.npz"):
        read_npz(tmp_path / "junk.npz")


def test_open_dataset_names_and_errors(tmp_path, list_tree):
    root, _ = list_tree
    (root / "nus.txt").write_text("img/a.png 1 0 1\nimg/b.png 0 1 0\n")
    assert len(open_dataset("nuswide", root=str(root / "nus.txt"))) == 2
    assert len(open_dataset(str(root / "nus.txt"))) == 2
    with pytest.raises(DataError, match=r"unknown dataset 'mnist-ish': not a known name \(cifar10, cifar100, fmnist"):
        open_dataset("mnist-ish")
    with pytest.raises(DataError, match="dataset 'cifar10' needs a root"):
        open_dataset("cifar10")
    with pytest.raises(DataError, match="Fashion-MNIST not found; install it with `apt-get install dataset-fashion-mnist`"):
        open_dataset("fmnist", root=str(tmp_path / "no-fmnist"))
    (tmp_path / "data.bin").write_bytes(b"?")
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        open_dataset(str(tmp_path / "data.bin"))
    with pytest.raises(DataError, match="bad item reference"):
        open_item_ref("dataset:fmnist")


def test_fmnist_env_override(tmp_path, monkeypatch):
    from attnhash.data import load_fashion_mnist

    monkeypatch.setenv("ATTNHASH_FMNIST_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match=r"elsewhere: Fashion-MNIST not found"):
        load_fashion_mnist()
