"""Torch side of the data layer: a Dataset over a source subset, and batch augmentation on uint8 tensors.

Images stay uint8 here; normalisation belongs to the network so checkpoints are self-contained.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError
from .sources import ArraySource, ImageSource

__all__ = ["ImageDataset", "augment_batch", "resize_image", "resize_batch", "resize_batch_chw"]

# Pillow's 8-bit resampling works in fixed point with this many fraction bits (libImaging/Resample.c).
_PRECISION_BITS = 32 - 8 - 2
# Above this many multiply-adds per image the dense batched resize loses to Pillow's banded C loop.
_BATCH_FLOPS_LIMIT = 2_000_000
_BATCH_ELEMENTS = 4_000_000  # float64 temporaries per chunk: 32 MB


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """Resize an H x W (grey) or H x W x 3 uint8 image to size x size, Pillow bilinear (antialiased)."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    pil = Image.fromarray(img)
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))


@functools.lru_cache(maxsize=64)
def _bilinear_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """Pillow's bilinear weights for one axis as a dense (out, in) float64 matrix, divided by 2^22.

    Same arithmetic as Pillow: the filter widens by the downscale factor (antialiasing), weights are
    normalised in double precision, then rounded to 22-bit fixed point. Dividing the integers by 2^22 is
    exact, and so are the products and sums below (they stay far under 2^53 in units of 2^-22).
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter has support 1
    mat = np.zeros((out_size, in_size), dtype=np.float64)
    one = float(1 << _PRECISION_BITS)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C's (int) cast
        xmax = min(int(center + support + 0.5), in_size)
        t = np.abs((np.arange(xmin, xmax) - center + 0.5) / filterscale)
        w = np.where(t < 1.0, 1.0 - t, 0.0)
        total = w.sum()
        if total != 0.0:
            w = w / total
        # C's (int)(x + 0.5) for x >= 0; bilinear weights are never negative.
        mat[xx, xmin:xmax] = np.trunc(w * one + 0.5)
    return torch.from_numpy(mat / one)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded: these small products lose more to thread hand-offs than they gain
    (measured 4-8x more CPU time with 2 threads on a busy 2-core machine); DataLoader workers are
    single-threaded anyway."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _round_pass(y: torch.Tensor) -> torch.Tensor:
    """Pillow's (acc + 2^21) >> 22 in units of 2^22. No clip needed: the weights are non-negative and
    sum to 1 within rounding, so results stay in 0..255 (checked against Pillow in _batched_order)."""
    return y.add_(0.5).floor_()


def _resize_chw(x: torch.Tensor, size: int, horizontal_first: bool) -> torch.Tensor:
    """(N, H, W) uint8 planes -> (N, S, S) uint8 with Pillow's two 8-bit passes, in exact float64."""
    _, h, w = x.shape
    y = x.to(torch.float64)
    kw = _bilinear_matrix(w, size).T if w != size else None  # (W, S)
    kh = _bilinear_matrix(h, size) if h != size else None  # (S, H)
    if horizontal_first:
        if kw is not None:
            y = _round_pass(y @ kw)
        if kh is not None:
            y = _round_pass(kh @ y)
    else:
        if kh is not None:
            y = _round_pass(kh @ y)
        if kw is not None:
            y = _round_pass(y @ kw)
    return y.to(torch.uint8)


@functools.lru_cache(maxsize=64)
def _batched_order(h: int, w: int, c: int, size: int) -> bool | None:
    """Which pass order reproduces this Pillow's resize for this shape (True = horizontal first), or None.

    Pillow picks the order of its two passes itself (and may change it between versions), so the batched
    path is checked once per shape against Pillow on random images and not used if neither order agrees.
    """
    rng = np.random.default_rng(12345)
    probe = rng.integers(0, 256, size=(4, h, w, c), dtype=np.uint8)
    probe[0] = 255  # extremes exercise the rounding at both ends
    probe[1] = 0
    ref = np.stack([resize_image(img[..., 0] if c == 1 else img, size) for img in probe]).reshape(4, size, size, c)
    ref_chw = torch.from_numpy(ref).permute(0, 3, 1, 2).reshape(-1, size, size)
    planes = torch.from_numpy(probe).permute(0, 3, 1, 2).reshape(-1, h, w)
    for horizontal_first in (True, False):
        with _one_thread():
            ok = torch.equal(_resize_chw(planes, size, horizontal_first), ref_chw)
        if ok:
            return horizontal_first
    return None


def resize_batch_chw(images: np.ndarray, size: int) -> torch.Tensor:
    """Resize a uint8 batch (B,H,W) or (B,H,W,3) to a channels-first uint8 tensor (B, 1|3, S, S).

    Identical to Pillow's BILINEAR resize. For small images it replaces one Pillow call per image with
    two matrix products over the whole batch (checked once per shape against Pillow, see _batched_order);
    otherwise it calls Pillow per image.
    """
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
        raise ValueError(f"resize_batch expects a uint8 (B,H,W) or (B,H,W,3) array, got {images.dtype} "
                         f"{images.shape}")
    x = images[..., None] if images.ndim == 3 else images
    b, h, w, c = x.shape
    if b == 0:
        return torch.empty((0, c, size, size), dtype=torch.uint8)
    if h == size and w == size:
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    flops = c * (h * w * size * (w != size) + size * max(h, w) * size * (h != size))
    order = _batched_order(h, w, c, size) if flops <= _BATCH_FLOPS_LIMIT else None
    if order is None:
        out = np.stack([resize_image(np.ascontiguousarray(img), size) for img in images])
        return torch.from_numpy(out.reshape(b, size, size, c)).permute(0, 3, 1, 2).contiguous()
    planes = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).reshape(b * c, h, w)
    step = max(1, _BATCH_ELEMENTS // (max(h, size) * max(w, size)))
    with _one_thread():
        out = torch.cat([_resize_chw(planes[i: i + step], size, order) for i in range(0, b * c, step)])
    return out.reshape(b, c, size, size)


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 batch (B,H,W) or (B,H,W,3) to (B,S,S) or (B,S,S,3), identical to Pillow BILINEAR."""
    out = resize_batch_chw(images, size).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(out[..., 0] if images.ndim == 3 else out)


class ImageDataset(Dataset):
    """Items ``indices`` of ``source`` as {"image": uint8 (3,S,S), "label": float32 (C,), "index": int}.

    ``index`` is the position within ``indices`` (0..len-1), so methods can address per-sample memory
    banks. ``label_columns`` keeps only those label columns (e.g. a split's ``classes``).
    ``skip_unreadable``: an image that cannot be decoded does not raise; the item gets a black image and
    "error" (the one-line reason, "" for readable items), which the consumer uses to leave it out.
    """

    def __init__(self, source: ImageSource, indices: Sequence[int] | np.ndarray | None, image_size: int,
                 label_columns: Sequence[int] | np.ndarray | None = None, skip_unreadable: bool = False) -> None:
        self.source = source
        idx = np.arange(len(source), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise DataError(f"{source.name}: indices must be one-dimensional, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(source)):
            raise DataError(f"{source.name}: indices outside 0..{len(source) - 1}")
        if int(image_size) <= 0:
            raise DataError(f"image_size must be positive, got {image_size}")
        self.indices = idx
        self.image_size = int(image_size)
        labels = source.labels[idx]
        if label_columns is not None:
            cols = np.asarray(label_columns, dtype=np.int64)
            if cols.size and (cols.min() < 0 or cols.max() >= source.num_classes):
                raise DataError(f"{source.name}: label columns outside 0..{source.num_classes - 1}")
            labels = labels[:, cols]
        self.labels = torch.from_numpy(labels.astype(np.float32))
        self.skip_unreadable = skip_unreadable
        # In-memory grey images are resized before expanding to RGB: 3x less work on Fashion-MNIST.
        self._arrays = source if isinstance(source, ArraySource) else None

    def __len__(self) -> int:
        return int(self.indices.size)

    def _position(self, i: int) -> int:
        n = self.indices.size
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} items")
        return int(i) % n

    def _decode(self, p: int) -> tuple[np.ndarray, str]:
        """(resized image, "") or, when skipping, (a black image, the reason it cannot be read)."""
        try:
            return resize_image(self.source.image(int(self.indices[p])), self.image_size), ""
        except DataError as err:
            if not self.skip_unreadable:
                raise
            return np.zeros((self.image_size, self.image_size, 3), np.uint8), str(err)

    def _images(self, positions: list[int], contiguous: bool) -> tuple[torch.Tensor, list[str]]:
        """uint8 (B, 3, S, S) for the given positions, and per item "" or why it could not be read; one
        batched resize for in-memory images."""
        s = self.image_size
        if self._arrays is not None:
            ok = [""] * len(positions)
            out = resize_batch_chw(self._arrays.images[self.indices[positions]], s)
            if out.shape[1] == 3:
                return out, ok
            # Grey, resized once. Without ``contiguous`` return an expanded view (collate's stack copies it
            # anyway); else copy with numpy, whose single-threaded copy beats torch's on a busy machine.
            if not contiguous:
                return out.expand(-1, 3, s, s), ok
            return torch.from_numpy(np.ascontiguousarray(np.broadcast_to(out.numpy(), (out.shape[0], 3, s, s)))), ok
        decoded = [self._decode(p) for p in positions]
        imgs = np.stack([img for img, _ in decoded])
        return torch.from_numpy(np.ascontiguousarray(imgs.transpose(0, 3, 1, 2))), [e for _, e in decoded]

    def _item(self, image: torch.Tensor, p: int, error: str, label: torch.Tensor) -> dict:
        item = {"image": image, "label": label, "index": p}
        if self.skip_unreadable:
            item["error"] = error
        return item

    def __getitem__(self, i: int) -> dict:
        p = self._position(i)
        images, errors = self._images([p], True)
        return self._item(images[0], p, errors[0], self.labels[p].clone())

    def get_batch(self, indices: Sequence[int]) -> dict:
        """The collated batch of these positions without a DataLoader: {"image": uint8 (B,3,S,S),
        "label": float32 (B,C), "index": int64 (B,)} (+ "error", a list, when skipping), equal to
        default_collate of the items."""
        positions = [self._position(i) for i in indices]
        images, errors = self._images(positions, True)
        batch = {"image": images, "label": self.labels[positions], "index": torch.tensor(positions, dtype=torch.int64)}
        if self.skip_unreadable:
            batch["error"] = errors
        return batch

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """Batched fetch used by torch's DataLoader: the same items as __getitem__, resized in one go."""
        positions = [self._position(i) for i in indices]
        images, errors = self._images(positions, False)
        # unbind makes all per-item views in one call; indexing item by item costs more than the resize.
        labels = self.labels[positions].unbind(0)
        return [self._item(img, p, e, lab) for img, lab, p, e in zip(images.unbind(0), labels, positions, errors)]


def augment_batch(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random horizontal flip and random crop with zero padding round(S/8) (4 px at 32), per image.

    ``images`` is a uint8 (B, 3, H, W) batch; the result has the same shape and dtype. All randomness comes
    from ``generator``, so a seeded generator gives the same augmentation.
    """
    if images.ndim != 4:
        raise ValueError(f"augment_batch expects (B, C, H, W), got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    pad = int(math.floor(min(h, w) / 8 + 0.5))
    rng_device = generator.device if generator is not None else torch.device("cpu")
    flip = torch.randint(0, 2, (b,), generator=generator, device=rng_device).bool().to(images.device)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=rng_device).to(images.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=rng_device).to(images.device)
    if b == 0:
        return images.clone()
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = oy[:, None] + ar_h[None, :]  # (B, H) rows of the padded image to take
    # Flipping after cropping reads the crop's columns right to left.
    cols = ox[:, None] + torch.where(flip[:, None], (w - 1) - ar_w[None, :], ar_w[None, :])  # (B, W)
    bi = torch.arange(b, device=images.device)[:, None, None]
    out = padded[bi, :, rows[:, :, None], cols[:, None, :]]  # advanced indices first: (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
