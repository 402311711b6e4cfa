"""Readers for the field's dataset formats: list files, class folders, CIFAR pickle batches, idx files, .npz.

Every reader checks its input eagerly and reports problems as a one-line DataError naming the file (and the
line for list files); none of them extracts archives to disk.
"""

from __future__ import annotations

import gzip
import importlib
import io
import os
import pickle
import re
import struct
import tarfile
import zipfile
import zlib
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import DataError
from .sources import ArraySource, FileSource

__all__ = [
    "IMAGE_EXTENSIONS",
    "FMNIST_DIR",
    "FMNIST_CLASSES",
    "read_list_file",
    "read_image_folder",
    "read_cifar",
    "read_idx",
    "read_idx_folder",
    "load_fashion_mnist",
    "from_arrays",
    "read_npz",
    "read_hashnet_lists",
    "is_cifar_folder",
    "is_hashnet_folder",
    "is_idx_folder",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

_INT_RE = re.compile(r"[+-]?\d+")
_TOKEN_RE = re.compile(r"\S+")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------------
# List files
# --------------------------------------------------------------------------------------------------------------


class _ParsedList:
    """Paths (as written), multi-hot labels and the line number of each item of one list file."""

    def __init__(self, list_path: str, paths: list[str], labels: np.ndarray, lines: list[int], form: str) -> None:
        self.list_path = list_path
        self.paths = paths
        self.labels = labels
        self.lines = lines
        self.form = form  # "vector", "id" or "none" (paths only: unlabelled)


class _ExistingFiles:
    """File existence by one directory listing per folder: 200k stat calls cost more than the parsing."""

    def __init__(self) -> None:
        self._folders: dict[str, set[str]] = {}

    def __call__(self, path: str) -> bool:
        folder, base = os.path.split(path)
        names = self._folders.get(folder)
        if names is None:
            try:
                with os.scandir(folder or ".") as it:
                    names = {e.name for e in it if e.is_file()}
            except OSError:
                names = set()
            self._folders[folder] = names
        # A name missing from the listing may still be reachable (e.g. "a/../b"): ask the OS.
        return base in names or os.path.isfile(path)


def _path_with_spaces(list_path: str, lineno: int, line: str, tokens: list[str], root: str,
                      exists: _ExistingFiles) -> tuple[str, list[str]]:
    """The first token is not a file: try a path containing spaces, the labels being the trailing integers."""
    k = len(tokens)
    while k > 1 and _INT_RE.fullmatch(tokens[k - 1]):
        k -= 1
    if 1 < k < len(tokens):
        spans = list(_TOKEN_RE.finditer(line))
        alt = line[: spans[k].start()].rstrip()
        if exists(os.path.join(root, alt)):
            return alt, tokens[k:]
    full = os.path.join(root, tokens[0])
    what = "is not a file" if os.path.exists(full) else "not found"
    raise DataError(f"{list_path}:{lineno}: image {what}: {full}")


def _bad_vector(list_path: str, lineno: int, lab: list[str], width: int, width_from: str) -> None:
    if len(lab) != width:
        raise DataError(f"{list_path}:{lineno}: label vector has {len(lab)} values, expected {width} ({width_from})")
    bad = next(t for t in lab if t != "0" and t != "1")
    raise DataError(f"{list_path}:{lineno}: label values must be 0 or 1, got {_short(bad)!r}")


def _parse_list(list_path: str, root: str, num_classes: int | None) -> _ParsedList:
    """Parse and check a list file: `path 0 1 0 ...` (0/1 vector), `path class_id`, or a bare `path`
    (unlabelled), one item per line, the same form on every line."""
    try:
        with open(list_path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"{list_path}: list file not found") from None
    except IsADirectoryError:
        raise DataError(f"{list_path}: is a folder, expected a list file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{list_path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{list_path}: cannot read list file ({exc.strerror or exc})") from None

    paths: list[str] = []
    lines: list[int] = []
    chunks: list[str] = []  # label vectors as '0'/'1' strings, decoded in one go at the end (fast on 200k lines)
    ids: list[int] = []
    form: str | None = None
    width = 0
    width_from = ""
    exists = _ExistingFiles()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        tokens = line.split()
        if form in (None, "none") and exists(os.path.join(root, line)):
            rel, lab = line, []  # the whole line is a file: an unlabelled item (its name may hold spaces)
        elif len(tokens) < 2:
            if form in (None, "none"):
                raise DataError(f"{list_path}:{lineno}: image not found: {os.path.join(root, line)}")
            raise DataError(f"{list_path}:{lineno}: expected '<image path> <labels>', got {_short(line)!r} "
                            "(no labels, unlike the first item)")
        else:
            rel, lab = tokens[0], tokens[1:]
            if not exists(os.path.join(root, rel)):
                rel, lab = _path_with_spaces(list_path, lineno, line, tokens, root, exists)
        if form is None and not lab:
            form = "none"
        elif form == "none":
            if lab:
                raise DataError(f"{list_path}:{lineno}: labels on this line, but the first item has none "
                                "(label every line, or none)")
        elif form is None:
            # One label token per line means `path class_id`; a one-column 0/1 vector is only meant when asked.
            form = "id" if len(lab) == 1 and num_classes != 1 else "vector"
            if form == "vector":
                width = num_classes if num_classes is not None else len(lab)
                width_from = "num_classes" if num_classes is not None else f"line {lineno}"
        if form == "vector":
            joined = "".join(lab)
            # Only one-character tokens 0/1: same length as the token count, nothing left after strip("01").
            if len(lab) != width or len(joined) != width or joined.strip("01"):
                _bad_vector(list_path, lineno, lab, width, width_from)
            chunks.append(joined)
        else:
            if len(lab) != 1:
                raise DataError(f"{list_path}:{lineno}: {len(lab)} label values, expected one class id "
                                "(as on the first item's line)")
            tok = lab[0]
            if not (tok.isascii() and tok.isdigit()):
                raise DataError(f"{list_path}:{lineno}: class id must be a non-negative integer, got {_short(tok)!r}")
            cid = int(tok)
            if num_classes is not None and cid >= num_classes:
                raise DataError(f"{list_path}:{lineno}: class id {cid} out of range for {num_classes} classes")
            ids.append(cid)
        paths.append(rel)
        lines.append(lineno)
    if not paths:
        raise DataError(f"{list_path}: list file has no items")
    n = len(paths)
    if form == "none":
        return _ParsedList(list_path, *_unique(list_path, paths, np.zeros((n, 0), np.uint8), lines), form)
    if form == "id":
        c = num_classes if num_classes is not None else max(ids) + 1
        labels = np.zeros((n, c), dtype=np.uint8)
        labels[np.arange(n), np.asarray(ids)] = 1
    else:
        flat = np.frombuffer("".join(chunks).encode("ascii"), dtype=np.uint8) - ord("0")
        labels = flat.reshape(n, width).astype(np.uint8)
    return _ParsedList(list_path, *_unique(list_path, paths, labels, lines), form or "vector")


def _unique(list_path: str, paths: list[str], labels: np.ndarray, lines: list[int]):
    """One item per path: a repeated line is dropped, the same path with other labels is an error."""
    first: dict[str, int] = {}
    keep = []
    for k, rel in enumerate(paths):
        key = os.path.normpath(rel)
        j = first.setdefault(key, k)
        if j == k:
            keep.append(k)
        elif not np.array_equal(labels[j], labels[k]):
            raise DataError(f"{list_path}:{lines[k]}: {rel} is listed again with other labels (first on line "
                            f"{lines[j]}); an image has one set of labels")
    if len(keep) == len(paths):
        return paths, labels, lines
    return [paths[k] for k in keep], labels[keep], [lines[k] for k in keep]


def read_list_file(path: str | os.PathLike, root: str | os.PathLike | None = None,
                   num_classes: int | None = None) -> FileSource:
    """Read a list file (`relative/path.jpg 0 1 0 ...`, `path class_id`, or a bare `path` for unlabelled images,
    per line) into a FileSource.

    Paths are relative to ``root`` (default: the list file's folder). Every file must exist, every label
    vector must have the same length (``num_classes`` when given) and hold only 0/1; blank lines and `#`
    comments are skipped; a path listed twice is one item (with other labels the second time, an error).
    """
    path = os.fspath(path)
    root = os.path.abspath(os.fspath(root)) if root is not None else os.path.dirname(os.path.abspath(path))
    parsed = _parse_list(path, root, num_classes)
    return FileSource(parsed.paths, parsed.labels if parsed.form != "none" else None, root=root, name=path)


def read_hashnet_lists(folder: str | os.PathLike, root: str | os.PathLike | None = None,
                       num_classes: int | None = None) -> FileSource:
    """Read HashNet-style `train.txt`, `test.txt`, `database.txt` from ``folder`` into ONE source.

    Each distinct image path appears once (the database list repeats the training images); the groups
    "train", "test" and "database" index into it. Paths are relative to ``root`` (default: ``folder``).
    """
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: HashNet list folder not found")
    root = os.path.abspath(os.fspath(root)) if root is not None else folder
    index: dict[str, int] = {}
    where_first: list[str] = []
    paths: list[str] = []
    label_rows: list[np.ndarray] = []
    groups: dict[str, np.ndarray] = {}
    width = num_classes
    width_file = ""
    for group in ("train", "test", "database"):
        list_path = os.path.join(folder, f"{group}.txt")
        if not os.path.isfile(list_path):
            raise DataError(f"{list_path}: missing; a HashNet list folder needs train.txt, test.txt and database.txt")
        parsed = _parse_list(list_path, root, width)
        if width is None:
            width, width_file = parsed.labels.shape[1], list_path
        elif parsed.labels.shape[1] != width:
            raise DataError(
                f"{list_path}: label vectors have {parsed.labels.shape[1]} values, expected {width} (as in {width_file})"
            )
        members = np.empty(len(parsed.paths), dtype=np.int64)
        for j, rel in enumerate(parsed.paths):
            key = os.path.normpath(rel)
            at = index.get(key)
            if at is None:
                at = index[key] = len(paths)
                paths.append(rel)
                label_rows.append(parsed.labels[j])
                where_first.append(f"{list_path}:{parsed.lines[j]}")
            elif not np.array_equal(label_rows[at], parsed.labels[j]):
                raise DataError(
                    f"{list_path}:{parsed.lines[j]}: {rel} has other labels than at {where_first[at]}"
                )
            members[j] = at
        groups[group] = np.unique(members)
    return FileSource(paths, np.stack(label_rows), root=root, name=folder, groups=groups)


# --------------------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------------------


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def read_image_folder(root: str | os.PathLike) -> FileSource:
    """One sub-folder per class (sorted names give the class ids), images found recursively by extension; or,
    when the folder holds images and no sub-folders of images, a flat folder of unlabelled images."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(f"{root}: image folder not found")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        files = sorted(e.name for e in os.scandir(root) if e.is_file() and _is_image_name(e.name))
        if not files:
            raise DataError(f"{root}: no images and no class sub-folders (extensions: "
                            f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
        return FileSource(files, None, root=root, name=root)
    paths: list[str] = []
    ids: list[int] = []
    for cid, cls in enumerate(classes):
        seen: set[str] = set()  # real paths of visited folders, so symlink loops cannot recurse forever
        count = 0
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, cls), followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if _is_image_name(fn):
                    paths.append(os.path.relpath(os.path.join(dirpath, fn), root))
                    ids.append(cid)
                    count += 1
        if count == 0:
            raise DataError(f"{os.path.join(root, cls)}: class folder has no images "
                            f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    labels = np.zeros((len(paths), len(classes)), dtype=np.uint8)
    labels[np.arange(len(paths)), ids] = 1
    return FileSource(paths, labels, root=root, name=root, class_names=classes)


# --------------------------------------------------------------------------------------------------------------
# CIFAR python pickle batches
# --------------------------------------------------------------------------------------------------------------

# The only globals a CIFAR batch pickle may reference: numpy array reconstruction (old and new module
# names) and the helper Python 3 uses for bytes in protocol-2 pickles. Anything else is refused, so a
# hostile "dataset" cannot run code when unpickled.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core"):
            try:  # numpy 2 renamed numpy.core to numpy._core; the old name only warns
                return getattr(importlib.import_module("numpy._core" + module[len("numpy.core"):]), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


def _unpickle(data: bytes, label: str) -> dict:
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # a corrupt pickle can raise nearly anything; report it as one line
        raise DataError(f"{label}: cannot unpickle CIFAR batch ({type(exc).__name__}: {_short(str(exc), 100)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{label}: CIFAR batch is a {type(obj).__name__}, expected a dict")
    # Python 2 pickles read with encoding="bytes" have bytes keys; pickles written by Python 3 have str keys.
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _get(batch: dict, key: str, label: str) -> Any:
    if key not in batch:
        raise DataError(f"{label}: CIFAR batch has no {key!r} entry (has: {', '.join(sorted(batch))})")
    return batch[key]


def _names(values: Any, label: str) -> list[str]:
    try:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
    except TypeError:
        raise DataError(f"{label}: class names are not a list") from None


_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_SUBDIRS = ("cifar-10-batches-py", "cifar-100-python")


def _cifar_members(path: str) -> tuple[Callable[[str], bytes], set[str], str, str]:
    """Return (read(name) -> bytes, available names, label prefix for errors, root folder) for a tar or folder."""
    if os.path.isdir(path):
        folder = path
        for sub in _CIFAR_SUBDIRS:  # the parent of the extracted folder is fine too
            if not os.path.isfile(os.path.join(folder, "data_batch_1")) and os.path.isdir(os.path.join(folder, sub)):
                folder = os.path.join(folder, sub)
                break
        names = {n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))}

        def read_file(name: str) -> bytes:
            p = os.path.join(folder, name)
            try:
                with open(p, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise DataError(f"{p}: cannot read ({exc.strerror or exc})") from None

        return read_file, names, folder + os.sep, folder
    if not os.path.isfile(path):
        raise DataError(f"{path}: CIFAR tarball or folder not found")
    wanted = set(_CIFAR10_TRAIN) | {"test_batch", "batches.meta", "train", "test", "meta"}
    contents: dict[str, bytes] = {}
    try:
        # One streaming pass: random access into a .tar.gz would decompress it again for every member.
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in contents:
                    fobj = tar.extractfile(member)
                    if fobj is not None:
                        contents[base] = fobj.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable tar archive ({type(exc).__name__}: {_short(str(exc), 100)})") from None
    return contents.__getitem__, set(contents), path + ":", os.path.dirname(os.path.abspath(path))


def _cifar_batch(read: Callable[[str], bytes], name: str, prefix: str, label_key: str, num_classes: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    label = prefix + name
    batch = _unpickle(read(name), label)
    data = np.asarray(_get(batch, "data", label))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{label}: 'data' must be a uint8 array (N, 3072), got {data.dtype} {data.shape}")
    raw_ids = _get(batch, label_key, label)
    try:
        ids = np.asarray(raw_ids, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{label}: {label_key!r} is not a list of integers") from None
    if ids.shape[0] != data.shape[0]:
        raise DataError(f"{label}: {ids.shape[0]} labels for {data.shape[0]} images")
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise DataError(f"{label}: label {int(ids.max() if ids.max() >= num_classes else ids.min())} "
                        f"outside 0..{num_classes - 1}")
    return data, ids


def read_cifar(path: str | os.PathLike) -> ArraySource:
    """CIFAR-10 or CIFAR-100 python batches from the official tarball or its extracted folder.

    Items are the training images then the test images, with groups "train" and "test"; class names come
    from batches.meta (CIFAR-10) or meta (CIFAR-100, fine labels).
    """
    path = os.path.abspath(os.fspath(path))
    read, names, prefix, root = _cifar_members(path)
    if "data_batch_1" in names or "test_batch" in names:
        variant, train_names, test_name, meta_name = "cifar10", _CIFAR10_TRAIN, "test_batch", "batches.meta"
        label_key, names_key, c = "labels", "label_names", 10
    elif "train" in names and "test" in names:
        variant, train_names, test_name, meta_name = "cifar100", ["train"], "test", "meta"
        label_key, names_key, c = "fine_labels", "fine_label_names", 100
    else:
        raise DataError(f"{path}: no CIFAR batches found (expected data_batch_1..5 and test_batch for CIFAR-10, "
                        "or train and test for CIFAR-100)")
    for needed in train_names + [test_name]:
        if needed not in names:
            raise DataError(f"{prefix}{needed}: missing {variant} batch")
    class_names = None
    if meta_name in names:
        meta = _unpickle(read(meta_name), prefix + meta_name)
        class_names = _names(_get(meta, names_key, prefix + meta_name), prefix + meta_name)
        if len(class_names) != c:
            raise DataError(f"{prefix}{meta_name}: {len(class_names)} class names, expected {c}")
    parts = [_cifar_batch(read, nm, prefix, label_key, c) for nm in train_names + [test_name]]
    n = sum(d.shape[0] for d, _ in parts)
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    at = 0
    for data, _ in parts:  # rows are 1024 red, 1024 green, 1024 blue values: planar to interleaved
        images[at: at + data.shape[0]] = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        at += data.shape[0]
    ids = np.concatenate([i for _, i in parts])
    n_train = sum(d.shape[0] for d, _ in parts[:-1])
    groups = {"train": np.arange(n_train), "test": np.arange(n_train, n)}
    return ArraySource(images, from_ids(ids, c), name=variant, class_names=class_names, groups=groups,
                       root=root, spec=path)


def from_ids(ids: np.ndarray, num_classes: int) -> np.ndarray:
    """One-hot (N, C) uint8 from class ids."""
    out = np.zeros((ids.shape[0], num_classes), dtype=np.uint8)
    out[np.arange(ids.shape[0]), ids] = 1
    return out


# --------------------------------------------------------------------------------------------------------------
# idx (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------------------------

_IDX_IMAGES = 0x00000803
_IDX_LABELS = 0x00000801


def _read_idx_file(path: str, magic_expected: int, what: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: idx {what} file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic; the name is not trusted
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({_short(str(exc), 100)})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an idx header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != magic_expected:
        raise DataError(f"{path}: bad idx magic number 0x{magic:08x}, expected 0x{magic_expected:08x} ({what})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated idx header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims, dtype=np.int64))
    body = len(raw) - header
    if body != count:
        state = "truncated" if body < count else "too long"
        raise DataError(f"{path}: {state} idx file: header says {' x '.join(map(str, dims))} = {count} bytes, "
                        f"found {body}")
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(dims).copy()


def read_idx(images_path: str | os.PathLike, labels_path: str | os.PathLike,
             name: str | None = None, class_names: Sequence[str] | None = None) -> ArraySource:
    """MNIST-style idx image (magic 0x803) and label (0x801) files, gzipped or not (detected by content)."""
    images_path, labels_path = os.fspath(images_path), os.fspath(labels_path)
    images = _read_idx_file(images_path, _IDX_IMAGES, "images")
    ids = _read_idx_file(labels_path, _IDX_LABELS, "labels").astype(np.int64)
    if images.shape[0] != ids.shape[0]:
        raise DataError(f"{labels_path}: {ids.shape[0]} labels for {images.shape[0]} images in {images_path}")
    c = len(class_names) if class_names is not None else (int(ids.max()) + 1 if ids.size else 1)
    if ids.size and ids.max() >= c:
        raise DataError(f"{labels_path}: label {int(ids.max())} out of range for {c} classes")
    return ArraySource(images, from_ids(ids, c), name=name or os.path.basename(images_path),
                       class_names=class_names, root=os.path.dirname(os.path.abspath(images_path)))


def _idx_file(folder: str, base: str) -> str | None:
    for candidate in (base + ".gz", base):
        p = os.path.join(folder, candidate)
        if os.path.isfile(p):
            return p
    return None


def is_idx_folder(folder: str) -> bool:
    return _idx_file(folder, "train-images-idx3-ubyte") is not None


def read_idx_folder(folder: str | os.PathLike, name: str | None = None,
                    class_names: Sequence[str] | None = None, spec: str | None = None) -> ArraySource:
    """A folder with the four MNIST-layout idx files: train then t10k items, groups "train" and "test"."""
    folder = os.path.abspath(os.fspath(folder))
    found = {}
    for part in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            base = f"{part}-{kind}-ubyte"
            p = _idx_file(folder, base)
            if p is None:
                raise DataError(f"{os.path.join(folder, base)}[.gz]: missing idx file")
            found[part, kind] = p
    train = read_idx(found["train", "images-idx3"], found["train", "labels-idx1"], class_names=class_names)
    test = read_idx(found["t10k", "images-idx3"], found["t10k", "labels-idx1"], class_names=class_names)
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(f"{folder}: train images are {train.images.shape[1:]}, test images {test.images.shape[1:]}")
    c = max(train.num_classes, test.num_classes)
    pad = lambda lab: np.pad(lab, ((0, 0), (0, c - lab.shape[1])))  # noqa: E731  (a class may miss from test)
    n_train = len(train)
    return ArraySource(
        np.concatenate([train.images, test.images]),
        np.concatenate([pad(train.labels), pad(test.labels)]),
        name=name or os.path.basename(folder), class_names=class_names,
        groups={"train": np.arange(n_train), "test": np.arange(n_train, n_train + len(test))},
        root=folder, spec=spec if spec is not None else folder,
    )


def load_fashion_mnist(root: str | os.PathLike | None = None) -> ArraySource:
    """The 70,000 Fashion-MNIST images (60k train then 10k test), groups "train"/"test", 10 class names.

    ``root`` defaults to $ATTNHASH_FMNIST_DIR, else /usr/share/datasets/fashion-mnist (Debian package
    dataset-fashion-mnist).
    """
    explicit = root is not None
    folder = os.fspath(root) if root is not None else (os.environ.get("ATTNHASH_FMNIST_DIR") or FMNIST_DIR)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: Fashion-MNIST not found; install it with `apt-get install dataset-fashion-mnist`"
                        " or pass the folder holding its idx files (or set ATTNHASH_FMNIST_DIR)")
    spec = "fmnist@" + os.path.abspath(folder) if explicit else "fmnist"
    return read_idx_folder(folder, name="fmnist", class_names=FMNIST_CLASSES, spec=spec)


# --------------------------------------------------------------------------------------------------------------
# Arrays and .npz
# --------------------------------------------------------------------------------------------------------------


def from_arrays(images: np.ndarray, labels: np.ndarray | Sequence, name: str = "arrays",
                class_names: Sequence[str] | None = None) -> ArraySource:
    """In-memory uint8 images (N,H,W) or (N,H,W,1|3) with class ids (N,) or multi-hot labels (N, C)."""
    return ArraySource(images, labels, name=name, class_names=class_names)


def read_npz(path: str | os.PathLike) -> ArraySource:
    """An .npz with `images` (uint8) and `labels` (ids or multi-hot), optionally `class_names`."""
    path = os.path.abspath(os.fspath(path))
    try:
        with np.load(path, allow_pickle=False) as z:
            files = list(z.files)
            arrays = {k: z[k] for k in ("images", "labels", "class_names") if k in files}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot read .npz ({_short(str(exc), 100)})") from None
    missing = [k for k in ("images", "labels") if k not in arrays]
    if missing:
        raise DataError(f"{path}: .npz has no {' and '.join(repr(k) for k in missing)} array "
                        f"(has: {', '.join(files) or 'nothing'})")
    images, labels = arrays["images"], arrays["labels"]
    class_names = [str(c) for c in arrays["class_names"]] if "class_names" in arrays else None
    return ArraySource(images, labels, name=os.path.basename(path), class_names=class_names,
                       root=os.path.dirname(path), spec=path)


def is_cifar_folder(folder: str) -> bool:
    def has(*names: str) -> bool:
        return all(os.path.isfile(os.path.join(folder, n)) for n in names)

    return has("data_batch_1") or has("train", "test", "meta") or any(
        os.path.isdir(os.path.join(folder, s)) for s in _CIFAR_SUBDIRS)


def is_hashnet_folder(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f"{g}.txt")) for g in ("train", "test", "database"))
