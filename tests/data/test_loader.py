"""Torch side: ImageDataset items and batches, the Pillow-exact batched resize, batch augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from attnhash.data import ImageDataset, augment_batch, from_arrays, read_list_file, resize_batch
from attnhash.errors import DataError


def pillow_resize(img: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("shape", [(28, 28), (32, 32, 3), (13, 29), (40, 17, 3), (64, 64), (5, 5, 3)])
@pytest.mark.parametrize("size", [8, 28, 32, 45, 64])
def test_resize_batch_matches_pillow(shape, size):
    rng = np.random.default_rng(hash((shape, size)) % 2**32)
    batch = rng.integers(0, 256, size=(5,) + shape, dtype=np.uint8)
    batch[0] = 255
    batch[1, ::2] = 0  # hard edges
    expected = np.stack([pillow_resize(img, size) for img in batch])
    np.testing.assert_array_equal(resize_batch(batch, size), expected)


def test_image_dataset_grey_arrays():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    labels = np.zeros((10, 4), np.uint8)
    labels[np.arange(10), np.arange(10) % 4] = 1
    labels[3, 0] = 1
    src = from_arrays(imgs, labels)
    ds = ImageDataset(src, [7, 3, 5], 64, label_columns=[0, 3])
    assert len(ds) == 3
    item = ds[1]
    assert set(item) == {"image", "label", "index"}
    assert item["index"] == 1
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 64, 64)
    assert item["image"].is_contiguous()
    ref = pillow_resize(imgs[3], 64)
    for ch in range(3):
        np.testing.assert_array_equal(item["image"][ch].numpy(), ref)
    assert item["label"].dtype == torch.float32
    assert torch.equal(item["label"], torch.tensor([1.0, 1.0]))  # columns 0 and 3 of item 3
    assert ds[-1]["index"] == 2
    with pytest.raises(IndexError):
        ds[3]
    # the batched fetch gives the same items
    batch = ds.__getitems__([2, 0, 1])
    for got, pos in zip(batch, [2, 0, 1]):
        assert got["index"] == pos
        assert torch.equal(got["image"], ds[pos]["image"])
        assert torch.equal(got["label"], ds[pos]["label"])


def test_image_dataset_rgb_arrays_and_loader():
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(9, 32, 32, 3), dtype=np.uint8)
    ds = ImageDataset(from_arrays(imgs, np.arange(9) % 3), None, 24)
    loader = DataLoader(ds, batch_size=4, shuffle=False)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [4, 4, 1]
    b = batches[1]
    assert b["image"].shape == (4, 3, 24, 24) and b["image"].dtype == torch.uint8
    assert b["label"].shape == (4, 3) and b["label"].dtype == torch.float32
    assert b["index"].tolist() == [4, 5, 6, 7]
    np.testing.assert_array_equal(b["image"][2].permute(1, 2, 0).numpy(), pillow_resize(imgs[6], 24))
    direct = ds.get_batch([4, 5, 6, 7])  # the same batch without a DataLoader
    assert set(direct) == {"image", "label", "index"}
    for key in direct:
        assert torch.equal(direct[key], b[key]), key
    same = ImageDataset(from_arrays(imgs, np.arange(9) % 3), None, 32)[0]["image"]  # no resize needed
    np.testing.assert_array_equal(same.permute(1, 2, 0).numpy(), imgs[0])


def test_image_dataset_files(tmp_path):
    rng = np.random.default_rng(2)
    pix = [rng.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8) for i in range(3)]
    for i, p in enumerate(pix):
        Image.fromarray(p).save(tmp_path / f"{i}.png")
    (tmp_path / "l.txt").write_text("0.png 1 0\n1.png 0 1\n2.png 1 1\n")
    ds = ImageDataset(read_list_file(tmp_path / "l.txt"), np.array([2, 0]), 16)
    item = ds[0]
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), pillow_resize(pix[2], 16))
    assert torch.equal(item["label"], torch.tensor([1.0, 1.0]))
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 16, 16)
    assert torch.equal(batch["image"][1], ds[1]["image"])


def test_image_dataset_bad_arguments():
    src = from_arrays(np.zeros((4, 3, 3), np.uint8), [0, 1, 0, 1])
    with pytest.raises(DataError, match="indices outside 0..3"):
        ImageDataset(src, [0, 4], 8)
    with pytest.raises(DataError, match="label columns outside 0..1"):
        ImageDataset(src, None, 8, label_columns=[2])
    with pytest.raises(DataError, match="image_size must be positive"):
        ImageDataset(src, None, 0)


def _crops(img: torch.Tensor, pad: int):
    """Every (flip, dy, dx) crop of one zero-padded image."""
    _, h, w = img.shape
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    for flip in (False, True):
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                crop = padded[:, dy:dy + h, dx:dx + w]
                yield crop.flip(-1) if flip else crop


@pytest.mark.parametrize("size,pad", [(32, 4), (16, 2), (64, 8), (20, 3)])
def test_augment_batch_is_flip_and_padded_crop(size, pad):
    rng = np.random.default_rng(size)
    # 1..255 so the zero padding is recognisable
    x = torch.from_numpy(rng.integers(1, 256, size=(6, 3, size, size), dtype=np.uint8))
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(x.shape[0]):
        assert any(torch.equal(out[i], c) for c in _crops(x[i], pad)), f"image {i} is not a flip/crop"
    assert (out == 0).any()  # some shifts pulled in padding


def test_augment_batch_reproducible():
    x = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    c = augment_batch(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert augment_batch(x[:0], torch.Generator()).shape == (0, 3, 32, 32)
