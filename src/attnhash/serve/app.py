"""The search service: a FastAPI app over one index file and the model that built it, plus the web page.

Endpoints (JSON unless said otherwise; errors are {"detail": "<one line>"} with a 4xx/5xx status):
    GET    /api/health                      liveness and item count
    GET    /api/stats                       index facts (count, bits, backend, model fingerprint, classes, limits)
    POST   /api/search                      multipart: image (file), k (default 10) or radius -> results
    GET    /api/search/by-id/{id}?k=|radius= the same with the code of an item already in the index
    POST   /api/items                       multipart: images (files), labels (one comma list for all or per image)
    GET    /api/items/{id}                  one item's metadata
    DELETE /api/items/{id}                  remove an item
    GET    /api/items/{id}/image?size=160   the item's image as a PNG thumbnail (for the results grid)
    GET    /                                the web page (static/index.html, app.js, style.css)

Concurrency: handlers are synchronous and run in the server's thread pool. Searches share a readers-writer
lock; adds and removes take it exclusively and rewrite the index file atomically before they return. The
network runs one forward pass at a time (torch already uses every core for one batch); images that arrive
while it is busy are encoded together in the next pass (MicroBatcher).
Uploads: the body is refused with 413 beyond `max_upload_mb` (checked on Content-Length, and counted for
chunked bodies); a file Pillow cannot verify as PNG/JPEG/GIF/BMP/WebP/TIFF is refused with 415.
"""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError

from attnhash.errors import AttnHashError, DataError
from attnhash.index import Index, open_index
from attnhash.index import pipeline
from attnhash.serve.locks import RWLock

__all__ = ["create_app", "SearchService", "MicroBatcher", "BodyLimitMiddleware", "decode_upload", "ALLOWED_FORMATS"]

STATIC_DIR = Path(__file__).with_name("static")
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
MAX_PIXELS = 40_000_000  # a 40-megapixel query is plenty; larger ones are refused before decoding
_PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def decode_upload(data: bytes, name: str = "upload") -> np.ndarray:
    """Uploaded bytes -> HxWx3 uint8, or HTTPException 415 (not an image) / 413 (too many pixels)."""
    if not data:
        raise HTTPException(415, f"{name}: empty file, expected an image")
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
            im.verify()  # structure and checksums, without decoding the pixels
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
            if im.width * im.height > MAX_PIXELS:
                raise HTTPException(413, f"{name}: {im.width}x{im.height} pixels, more than {MAX_PIXELS:,}")
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except HTTPException:
        raise
    except _PIL_ERRORS as err:
        if isinstance(err, UnidentifiedImageError):
            reason = "unrecognised file format"
        else:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HTTPException(415, f"{name}: not an image in {', '.join(ALLOWED_FORMATS)} ({reason})") from None


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413 before the app parses them (pure ASGI)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send) -> None:
        body = (f'{{"detail":"request body larger than the upload limit of '
                f'{self.max_bytes / 2**20:g} MB"}}').encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = True
            if too_big:
                return await self._reject(send)
            return await self.app(scope, receive, send)
        # no Content-Length (chunked): read up to the limit, then replay what was read to the app
        chunks, total = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                break
            chunks.append(msg.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                return await self._reject(send)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class _Pending:
    __slots__ = ("images", "codes", "error", "done")

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images
        self.codes: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class MicroBatcher:
    """Runs the encoder one batch at a time, batching the requests that queue up meanwhile.

    No extra thread: a request that finds the model idle encodes everything queued (up to `max_batch`
    images) in one forward pass and hands each requester its rows; the others wait. Under load the
    forward passes grow instead of queueing one image each, which is what lets 16 clients share one model.
    """

    def __init__(self, encode: Any, max_batch: int = 32) -> None:
        self._encode = encode
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._busy = False
        self.batches = 0

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        me = _Pending(images)
        with self._cond:
            self._queue.append(me)
        while True:
            with self._cond:
                while not me.done and self._busy:
                    self._cond.wait()
                if me.done:
                    return self._result(me)
                # the model is idle and this request is still queued: run a batch from the queue's head
                self._busy = True
                batch, count = [], 0
                while self._queue and (not batch or count + len(self._queue[0].images) <= self.max_batch):
                    batch.append(self._queue.pop(0))
                    count += len(batch[-1].images)
            try:
                codes = self._encode([im for p in batch for im in p.images])
                start = 0
                for p in batch:
                    p.codes = codes[start : start + len(p.images)]
                    start += len(p.images)
            except BaseException as err:  # every request of this batch gets the error
                for p in batch:
                    p.error = err
            finally:
                with self._cond:
                    for p in batch:
                        p.done = True
                    self._busy = False
                    self.batches += 1
                    self._cond.notify_all()

    @staticmethod
    def _result(p: _Pending) -> np.ndarray:
        if p.error is not None:
            raise p.error
        assert p.codes is not None
        return p.codes


class SearchService:
    """The index, the encoder and the locks behind the HTTP handlers (usable without HTTP too)."""

    def __init__(self, index_path: str, run_dir: str | None = None, *, encoder: Any = None, backend: str = "faiss",
                 persist: bool = True, upload_dir: str | None = None, device: str = "auto", max_k: int = 1000,
                 load_model: bool = True, radius_tables: bool = False) -> None:
        self.index_path = str(index_path)
        self.index: Index = open_index(self.index_path, backend=backend)
        self.lock = RWLock()
        self.batcher: MicroBatcher | None = None
        self.persist = persist
        self.max_k = max_k
        self.upload_dir = upload_dir or f"{self.index_path}.uploads"
        self.encoder = encoder
        self.encoder_error: str | None = None
        if encoder is not None:
            pipeline.check_encoder(self.index, encoder)
        elif load_model:
            try:
                self.encoder = pipeline.encoder_for_index(self.index, run_dir, device=device)
            except AttnHashError as err:
                if run_dir:  # asked for explicitly: fail at start-up
                    raise
                self.encoder_error = str(err)
        else:
            self.encoder_error = "the service was started without a model"
        if self.encoder is not None:
            self.batcher = MicroBatcher(self.encoder.encode_images)
        self._building = False
        if radius_tables and hasattr(self.index, "build_hash"):
            # the radius tables take a while at 1e7 items (a minute here): build them in the background
            # under the read lock (searches go on, adds and removes wait)
            threading.Thread(target=self._build_radius_tables, name="radius-tables", daemon=True).start()
        self.started = time.time()
        self.counters = {"searches": 0, "added": 0, "removed": 0}
        self._count_lock = threading.Lock()

    def _build_radius_tables(self) -> None:
        self._building = True
        try:
            with self.lock.read():
                self.index.build_hash()
        finally:
            self._building = False

    # ---- helpers --------------------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._count_lock:
            self.counters[key] += n

    def encode(self, images: list[np.ndarray]) -> np.ndarray:
        """Codes of decoded images through the shared model (batched across concurrent requests)."""
        if self.encoder is None:
            raise HTTPException(503, f"search by image is unavailable: {self.encoder_error}")
        return self.batcher(images)

    def check_query(self, k: int | None, radius: int | None) -> tuple[int | None, int | None]:
        if k is not None and radius is not None:
            raise HTTPException(422, "give k or radius, not both")
        if radius is None:
            k = 10 if k is None else k
            if not 1 <= k <= self.max_k:
                raise HTTPException(422, f"k must be between 1 and {self.max_k}, got {k}")
        elif not 0 <= radius <= self.index.bits:
            raise HTTPException(422, f"radius must be between 0 and {self.index.bits}, got {radius}")
        return k, radius

    def results(self, codes: np.ndarray, k: int | None, radius: int | None) -> list[dict[str, Any]]:
        with self.lock.read():
            hits = pipeline.search_codes(self.index, codes, k=k, radius=radius, max_results=self.max_k)[0]
        for h in hits:
            h["thumbnail"] = f"/api/items/{h['id']}/image"
        self._count("searches")
        return hits

    def save(self) -> None:
        if self.persist:
            self.index.save(self.index_path)

    def stats(self) -> dict[str, Any]:
        with self.lock.read():
            s = self.index.stats()
        enc = self.encoder
        return {
            **s,
            "index_file": self.index_path,
            "file_bytes": os.path.getsize(self.index_path) if os.path.exists(self.index_path) else None,
            "class_names": self.index.info.get("class_names") or [],
            "model": {"loaded": enc is not None, "run_dir": getattr(enc, "run_dir", None),
                      "fingerprint": getattr(enc, "fingerprint", None), "error": self.encoder_error,
                      "forward_passes": self.batcher.batches if self.batcher else 0},
            "max_k": self.max_k,
            "radius_tables": "building" if self._building else (
                "built" if getattr(self.index, "hash_tables", None) else "not built"),
            "uptime_s": round(time.time() - self.started, 1),
            "counters": dict(self.counters),
        }


def create_app(index_path: str, run_dir: str | None = None, *, max_upload_mb: float = 10.0, encoder: Any = None,
               backend: str = "faiss", persist: bool = True, upload_dir: str | None = None, device: str = "auto",
               max_k: int = 1000, load_model: bool = True, radius_tables: bool = False) -> FastAPI:
    """The HTTP API and web page over `index_path` (see the module docstring).

    `encoder` injects a ready encoder (anything with bits, fingerprint, run_dir and encode_images); otherwise
    the run folder `run_dir`, or the one recorded in the index, is loaded. Without a usable model the service
    still answers searches by id, and image searches get 503 with the reason. `radius_tables` builds the
    FAISS radius-search hash tables at start-up (in the background) instead of on the first radius query.
    """
    svc = SearchService(index_path, run_dir, encoder=encoder, backend=backend, persist=persist,
                        upload_dir=upload_dir, device=device, max_k=max_k, load_model=load_model,
                        radius_tables=radius_tables)
    app = FastAPI(title="attnhash search", version=__import__("attnhash").__version__,
                  description="Hamming-distance image retrieval over an attnhash index")
    app.state.service = svc
    max_bytes = int(max_upload_mb * 2**20)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_bytes)

    @app.exception_handler(AttnHashError)
    def _attnhash_error(request, err: AttnHashError):
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "count": len(svc.index), "model_loaded": svc.encoder is not None}

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        return {**svc.stats(), "max_upload_mb": max_upload_mb}

    @app.post("/api/search")
    def search(image: UploadFile = File(..., description="query image"),
               k: int | None = Form(None), radius: int | None = Form(None)) -> dict[str, Any]:
        k, radius = svc.check_query(k, radius)
        t0 = time.perf_counter()
        img = decode_upload(image.file.read(), image.filename or "image")
        code = svc.encode([img])
        hits = svc.results(code, k, radius)
        return {"query": {"filename": image.filename, "code": code[0].tobytes().hex(), "k": k, "radius": radius},
                "results": hits, "took_ms": round(1000 * (time.perf_counter() - t0), 2)}

    @app.get("/api/search/by-id/{item_id}")
    def search_by_id(item_id: int, k: int | None = Query(None), radius: int | None = Query(None)) -> dict[str, Any]:
        k, radius = svc.check_query(k, radius)
        t0 = time.perf_counter()
        with svc.lock.read():
            try:
                code = svc.index.reconstruct([item_id])
            except KeyError:
                raise HTTPException(404, f"no item with id {item_id}") from None
        hits = svc.results(code, k, radius)
        return {"query": {"id": item_id, "code": code[0].tobytes().hex(), "k": k, "radius": radius},
                "results": hits, "took_ms": round(1000 * (time.perf_counter() - t0), 2)}

    @app.post("/api/items", status_code=201)
    def add_items(images: list[UploadFile] = File(..., description="one or more images"),
                  labels: list[str] = Form([], description="comma-separated label names, one for all or one per image")
                  ) -> dict[str, Any]:
        if len(labels) not in (0, 1, len(images)):
            raise HTTPException(422, f"give one labels field for all images or one per image; got {len(labels)} "
                                     f"for {len(images)} images")
        decoded, raw = [], []
        for f in images:
            data = f.file.read()
            decoded.append(decode_upload(data, f.filename or "image"))
            raw.append(data)
        codes = svc.encode(decoded)
        os.makedirs(svc.upload_dir, exist_ok=True)
        saved = []
        try:
            for data in raw:
                fmt = Image.open(io.BytesIO(data)).format.lower()
                path = os.path.abspath(os.path.join(svc.upload_dir, f"{uuid.uuid4().hex}.{fmt}"))
                with open(path, "wb") as out:
                    out.write(data)
                saved.append(path)
            per_image = labels * len(images) if len(labels) == 1 else labels or [""] * len(images)
            with svc.lock.write():
                metas = [{"path": p, "labels": pipeline.resolve_labels(svc.index, lab.split(","))}
                         for p, lab in zip(saved, per_image)]
                ids = svc.index.add(codes, metadata=metas)
                svc.save()
        except BaseException:
            for p in saved:
                try:
                    os.unlink(p)
                except OSError:
                    pass
            raise
        svc._count("added", len(ids))
        return {"ids": ids.tolist(), "count": len(svc.index)}

    @app.get("/api/items/{item_id}")
    def get_item(item_id: int) -> dict[str, Any]:
        with svc.lock.read():
            try:
                md = svc.index.metadata([item_id])[0]
            except KeyError:
                raise HTTPException(404, f"no item with id {item_id}") from None
            names = pipeline.label_names(svc.index, md.get("labels", []))
        return {"id": item_id, "path": md.get("path"), "labels": md.get("labels", []), "label_names": names,
                "thumbnail": f"/api/items/{item_id}/image"}

    @app.delete("/api/items/{item_id}")
    def delete_item(item_id: int) -> dict[str, Any]:
        with svc.lock.write():
            try:
                path = svc.index.metadata([item_id])[0].get("path")
            except KeyError:
                raise HTTPException(404, f"no item with id {item_id}") from None
            svc.index.remove([item_id])
            svc.save()
            count = len(svc.index)
        # an image uploaded through the API belongs to the service: delete it with its item
        if path and os.path.dirname(path) == os.path.abspath(svc.upload_dir):
            try:
                os.unlink(path)
            except OSError:
                pass
        svc._count("removed")
        return {"removed": item_id, "count": count}

    @app.get("/api/items/{item_id}/image")
    def item_image(item_id: int, size: int = Query(160, ge=16, le=1024)) -> Response:
        with svc.lock.read():
            try:
                ref = svc.index.metadata([item_id])[0].get("path")
            except KeyError:
                raise HTTPException(404, f"no item with id {item_id}") from None
        if not ref:
            raise HTTPException(404, f"item {item_id} has no image reference")
        try:
            png = _thumbnail(ref, size)
        except DataError as err:
            raise HTTPException(404, f"item {item_id}: {err}") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


@lru_cache(maxsize=2048)
def _thumbnail(ref: str, size: int) -> bytes:
    """PNG bytes of the image behind an item reference, shrunk to fit size x size (never enlarged)."""
    img = Image.fromarray(pipeline.load_query_image(ref))
    img.thumbnail((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
