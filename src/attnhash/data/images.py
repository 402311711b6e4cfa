"""The one way attnhash turns an image file, upload or object into pixels: H x W x 3 uint8 RGB, as a person
sees the image.

Training, encoding, the index, the service and `explain` all decode through here, so a query image is read
exactly as the database images were:
- the EXIF orientation is applied (a phone photo stored sideways is coded upright, as every viewer shows it);
- every Pillow mode becomes 8-bit RGB by its meaning, not by truncation: 16-bit and 32-bit integer images are
  scaled from their range (a 16-bit PNG is not clipped to white), float images from [0, 1], and images with
  transparency (LA, RGBA, PA, P with a transparent colour) are composited over white, as a viewer shows them.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

__all__ = ["open_image", "decode_image_bytes", "to_rgb_array", "PIL_ERRORS"]

# Raised by Pillow for unreadable, truncated or hostile files; SyntaxError comes from some plugin parsers.
PIL_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Pixel values of a 16/32-bit integer or float image -> uint8: I;16 from 0..65535, I (32-bit, whose
    range the mode does not say) from 0..255 or else 0..65535 as its values show, F from [0, 1]."""
    values = values.astype(np.float64)
    if mode.startswith("I;16"):
        values = values / 257.0
    elif mode == "F":
        hi = float(np.nanmax(values)) if values.size else 0.0
        if hi <= 1.0:  # the usual float convention
            values = values * 255.0
        elif hi > 255.0:  # some other range: stretch what is there
            lo = float(np.nanmin(values))
            values = (values - lo) * (255.0 / max(hi - lo, 1e-12))
    else:
        hi = float(values.max()) if values.size else 0.0
        if hi > 255.0:
            # 16-bit data (the usual case for I;16 and 16-bit PNGs read as I): 65535 -> 255
            values = values / 257.0 if hi <= 65535.0 else (values - values.min()) * (255.0 / (hi - values.min()))
    return np.clip(np.nan_to_num(values) + 0.5, 0, 255).astype(np.uint8)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """A decoded Pillow image -> H x W x 3 uint8 RGB, upright and converted by its meaning (module docstring)."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        grey = _to_8bit(np.asarray(img), mode)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info or mode == "PA":
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("LA", "RGBA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def open_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one image file; any failure is a one-line DataError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"{os.fspath(path)}: no such image file") from None
    except IsADirectoryError:
        raise DataError(f"{os.fspath(path)}: cannot read image (a folder, not a file)") from None
    except PIL_ERRORS as exc:
        raise DataError(f"{os.fspath(path)}: cannot read image ({_reason(exc)})") from None


def decode_image_bytes(data: bytes, name: str = "image", formats: tuple[str, ...] | None = None,
                       max_pixels: int | None = None) -> np.ndarray:
    """Decode an image held in memory (an upload); DataError naming `name` when it is not a readable image.

    `formats` restricts the accepted Pillow formats; `max_pixels` refuses larger images before their pixels
    are decoded (ImageTooLargeError).
    """
    if not data:
        raise DataError(f"{name}: empty file, expected an image")
    try:
        with Image.open(io.BytesIO(data), formats=formats) as img:
            img.verify()  # structure and checksums, without decoding the pixels
        with Image.open(io.BytesIO(data), formats=formats) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageTooLargeError(f"{name}: {img.width}x{img.height} pixels, more than {max_pixels:,}")
            img.load()
            return pil_to_rgb(img)
    except ImageTooLargeError:
        raise
    except PIL_ERRORS as exc:
        reason = "unrecognised file format" if isinstance(exc, UnidentifiedImageError) else _reason(exc)
        accepted = f" in {', '.join(formats)}" if formats else ""
        raise NotAnImageError(f"{name}: not an image{accepted} ({reason})") from None


def to_rgb_array(img, what: str = "image") -> np.ndarray:
    """A Pillow image or an H x W (x 1|3|4) uint8 array -> H x W x 3 uint8 (alpha dropped, grey repeated)."""
    if isinstance(img, Image.Image):
        return pil_to_rgb(img)
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.dtype != np.uint8:
        raise DataError(f"{what}: expected an RGB/grey uint8 image, got shape {arr.shape} {arr.dtype}")
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return arr[..., :3]


class NotAnImageError(DataError):
    """Bytes that are not an image of an accepted format."""


class ImageTooLargeError(DataError):
    """An image with more pixels than allowed."""
