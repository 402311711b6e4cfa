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
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

__all__ = ["open_image", "decode_image_bytes", "decode_image_reduced", "to_rgb_array", "PIL_ERRORS",
           "REDUCING_GAP"]

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


# modes Image.reduce takes whose colours mean the same after pil_to_rgb (reducing RGBA premultiplies alpha)
_REDUCIBLE = ("L", "I", "F", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
REDUCING_GAP = 3  # decode/shrink to at least 3x the size asked: the final resize then looks like one from full size


def decode_image_reduced(source: bytes | str | os.PathLike, name: str, size: tuple[int, int], *,
                         keep_aspect: bool = False, formats: tuple[str, ...] | None = None,
                         max_pixels: int | None = None, reduce_above: int = 0,
                         admit: Callable[[int], AbstractContextManager] | None = None) -> np.ndarray:
    """Decode an image (bytes or a file) for a later resize to `size` (w, h), reading no more pixels than that
    needs: a JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (Pillow's draft mode), any image is
    then shrunk by whole factors (box filter) while it keeps REDUCING_GAP x `size`, and only then converted to
    RGB (a 36-megapixel grey PNG costs its 36 MB, not the ~340 MB of a full-size RGB copy and array).

    `keep_aspect`: the later resize fits the image in the `size` box (a thumbnail), so both sides shrink by
    one factor; otherwise each side is shrunk for its own target (the network squashes images to a square).
    Images of at most `reduce_above` pixels are decoded whole, exactly as `decode_image_bytes` does (a
    reduced decode differs by about 0.2 (PNG) to 0.7 (JPEG) grey levels in 255 after the final resize).
    `max_pixels` refuses larger images from their header (ImageTooLargeError); `admit(pixels)` is entered
    with the number of pixels about to be decoded (after the JPEG scaling) and held while they are in memory:
    a budget can wait there, or refuse. Returns H x W x 3 uint8; a file that is not a readable image of
    `formats` is a NotAnImageError naming `name`.
    """
    from attnhash.errors import AttnHashError

    what = source if isinstance(source, bytes) else None
    if what is not None and not what:
        raise DataError(f"{name}: empty file, expected an image")
    tw, th = max(1, int(size[0])), max(1, int(size[1]))

    def opened() -> Image.Image:
        return Image.open(io.BytesIO(what) if what is not None else source, formats=formats)

    try:
        with opened() as img:
            img.verify()  # structure and checksums, without decoding the pixels
        with opened() as img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLargeError(f"{name}: {w}x{h} pixels, more than {max_pixels:,}")
            if keep_aspect:
                scale = min(tw / w, th / h)
                want = (max(1, int(w * scale * REDUCING_GAP)), max(1, int(h * scale * REDUCING_GAP)))
            else:
                want = (tw * REDUCING_GAP, th * REDUCING_GAP)
            if w * h <= reduce_above:
                want = (w, h)
            img.draft(None, want)  # JPEG only: decode at the smallest 1/2^k scale still >= want; others: no-op
            with admit(img.width * img.height) if admit is not None else nullcontext():
                img.load()
                fx, fy = max(1, img.width // want[0]), max(1, img.height // want[1])
                if keep_aspect:
                    fx = fy = min(fx, fy)
                if fx == 1 and fy == 1:
                    return pil_to_rgb(img)
                if img.mode not in _REDUCIBLE:  # palette, 1-bit, 16-bit or alpha: the mode pil_to_rgb goes through
                    img = img.convert("L" if img.mode == "1" else "I" if img.mode.startswith("I;16") else "RGB")
                return pil_to_rgb(img.reduce((fx, fy)))
    except AttnHashError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked on opening
        raise ImageTooLargeError(f"{name}: {_reason(exc)}") from None
    except FileNotFoundError:
        raise DataError(f"{name}: no such image file") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's parsers raise many types on hostile input
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
