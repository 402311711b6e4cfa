"""Uploaded images: which formats and sizes the service accepts, decoded through attnhash.data.images."""

from __future__ import annotations

import numpy as np

from attnhash.data import decode_image_bytes

ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
MAX_PIXELS = 40_000_000  # a 40-megapixel query is plenty; larger ones are refused before decoding


def decode_upload(data: bytes, name: str = "upload") -> np.ndarray:
    """Uploaded bytes -> HxWx3 uint8; NotAnImageError (not an image of an allowed format) or
    ImageTooLargeError (too many pixels), both naming the upload."""
    return decode_image_bytes(data, name, formats=ALLOWED_FORMATS, max_pixels=MAX_PIXELS)
