"""Uploaded images: which formats and sizes the service accepts, decoded through attnhash.data.images."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np

from attnhash.data.images import decode_image_reduced

ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
MAX_PIXELS = 40_000_000  # a 40-megapixel query is plenty; larger ones are refused before decoding
# Uploads up to this size are decoded whole, as the database images were; larger ones at reduced size (a
# 12-megapixel photo would otherwise cost ~150 MB while decoded, a 36-megapixel grey PNG ~340 MB).
REDUCE_ABOVE = 4_000_000


def decode_upload(data: bytes, name: str = "upload", size: int = 224,
                  admit: Callable[[int], AbstractContextManager] | None = None) -> np.ndarray:
    """Uploaded bytes -> HxWx3 uint8, read for a network that takes `size` x `size` pixels: NotAnImageError
    (not an image of an allowed format) or ImageTooLargeError (too many pixels), both naming the upload.
    `admit(pixels)` is held while the pixels are decoded (see attnhash.serve.limits.RequestPixels)."""
    return decode_image_reduced(data, name, (size, size), formats=ALLOWED_FORMATS, max_pixels=MAX_PIXELS,
                                reduce_above=REDUCE_ABOVE, admit=admit)
