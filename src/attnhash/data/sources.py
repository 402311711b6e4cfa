"""A uniform view of a labelled image collection: in-memory arrays or image files on disk.

Every source exposes multi-hot labels, optional class names and named index groups, decodes one image at a
time as H x W x 3 uint8 RGB, and has a cheap fingerprint so a persisted split can tell when the data changed.
"""

from __future__ import annotations

import hashlib
import operator
import os
from typing import Sequence

import numpy as np

from ..errors import DataError
from .images import open_image

__all__ = [
    "ImageSource",
    "ArraySource",
    "FileSource",
    "normalize_labels",
]

def normalize_labels(labels: np.ndarray | Sequence | None, n: int, what: str,
                     num_classes: int | None = None) -> np.ndarray:
    """Turn class ids (N,) or a 0/1 matrix (N, C) into an (N, C) uint8 multi-hot matrix, checking values.
    None means unlabelled data: an (N, 0) matrix."""
    if labels is None:
        return np.zeros((n, 0), dtype=np.uint8)
    arr = np.asarray(labels)
    if arr.ndim == 1:
        if arr.shape[0] != n:
            raise DataError(f"{what}: {arr.shape[0]} labels for {n} images")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
                raise DataError(f"{what}: class ids must be integers, got dtype {arr.dtype}")
        ids = arr.astype(np.int64)
        if ids.size and ids.min() < 0:
            raise DataError(f"{what}: negative class id {int(ids.min())}")
        c = int(ids.max()) + 1 if ids.size else 0
        if num_classes is not None:
            if c > num_classes:
                raise DataError(f"{what}: class id {c - 1} out of range for {num_classes} classes")
            c = num_classes
        out = np.zeros((n, max(c, 1)), dtype=np.uint8)
        out[np.arange(n), ids] = 1
        return out
    if arr.ndim != 2 or arr.shape[0] != n:
        raise DataError(f"{what}: labels must have shape (N,) or (N, C) with N = {n}, got {arr.shape}")
    if arr.shape[1] == 0:
        raise DataError(f"{what}: label matrix has no columns")
    if num_classes is not None and arr.shape[1] != num_classes:
        raise DataError(f"{what}: label vectors have {arr.shape[1]} values, expected {num_classes}")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{what}: label values must be 0 or 1, item {r} column {c} is {arr[r, c].item()!r}")
    return arr.astype(np.uint8)


class ImageSource:
    """Base class: a labelled collection of N images, decoded one at a time.

    Subclasses set ``name``, ``labels`` (N, C) uint8 multi-hot, ``class_names``, ``groups`` (named index
    subsets given by the data itself, e.g. the official "train"/"test"), and ``root`` (the folder the data
    lives in, where a split file goes by default).
    """

    name: str
    labels: np.ndarray
    class_names: list[str] | None
    groups: dict[str, np.ndarray]
    root: str | None
    # How open_dataset() can re-open this source in a fresh process (used by item_ref); None when unknown.
    spec: str | None = None

    def _init_common(
        self,
        name: str,
        labels: np.ndarray,
        class_names: Sequence[str] | None,
        groups: dict[str, np.ndarray] | None,
        root: str | None,
        spec: str | None,
    ) -> None:
        n = labels.shape[0]
        self.name = name
        self.labels = labels
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != labels.shape[1]:
                raise DataError(f"{name}: {len(class_names)} class names for {labels.shape[1]} label columns")
        self.class_names = class_names
        self.groups = {}
        for key, idx in (groups or {}).items():
            idx = np.asarray(idx, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise DataError(f"{name}: group {key!r} has indices outside 0..{n - 1}")
            self.groups[str(key)] = idx
        self.root = os.path.abspath(root) if root is not None else None
        self.spec = spec
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.labels.shape[1])

    @property
    def labelled(self) -> bool:
        """False for a collection without labels (a flat folder, a list of paths): it can be encoded, indexed
        and searched, and unsupervised and shallow methods train on it; it cannot be scored."""
        return self.num_classes > 0

    def _check_index(self, i: int) -> int:
        i = operator.index(i)
        n = len(self)
        if not 0 <= i < n:
            raise IndexError(f"{self.name}: index {i} out of range for {n} items")
        return i

    def image(self, i: int) -> np.ndarray:
        """Image i as H x W x 3 uint8 RGB."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """A human-readable name of item i: its file path, or name[i] for in-memory data."""
        return f"{self.name}[{self._check_index(i)}]"

    def item_ref(self, i: int) -> str:
        """A reference that attnhash.data.open_item_ref() can resolve in a fresh process."""
        raise NotImplementedError

    def _content_digest(self, h: "hashlib._Hash") -> None:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 hex of the item count, labels, groups and paths (files) or pixel bytes (arrays); cached."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"attnhash-source-v1 n={len(self)} labels={self.labels.shape}\n".encode())
            h.update(np.ascontiguousarray(self.labels, dtype=np.uint8).tobytes())
            for key in sorted(self.groups):
                h.update(f"\ngroup {key} {self.groups[key].size}\n".encode())
                h.update(self.groups[key].astype("<i8").tobytes())
            self._content_digest(h)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)}, classes={self.num_classes})"


class ArraySource(ImageSource):
    """In-memory uint8 images (N, H, W) or (N, H, W, 1|3) with labels (class ids (N,) or multi-hot (N, C))."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence,
        name: str = "arrays",
        class_names: Sequence[str] | None = None,
        groups: dict[str, np.ndarray] | None = None,
        root: str | None = None,
        spec: str | None = None,
    ) -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise DataError(f"{name}: images must be uint8, got dtype {images.dtype}")
        if images.ndim == 4 and images.shape[3] == 1:
            images = images[..., 0]  # keep grey images 2-D so they stay 3x smaller in memory
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
            raise DataError(f"{name}: images must have shape (N,H,W) or (N,H,W,1|3), got {images.shape}")
        n = images.shape[0]
        lab = normalize_labels(labels, n, name, len(class_names) if class_names is not None else None)
        self.images = np.ascontiguousarray(images)
        self._init_common(name, lab, class_names, groups, root, spec)

    @property
    def is_grey(self) -> bool:
        return self.images.ndim == 3

    def raw_image(self, i: int) -> np.ndarray:
        """Image i as stored: H x W (grey) or H x W x 3; a view, do not modify."""
        return self.images[self._check_index(i)]

    def image(self, i: int) -> np.ndarray:
        img = self.raw_image(i)
        if img.ndim == 2:
            return np.repeat(img[:, :, None], 3, axis=2)
        return img.copy()

    def item_ref(self, i: int) -> str:
        i = self._check_index(i)
        if self.spec is None:
            raise DataError(
                f"{self.name}: in-memory data not opened by name or path has no re-openable item reference "
                "(save it as an .npz with 'images' and 'labels' and open that file)"
            )
        return f"dataset:{self.spec}#{i}"

    def _content_digest(self, h: "hashlib._Hash") -> None:
        # Hashing the raw pixel buffer is a memory scan (~0.1 s for Fashion-MNIST), not a decode.
        h.update(f"\narrays {self.images.shape} {self.images.dtype.str}\n".encode())
        h.update(memoryview(self.images).cast("B"))


class FileSource(ImageSource):
    """Image files (absolute paths, or paths relative to ``root``) with labels (None: unlabelled); decoded
    lazily through attnhash.data.images."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: np.ndarray | Sequence | None,
        root: str | None = None,
        name: str | None = None,
        class_names: Sequence[str] | None = None,
        groups: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.paths = [str(p) for p in paths]
        if root is None and any(not os.path.isabs(p) for p in self.paths):
            raise DataError(f"{name or 'files'}: relative image paths need a root folder")
        name = name if name is not None else (root or "files")
        lab = normalize_labels(labels, len(self.paths), name, len(class_names) if class_names is not None else None)
        self._init_common(name, lab, class_names, groups, root, None)

    def path(self, i: int) -> str:
        """Absolute path of item i."""
        p = self.paths[self._check_index(i)]
        if os.path.isabs(p) or self.root is None:
            return p
        return os.path.join(self.root, p)

    def image(self, i: int) -> np.ndarray:
        return open_image(self.path(i))

    def describe(self, i: int) -> str:
        return self.path(i)

    def item_ref(self, i: int) -> str:
        return os.path.abspath(self.path(i))

    def _content_digest(self, h: "hashlib._Hash") -> None:
        # Paths as given (relative to root), so moving the whole data folder keeps the fingerprint.
        h.update(b"\npaths\n")
        h.update("\n".join(self.paths).encode("utf-8", "surrogateescape"))
