"""What a request may consume: decoded pixels, a place among the requests being served, room in the uploads
folder. When the service is saturated it says so at once (503 with Retry-After) instead of slowing everyone.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from attnhash.data.images import ImageTooLargeError
from attnhash.errors import StorageError, UnavailableError


def return_large_frees_to_the_os(threshold: int = 8 << 20) -> bool:
    """Make freed blocks of `threshold` bytes and more go back to the OS at once (glibc; elsewhere a no-op,
    False). glibc raises its mmap threshold to the size of each large block freed (up to 32 MB), after which
    such blocks come from per-thread arenas that keep them: with images decoded in Pillow's 16 MB blocks on
    up to 40 request threads, that held ~500 MB after three bursts of 36-megapixel uploads. 8 MB: image
    blocks are mapped on their own, smaller allocations (the network's activations) stay in the arenas.
    Process-wide: the serve command calls it, a library user may."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


@dataclass
class ServiceLimits:
    """Every resource one request, or all of them together, may take (the defaults keep a service under
    2 GB with 16 concurrent 36-megapixel uploads; see benchmarks/load_test.py)."""

    max_k: int = 1000  # largest k, and the most results a radius answer lists (it says how many matched)
    max_upload_mb: float = 10.0  # request body
    max_images_per_add: int = 64
    max_labels_per_item: int = 32
    max_label_chars: int = 100
    max_classes: int = 1000  # class names the index may hold; a label naming a new class past it is refused
    uploads_max_mb: float = 1024.0  # the uploads folder
    uploads_max_files: int = 100_000
    request_pixels: int = 50_000_000  # decoded pixels one request may use (all its images)
    global_pixels: int = 100_000_000  # decoded pixels all requests together may hold at once
    max_active: int = 16  # API requests served at once
    max_waiting: int = 64  # more may wait for a place ...
    wait_s: float = 10.0  # ... this long (and for pixels), then 503 with Retry-After

    def as_dict(self) -> dict:
        return asdict(self)


class SaturatedError(UnavailableError):
    """The service is at one of its limits right now; the same request may succeed after `retry_after` s."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PixelBudget:
    """Decoded pixels held at once by all requests together (each costs 1 to 4 bytes while decoded).

    `hold(n)` waits up to `wait_s` for n pixels to be free, then raises SaturatedError; a request that could
    never fit (n > total) is refused at once (ImageTooLargeError). Waiters are served in arrival order, so a
    large image is not starved by a stream of small ones.
    """

    def __init__(self, total: int, wait_s: float = 10.0) -> None:
        self.total = int(total)
        self.wait_s = wait_s
        self.in_use = 0
        self.peak = 0
        self.refused = 0
        self._cond = threading.Condition()
        self._queue: list[object] = []

    @contextmanager
    def hold(self, pixels: int, what: str = "image") -> Iterator[None]:
        pixels = int(pixels)
        if pixels > self.total:
            raise ImageTooLargeError(f"{what}: {pixels:,} pixels to decode, more than the service's budget of "
                                     f"{self.total:,}")
        me = object()
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            self._queue.append(me)
            try:
                while self._queue[0] is not me or self.in_use + pixels > self.total:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.refused += 1
                        raise SaturatedError(f"{what}: the service is decoding {self.in_use:,} pixels for other "
                                             f"requests (budget {self.total:,}); try again shortly")
                    self._cond.wait(left)
            finally:
                self._queue.remove(me)
                self._cond.notify_all()
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()


class RequestPixels:
    """A request's own decoded-pixel allowance, drawn image by image, each image also held in the global
    budget while it is decoded (the callable `admit` of attnhash.data.images.decode_image_reduced)."""

    def __init__(self, budget: PixelBudget, allowance: int) -> None:
        self.budget = budget
        self.allowance = int(allowance)
        self.used = 0

    @contextmanager
    def __call__(self, pixels: int) -> Iterator[None]:
        self.used += int(pixels)
        if self.used > self.allowance:
            raise ImageTooLargeError(f"the images of this request decode to {self.used:,} pixels, more than the "
                                     f"{self.allowance:,} one request may use")
        with self.budget.hold(pixels, "upload"):
            yield


class UploadQuota:
    """The uploads folder's size and file count, kept under their limits: `reserve(nbytes, nfiles)` before
    writing, `release(...)` after deleting. The usage is counted once at start-up, then kept in memory."""

    def __init__(self, folder: str, max_bytes: int, max_files: int) -> None:
        self.folder = folder
        self.max_bytes = int(max_bytes)
        self.max_files = int(max_files)
        self.bytes, self.files = 0, 0
        if os.path.isdir(folder):
            for entry in os.scandir(folder):
                if entry.is_file(follow_symlinks=False):
                    self.bytes += entry.stat(follow_symlinks=False).st_size
                    self.files += 1
        self._lock = threading.Lock()

    def reserve(self, nbytes: int, nfiles: int) -> None:
        with self._lock:
            if self.bytes + nbytes > self.max_bytes or self.files + nfiles > self.max_files:
                raise StorageError(f"the uploads folder {self.folder} is full ({self.files:,} files, "
                                   f"{self.bytes / 2**20:,.1f} MB of at most {self.max_files:,} files, "
                                   f"{self.max_bytes / 2**20:,.0f} MB); remove items to make room")
            self.bytes += nbytes
            self.files += nfiles

    def release(self, nbytes: int, nfiles: int) -> None:
        with self._lock:
            self.bytes = max(0, self.bytes - nbytes)
            self.files = max(0, self.files - nfiles)


class ConcurrencyLimitMiddleware:
    """At most `max_active` API requests are served at once; up to `max_waiting` more wait (at most `wait_s`)
    for a place; beyond that, or after waiting, 503 with Retry-After. The health check, the page and its
    static files are never held back. Pure ASGI: a refused request's body is never read.
    """

    def __init__(self, app, max_active: int = 16, max_waiting: int = 64, wait_s: float = 10.0,
                 exempt: tuple[str, ...] = ("/api/health",), retry_after: int = 1) -> None:
        self.app = app
        self.max_active = max_active
        self.max_waiting = max_waiting
        self.wait_s = wait_s
        self.exempt = exempt
        self.retry_after = retry_after
        self.active = 0
        self.waiting = 0
        self.peak_active = 0
        self.refused = 0
        self._free: asyncio.Condition | None = None  # made in the server's event loop, on first use

    async def _reject(self, send, why: str) -> None:
        self.refused += 1
        body = f'{{"detail":"the service is saturated ({why}); retry after {self.retry_after} s"}}'.encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(self.retry_after).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/") or path in self.exempt:
            return await self.app(scope, receive, send)
        if self._free is None:
            self._free = asyncio.Condition()
        free = self._free
        if self.active >= self.max_active:  # one event loop: these counters need no lock
            if self.waiting >= self.max_waiting:
                return await self._reject(send, f"{self.active} requests in progress, {self.waiting} waiting")
            self.waiting += 1
            try:
                async with free:
                    await asyncio.wait_for(free.wait_for(lambda: self.active < self.max_active), self.wait_s)
            except asyncio.TimeoutError:
                return await self._reject(send, f"no place freed within {self.wait_s:g} s")
            finally:
                self.waiting -= 1
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            return await self.app(scope, receive, send)
        finally:
            self.active -= 1
            async with free:
                free.notify_all()
