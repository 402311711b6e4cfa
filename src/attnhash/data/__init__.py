"""Data layer: image sources, dataset readers, protocol splits, image decoding and the torch Dataset.

    source = open_dataset("fmnist")                       # or a list file, class folder, CIFAR tarball, .npz
    split, path = load_or_create_split(source, "fmnist")  # seeded, written once beside the data or in the cache
    train = ImageDataset(source, split.train, 64, split.classes)
    data = prepare_data(cfg.data)                          # source + split + kept label columns of a run
"""

from .datasets import DATASETS, open_dataset, open_item_ref
from .formats import (
    FMNIST_CLASSES,
    FMNIST_DIR,
    IMAGE_EXTENSIONS,
    from_arrays,
    load_fashion_mnist,
    read_cifar,
    read_hashnet_lists,
    read_idx,
    read_idx_folder,
    read_image_folder,
    read_list_file,
    read_npz,
)
from .images import decode_image_bytes, open_image, to_rgb_array
from .loader import ImageDataset, augment_batch, resize_batch, resize_batch_chw, resize_image
from .prepared import RunData, prepare_data
from .protocols import PROTOCOLS, Protocol, Split, load_or_create_split, load_split, make_split, save_split
from .skipped import Skipped, report_path
from .sources import ArraySource, FileSource, ImageSource

__all__ = [
    "ImageSource", "ArraySource", "FileSource", "open_image", "decode_image_bytes", "to_rgb_array",
    "open_item_ref", "DATASETS", "FMNIST_CLASSES", "FMNIST_DIR", "IMAGE_EXTENSIONS",
    "read_list_file", "read_image_folder", "read_cifar", "read_idx", "read_idx_folder", "load_fashion_mnist",
    "from_arrays", "read_npz", "read_hashnet_lists", "open_dataset",
    "Split", "Protocol", "PROTOCOLS", "make_split", "load_or_create_split", "load_split", "save_split",
    "ImageDataset", "augment_batch", "resize_image", "resize_batch", "resize_batch_chw",
    "RunData", "prepare_data", "Skipped", "report_path",
]
