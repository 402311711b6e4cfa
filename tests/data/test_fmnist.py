"""The real Fashion-MNIST from the Debian package dataset-fashion-mnist (skipped when it is not installed)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from attnhash.data import FMNIST_DIR, ImageDataset, load_fashion_mnist, load_or_create_split, open_item_ref

FOLDER = os.environ.get("ATTNHASH_FMNIST_DIR") or FMNIST_DIR
pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FOLDER, "train-images-idx3-ubyte.gz")),
    reason=f"Fashion-MNIST not installed at {FOLDER} (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def fmnist():
    return load_fashion_mnist()


def test_fashion_mnist_contents(fmnist):
    assert len(fmnist) == 70_000
    assert fmnist.images.shape == (70_000, 28, 28)
    assert fmnist.labels.shape == (70_000, 10)
    assert fmnist.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                  "Sneaker", "Bag", "Ankle boot"]
    np.testing.assert_array_equal(fmnist.labels.sum(0), [7000] * 10)
    np.testing.assert_array_equal(fmnist.labels.sum(1), 1)
    np.testing.assert_array_equal(fmnist.groups["train"], np.arange(60_000))
    np.testing.assert_array_equal(fmnist.groups["test"], np.arange(60_000, 70_000))
    # the first training images are an ankle boot and two T-shirts (the files' well-known order)
    assert fmnist.labels[:3].argmax(1).tolist() == [9, 0, 0]
    assert fmnist.item_ref(123) == "dataset:fmnist#123"
    np.testing.assert_array_equal(open_item_ref("dataset:fmnist#123"), fmnist.image(123))  # opens it by name
    ref = load_fashion_mnist(FOLDER).item_ref(5)  # an explicit folder travels with the reference
    assert ref == f"dataset:fmnist@{os.path.abspath(FOLDER)}#5"
    np.testing.assert_array_equal(open_item_ref(ref), fmnist.image(5))


def test_fashion_mnist_protocol_split(fmnist, tmp_path):
    split, path = load_or_create_split(fmnist, "fmnist", seed=0, path=tmp_path / "fmnist-split.json")
    assert split.sizes() == {"query": 1_000, "train": 5_000, "database": 64_000}
    ids = fmnist.labels.argmax(1)
    np.testing.assert_array_equal(np.bincount(ids[split.query], minlength=10), [100] * 10)
    np.testing.assert_array_equal(np.bincount(ids[split.train], minlength=10), [500] * 10)
    np.testing.assert_array_equal(np.bincount(ids[split.database], minlength=10), [6_400] * 10)
    assert not np.intersect1d(split.query, split.database).size
    assert not np.intersect1d(split.train, split.database).size
    again, _ = load_or_create_split(fmnist, "fmnist", seed=0, path=path)
    np.testing.assert_array_equal(again.database, split.database)
    batch = ImageDataset(fmnist, split.train, 64).__getitems__(list(range(8)))
    assert batch[0]["image"].shape == (3, 64, 64)
