"""Fuzzing the upload decoder (hypothesis): any bytes, and valid images of every accepted format with bytes
edited, cut or appended, either decode to an H x W x 3 uint8 array within the pixel limit or are refused with
one DataError (NotAnImageError / ImageTooLargeError) naming the upload; nothing else, and never more pixels
decoded than admitted."""

from __future__ import annotations

import io
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from attnhash.errors import DataError
from attnhash.serve.uploads import ALLOWED_FORMATS, MAX_PIXELS, decode_upload

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_SAVE = {"PNG": {}, "JPEG": {"quality": 80}, "GIF": {}, "BMP": {}, "WEBP": {"quality": 80},
         "TIFF": {"compression": "tiff_deflate"}}
_MODES = {"PNG": ("L", "RGB", "RGBA", "P", "I;16", "1"), "JPEG": ("L", "RGB", "CMYK"), "GIF": ("P", "L"),
          "BMP": ("RGB", "L", "1"), "WEBP": ("RGB", "RGBA"), "TIFF": ("RGB", "L", "RGBA", "CMYK", "I;16")}


@pytest.fixture(scope="module")
def seeds() -> dict[str, list[bytes]]:
    """Small real-looking images (gradients and noise) in each accepted format and several modes."""
    rng = np.random.default_rng(0)
    out: dict[str, list[bytes]] = {}
    for fmt in ALLOWED_FORMATS:
        out[fmt] = []
        for mode in _MODES[fmt]:
            h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
            base = (np.add.outer(np.arange(h), np.arange(w)) * 7 % 256).astype(np.uint8)
            img = Image.fromarray(np.stack([base, base[::-1] if h > 1 else base, rng.integers(0, 256, (h, w),
                                                                                              dtype=np.uint8)], -1))
            img = img.convert(mode) if mode != "I;16" else Image.fromarray(base.astype(np.uint16) * 200)
            buf = io.BytesIO()
            img.save(buf, format=fmt, **_SAVE[fmt])
            out[fmt].append(buf.getvalue())
    return out


class Admitted:
    """Records what the decoder asks to hold (the budget's view)."""

    def __init__(self) -> None:
        self.pixels: list[int] = []

    @contextmanager
    def __call__(self, n: int):
        self.pixels.append(n)
        yield


def check(data: bytes, size: int = 32) -> None:
    admitted = Admitted()
    try:
        out = decode_upload(data, "fuzz.bin", size, admit=admitted)
    except DataError as err:
        text = str(err)
        assert text.startswith("fuzz.bin: ") and "\n" not in text
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[0] >= 1 and out.shape[1] >= 1
    assert len(admitted.pixels) == 1 and admitted.pixels[0] <= MAX_PIXELS
    assert out.shape[0] * out.shape[1] <= admitted.pixels[0]  # never more than was admitted


@SETTINGS
@given(data=st.binary(max_size=3000))
def test_any_bytes(data):
    check(data)


@SETTINGS
@given(fmt=st.sampled_from(ALLOWED_FORMATS), which=st.integers(0, 10),
       edits=st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, 400), tail=st.binary(max_size=64), size=st.sampled_from([8, 32, 224]))
def test_edited_images_of_every_format(seeds, fmt, which, edits, cut, tail, size):
    data = bytearray(seeds[fmt][which % len(seeds[fmt])])
    for pos, value in edits:
        data[pos % len(data)] = value
    data = bytes(data[: max(1, len(data) - cut)]) + tail
    check(data, size)


def test_the_seeds_decode(seeds):
    for fmt, images in seeds.items():
        for data in images:
            out = decode_upload(data, "seed", 32)
            assert out.ndim == 3 and out.shape[2] == 3, fmt
