"""Thumbnails of indexed items, decoded once per item and cached per size, within a memory bound.

An item's image is decoded once into a "master" no larger than MAX_SIZE on its longer side (a large JPEG at
reduced scale by libjpeg itself, see attnhash.data.images.decode_image_reduced); each size asked for is made
from the master and its PNG kept too. Both caches are LRU and bounded in bytes.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from PIL import Image

from attnhash.data import open_item_ref
from attnhash.data.images import REDUCING_GAP, decode_image_reduced

MAX_SIZE = 1024  # the largest thumbnail served (the HTTP layer refuses larger sizes)


class _LRU:
    """A thread-safe LRU dict bounded by the total size (len of bytes, nbytes of arrays) of its values."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _size(value: Any) -> int:
        return value.nbytes if isinstance(value, np.ndarray) else len(value)

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        size = self._size(value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= self._size(old)
            self._items[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.bytes -= self._size(dropped)

    def __len__(self) -> int:
        return len(self._items)


class ThumbnailCache:
    """PNG thumbnails by (item reference, size); `admit(pixels)` guards each decode (the pixel budget)."""

    def __init__(self, max_pixels: int, admit: Callable[[int], AbstractContextManager] | None = None,
                 master_bytes: int = 64 * 2**20, png_bytes: int = 32 * 2**20) -> None:
        self.max_pixels = max_pixels
        self.admit = admit
        self.masters = _LRU(master_bytes)
        self.pngs = _LRU(png_bytes)
        self.decodes = 0  # how many times an original image was decoded (each item once while cached)

    def _master(self, ref: str) -> np.ndarray:
        master = self.masters.get(ref)
        if master is not None:
            return master
        self.decodes += 1
        if os.path.isfile(ref):
            # decoded for a resize to MAX_SIZE from at most REDUCING_GAP x that, then brought down to MAX_SIZE
            box = (MAX_SIZE // REDUCING_GAP + 1,) * 2
            pixels = decode_image_reduced(ref, ref, box, keep_aspect=True, max_pixels=self.max_pixels,
                                          admit=self.admit)
        else:
            pixels = open_item_ref(ref)  # dataset:<spec>#<i>: small images from a dataset
        img = Image.fromarray(pixels)
        if max(img.size) > MAX_SIZE:
            img.thumbnail((MAX_SIZE, MAX_SIZE), Image.LANCZOS)
            pixels = np.asarray(img)
        self.masters.put(ref, pixels)
        return pixels

    def get(self, ref: str, size: int) -> bytes:
        """PNG bytes of the image behind `ref`, shrunk to fit size x size (never enlarged)."""
        key = (ref, int(size))
        png = self.pngs.get(key)
        if png is None:
            img = Image.fromarray(self._master(ref))
            img.thumbnail((size, size), Image.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="PNG", optimize=False)
            png = buf.getvalue()
            self.pngs.put(key, png)
        return png
