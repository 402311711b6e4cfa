"""Opening a dataset by name or by path, and resolving item references back to images.

Named datasets are a registry (`DATASETS`): each name maps to an opener `open(root) -> ImageSource`.
Any other spec is a path whose format is told from its name or contents (list file, CIFAR tarball or
folder, HashNet list folder, idx folder, class folders, .npz).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from ..errors import DataError
from ..registry import Registry
from .formats import (
    is_cifar_folder,
    is_hashnet_folder,
    is_idx_folder,
    load_fashion_mnist,
    read_cifar,
    read_hashnet_lists,
    read_idx_folder,
    read_image_folder,
    read_list_file,
    read_npz,
)
from .images import open_image
from .sources import ImageSource

__all__ = ["DATASETS", "open_dataset", "open_item_ref"]

DATASETS: Registry = Registry("dataset", error=DataError)


def _needs_root(name: str, root: str | None, what: str) -> str:
    if root is None:
        raise DataError(f"dataset {name!r} needs a root: {what}")
    return root


def _cifar(name: str, what: str):
    def open_cifar(root: str | None) -> ImageSource:
        root = _needs_root(name, root, what)
        src = read_cifar(root)
        if src.name != name:
            raise DataError(f"{root}: holds {src.name}, not {name}")
        src.spec = f"{name}@{os.path.abspath(root)}"
        return src

    return open_cifar


def _nuswide(root: str | None) -> ImageSource:
    root = _needs_root("nuswide", root, "the NUS-WIDE list file (`path 0 1 0 ...` per line)")
    if os.path.isdir(root) and is_hashnet_folder(root):
        return read_hashnet_lists(root)
    return read_list_file(root)


def _imagenet100(root: str | None) -> ImageSource:
    return read_hashnet_lists(_needs_root("imagenet100", root,
                                          "the folder with HashNet's train.txt, test.txt and database.txt"))


DATASETS.register("fmnist", load_fashion_mnist)
DATASETS.register("cifar10", _cifar("cifar10", "the cifar-10-python.tar.gz tarball or its cifar-10-batches-py folder"))
DATASETS.register("cifar100", _cifar("cifar100", "the cifar-100-python.tar.gz tarball or its cifar-100-python folder"))
DATASETS.register("nuswide", _nuswide)
DATASETS.register("imagenet100", _imagenet100)


def open_dataset(spec: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageSource:
    """Open a dataset by name (fmnist, cifar10, cifar100, nuswide, imagenet100; ``root`` = where it lives)
    or by path: a `.txt`/`.list` list file (``root`` = image root), a CIFAR tarball or batches folder, a
    HashNet list folder, an MNIST-layout idx folder, a folder of class folders, or an `.npz`."""
    spec = os.fspath(spec)
    root = os.fspath(root) if root is not None else None
    if spec in DATASETS:
        return DATASETS.get(spec)(root)
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
        low = path.lower()
        if low.endswith((".txt", ".list", ".lst")):
            return read_list_file(path, root=root)
        if low.endswith((".tar.gz", ".tgz", ".tar")):
            return read_cifar(path)
        if low.endswith(".npz"):
            return read_npz(path)
        if "-ubyte" in low:
            raise DataError(f"{path}: an idx file needs its partner; open the folder holding the "
                            "train-/t10k- idx files, or call read_idx(images, labels)")
        raise DataError(f"{path}: cannot tell the dataset format from the name (expected .txt/.list list file, "
                        "CIFAR .tar.gz, or .npz)")
    if os.path.isdir(path):
        if is_cifar_folder(path):
            return read_cifar(path)
        if is_hashnet_folder(path):
            return read_hashnet_lists(path, root=root)
        if is_idx_folder(path):
            return read_idx_folder(path)
        return read_image_folder(path)
    raise DataError(f"unknown dataset {spec!r}: not a known name ({', '.join(DATASETS.names())}) "
                    "nor an existing file or folder")


@functools.lru_cache(maxsize=4)
def _open_spec(spec: str) -> ImageSource:
    name, sep, root = spec.partition("@")
    if sep and name in DATASETS:
        return open_dataset(name, root=root)
    return open_dataset(spec)


def open_item_ref(ref: str) -> np.ndarray:
    """Resolve an ImageSource.item_ref() string to the image (H x W x 3 uint8): a file path or
    ``dataset:<spec>#<i>``."""
    if ref.startswith("dataset:") and not os.path.exists(ref):
        spec, sep, idx = ref[len("dataset:"):].rpartition("#")
        if not sep or not spec or not idx.isdigit():
            raise DataError(f"{ref}: bad item reference, expected dataset:<spec>#<index>")
        source = _open_spec(spec)
        i = int(idx)
        if i >= len(source):
            raise DataError(f"{ref}: index {i} out of range, {source.name} has {len(source)} items")
        return source.image(i)
    return open_image(ref)
