"""Data layer: image sources, dataset readers, protocol splits, and the torch Dataset.

    source = open_dataset("fmnist")                       # or a list file, class folder, CIFAR tarball, .npz
    split, path = load_or_create_split(source, "fmnist")  # seeded, written once beside the data or in the cache
    train = ImageDataset(source, split.train, 64, split.classes)
"""

from .formats import (
    DATASET_NAMES,
    FMNIST_CLASSES,
    FMNIST_DIR,
    IMAGE_EXTENSIONS,
    from_arrays,
    load_fashion_mnist,
    open_dataset,
    read_cifar,
    read_hashnet_lists,
    read_idx,
    read_idx_folder,
    read_image_folder,
    read_list_file,
    read_npz,
)
from .loader import ImageDataset, augment_batch, resize_batch, resize_batch_chw, resize_image
from .protocols import PROTOCOLS, Protocol, Split, load_or_create_split, load_split, make_split, save_split
from .sources import ArraySource, FileSource, ImageSource, decode_image, open_item_ref

__all__ = [
    "ImageSource", "ArraySource", "FileSource", "decode_image", "open_item_ref",
    "DATASET_NAMES", "FMNIST_CLASSES", "FMNIST_DIR", "IMAGE_EXTENSIONS",
    "read_list_file", "read_image_folder", "read_cifar", "read_idx", "read_idx_folder", "load_fashion_mnist",
    "from_arrays", "read_npz", "read_hashnet_lists", "open_dataset",
    "Split", "Protocol", "PROTOCOLS", "make_split", "load_or_create_split", "load_split", "save_split",
    "ImageDataset", "augment_batch", "resize_image", "resize_batch", "resize_batch_chw",
]
