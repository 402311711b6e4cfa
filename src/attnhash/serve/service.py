"""The search service: an index file, the model that built it, and the locks around them.

Usable without HTTP (tests, notebooks); the HTTP layer (attnhash.serve.http) only translates requests and
errors. Errors are attnhash errors: NotFoundError, InvalidRequestError, UnavailableError, and the DataErrors
of image decoding.

Concurrency: searches share a readers-writer lock; adds and removes take it exclusively and rewrite the index
file atomically before they return, all or nothing (a failed save leaves the index in memory as it was). The
network runs one forward pass at a time (torch already uses every core for one batch); images that arrive
while it is busy are encoded together in the next pass (MicroBatcher).

One writer per file: a service that accepts writes holds the index's writer lock (attnhash.index.lock) from
before it reads the file until `close()`, so `attnhash index add` cannot change the file under it (and
fails, naming the service). A read-only service (no token, or --no-persist) takes no lock.

Resources: see attnhash.serve.limits.ServiceLimits (decoded pixels per request and in all, labels, class
names, the uploads folder, results per query).
"""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from attnhash.codes import pack_codes, sign
from attnhash.errors import (
    AttnHashError,
    DataError,
    InvalidRequestError,
    NotFoundError,
    StorageError,
    UnavailableError,
)
from attnhash.index import MAX_ID
from attnhash.index.lock import IndexLock
from attnhash.retrieval import Retriever
from attnhash.retrieval.rerank import DEFAULT as RERANK_DEFAULT
from attnhash.serve.batching import MicroBatcher
from attnhash.serve.limits import PixelBudget, RequestPixels, ServiceLimits, UploadQuota
from attnhash.serve.locks import RWLock
from attnhash.serve.thumbnails import ThumbnailCache
from attnhash.serve.uploads import ALLOWED_FORMATS, MAX_PIXELS, decode_upload


class WritesDisabledError(AttnHashError):
    """The service was started without writes (no token)."""


class SearchService:
    """The index, the encoder and the locks behind the HTTP handlers (usable without HTTP too)."""

    def __init__(self, index_path: str, run_dir: str | None = None, *, encoder: Any = None, backend: str = "faiss",
                 persist: bool = True, upload_dir: str | None = None, device: str = "auto", max_k: int | None = None,
                 load_model: bool = True, radius_tables: bool = False, writable: bool = True,
                 limits: ServiceLimits | None = None, lock_wait: float = 0.0, index_options: dict | None = None,
                 rerank: bool | None = None, max_batch: int = 256, engine: str = "torch") -> None:
        self.index_path = str(index_path)
        self.limits = replace(limits or ServiceLimits(), **({} if max_k is None else {"max_k": max_k}))
        self.max_k = self.limits.max_k
        self.writable = writable
        self.persist = persist
        self.rerank = RERANK_DEFAULT if rerank is None else bool(rerank)
        self.max_batch = max_batch
        # the writer's lock first, the file after: what was read before the lock may already be stale. A Milvus
        # collection (index_path is then its database) keeps its own consistency: no file lock.
        self.file_lock = IndexLock(self.index_path, f"attnhash serve {self.index_path}")
        self.needs_file_lock = writable and persist and backend != "milvus"
        if self.needs_file_lock:
            self.file_lock.acquire(lock_wait)
        try:
            self._open(run_dir, encoder, backend, upload_dir, device, load_model, radius_tables, index_options,
                       engine)
        except BaseException:
            self.file_lock.release()
            raise

    def _open(self, run_dir, encoder, backend, upload_dir, device, load_model, radius_tables,
              index_options, engine) -> None:
        # index_options: backend options (milvus: collection, token)
        self.retriever = Retriever.open(self.index_path, backend=backend, load_model=False, **(index_options or {}))
        self.index = self.retriever.index
        self.lock = RWLock()
        self.batcher: MicroBatcher | None = None
        self.upload_dir = os.path.abspath(upload_dir or f"{self.index_path}.uploads")
        self.uploads = UploadQuota(self.upload_dir, int(self.limits.uploads_max_mb * 2**20),
                                   self.limits.uploads_max_files)
        self.pixels = PixelBudget(self.limits.global_pixels, self.limits.wait_s)
        self.thumbnails = ThumbnailCache(MAX_PIXELS, admit=lambda n: self.pixels.hold(n, "thumbnail"))
        self.encoder_error: str | None = None
        if encoder is None and load_model:
            try:
                encoder = Retriever.load_encoder(self.index, run_dir, device=device, engine=engine)
            except AttnHashError as err:
                if run_dir:  # asked for explicitly: fail at start-up
                    raise
                self.encoder_error = str(err)
        elif encoder is None:
            self.encoder_error = "the service was started without a model"
        if encoder is not None:
            self.retriever = Retriever(self.index, encoder)
            # one pass gives z (PyTorch and ONNX encoders alike): the codes are sign(z), z ranks ties
            self.batcher = MicroBatcher(lambda images: encoder.encode_images_with_outputs(images)[1])
        self._building = False
        if radius_tables and (hasattr(self.index, "build_layer") or hasattr(self.index, "build_hash")):
            # the radius tables take a while at 1e7 items (a minute here): build them in the background
            # under the read lock (searches go on, adds and removes wait)
            threading.Thread(target=self._build_radius_tables, name="radius-tables", daemon=True).start()
        self.started = time.time()
        self.counters = {"searches": 0, "added": 0, "removed": 0}
        self._count_lock = threading.Lock()

    @property
    def encoder(self) -> Any:
        return self.retriever.encoder

    def close(self) -> None:
        """Release the index file to other writers (the service keeps answering from memory)."""
        self.file_lock.release()

    def _build_radius_tables(self) -> None:
        self._building = True
        try:
            with self.lock.read():
                if hasattr(self.index, "build_layer"):
                    self.index.build_layer()  # the distinct-code layer of the compiled search
                else:
                    self.index.build_hash()
        finally:
            self._building = False

    def _count(self, key: str, n: int = 1) -> None:
        with self._count_lock:
            self.counters[key] += n

    # ---- queries ------------------------------------------------------------------------------------
    def encode(self, images: list[np.ndarray]) -> np.ndarray:
        """Codes of decoded images through the shared model (batched across concurrent requests)."""
        return self.encode_for_search(images)[0]

    def encode_for_search(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Codes of decoded images and their real-valued outputs z."""
        if self.batcher is None:
            raise UnavailableError(f"search by image is unavailable: {self.encoder_error}")
        z = self.batcher(images)
        return pack_codes(sign(z)), z

    def _decode(self, data: bytes, name: str, allowance: RequestPixels) -> np.ndarray:
        size = int(getattr(self.encoder, "image_size", None) or 224)
        return decode_upload(data, name, size, admit=allowance)

    def _request_pixels(self) -> RequestPixels:
        return RequestPixels(self.pixels, self.limits.request_pixels)

    def check_query(self, k: int | None, radius: int | None) -> tuple[int | None, int | None]:
        if k is not None and radius is not None:
            raise InvalidRequestError("give k or radius, not both")
        if radius is None:
            k = 10 if k is None else k
            if not 1 <= k <= self.max_k:
                raise InvalidRequestError(f"k must be between 1 and {self.max_k}, got {k}")
        elif not 0 <= radius <= self.index.bits:
            raise InvalidRequestError(f"radius must be between 0 and {self.index.bits}, got {radius}")
        return k, radius

    def answer(self, codes: np.ndarray, k: int | None, radius: int | None,
               real: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Per query code {"results": hits (at most max_k), "total": how many matched, "truncated": whether hits
        were cut}; ties ranked by score when the real-valued outputs are given."""
        with self.lock.read():
            answers = self.retriever.search_answers(codes, k=k, radius=radius, max_results=self.max_k,
                                                    query_real=real)
        for answer in answers:
            for h in answer["results"]:
                h["thumbnail"] = f"/api/items/{h['id']}/image"
        self._count("searches", len(answers))
        return answers

    def results(self, codes: np.ndarray, k: int | None, radius: int | None,
                real: np.ndarray | None = None) -> list[list[dict[str, Any]]]:
        """The hits of each query code (at most max_k; `answer` also says how many matched)."""
        return [a["results"] for a in self.answer(codes, k, radius, real)]

    def search_upload(self, data: bytes, name: str, k: int | None, radius: int | None,
                      rerank: bool | None = None) -> dict[str, Any]:
        """The query (its code, k or radius) and its hits, for an uploaded image."""
        k, radius = self.check_query(k, radius)
        if self.batcher is None:  # before decoding: nothing to spend on a search that cannot run
            raise UnavailableError(f"search by image is unavailable: {self.encoder_error}")
        t0 = time.perf_counter()
        code, real = self.encode_for_search([self._decode(data, name, self._request_pixels())])
        rerank = self.rerank if rerank is None else rerank
        return self._answer({"filename": name}, code, k, radius, t0, real if rerank else None)

    def search_batch(self, uploads: list[tuple[str, bytes]], ids: list[int], k: int | None, radius: int | None,
                     rerank: bool | None = None) -> dict[str, Any]:
        """Many queries in one request (uploaded images, then items by id), answered by one index search per
        kind: {"results": [{"query", "results", "total", "truncated"}, ...], "took_ms"}."""
        k, radius = self.check_query(k, radius)
        if not uploads and not ids:
            raise InvalidRequestError("give one or more images, or ids")
        if len(uploads) + len(ids) > self.max_batch:
            raise InvalidRequestError(f"at most {self.max_batch} queries per batch, got {len(uploads) + len(ids)}")
        bad = next((i for i in ids if not 0 <= i <= MAX_ID), None)
        if bad is not None:
            raise InvalidRequestError(f"item ids run from 0 to 2^63-1, got {bad}")
        t0 = time.perf_counter()
        rerank = self.rerank if rerank is None else rerank
        answers: list[dict[str, Any]] = []
        if uploads:
            allowance = self._request_pixels()  # one request: its images share one pixel allowance
            codes, real = self.encode_for_search([self._decode(data, name, allowance) for name, data in uploads])
            rows = self.answer(codes, k, radius, real if rerank else None)
            answers += [{"query": {"filename": name, "code": c.tobytes().hex(), "k": k, "radius": radius}, **a}
                        for (name, _), c, a in zip(uploads, codes, rows)]
        if ids:
            with self.lock.read():
                try:
                    codes = self.index.reconstruct(ids)
                except KeyError as err:
                    raise NotFoundError(str(err.args[0])) from None
            rows = self.answer(codes, k, radius)
            answers += [{"query": {"id": i, "code": c.tobytes().hex(), "k": k, "radius": radius}, **a}
                        for i, c, a in zip(ids, codes, rows)]
        return {"results": answers, "took_ms": round(1000 * (time.perf_counter() - t0), 2)}

    def search_item(self, item_id: int, k: int | None, radius: int | None) -> dict[str, Any]:
        """The query (its code, k or radius) and its hits, for an item already in the index."""
        k, radius = self.check_query(k, radius)
        t0 = time.perf_counter()
        with self.lock.read():
            try:
                code = self.index.reconstruct([item_id])
            except KeyError:
                raise NotFoundError(f"no item with id {item_id}") from None
        return self._answer({"id": item_id}, code, k, radius, t0)

    def _answer(self, query: dict, code: np.ndarray, k: int | None, radius: int | None, t0: float,
                real: np.ndarray | None = None) -> dict[str, Any]:
        answer = self.answer(code, k, radius, real)[0]
        return {"query": {**query, "code": code[0].tobytes().hex(), "k": k, "radius": radius}, **answer,
                "took_ms": round(1000 * (time.perf_counter() - t0), 2)}

    def item(self, item_id: int) -> dict[str, Any]:
        with self.lock.read():
            try:
                md = self.index.metadata([item_id])[0]
            except KeyError:
                raise NotFoundError(f"no item with id {item_id}") from None
            names = self.retriever.label_names(md.get("labels", []))
        return {"id": item_id, "path": md.get("path"), "labels": md.get("labels", []), "label_names": names,
                "thumbnail": f"/api/items/{item_id}/image"}

    def thumbnail(self, item_id: int, size: int) -> bytes:
        ref = self.item(item_id)["path"]
        if not ref:
            raise NotFoundError(f"item {item_id} has no image reference")
        try:
            return self.thumbnails.get(ref, size)
        except UnavailableError:
            raise
        except AttnHashError as err:
            raise NotFoundError(f"item {item_id}: {err}") from None

    # ---- changes ------------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if not self.writable:
            raise WritesDisabledError("writes are disabled: start the service with a token to add or remove items")

    def save(self) -> None:
        """Make the change durable (inside the caller's transaction: a failure undoes the change in memory)."""
        if getattr(self.index, "persistent", False):  # a Milvus collection: durable already, keep its metadata
            self.index.save_info()
        elif self.persist:
            self.index.save(self.index_path)

    def _label_lists(self, labels: list[str], n: int) -> list[list[str]]:
        """Per image, its label names/numbers, checked against the limits before anything is decoded."""
        if len(labels) not in (0, 1, n):
            raise InvalidRequestError(f"give one labels field for all images or one per image; got {len(labels)} "
                                      f"for {n} images")
        lim = self.limits
        out = []
        for text in (labels * n if len(labels) == 1 else labels or [""] * n):
            names = [t.strip() for t in text.split(",") if t.strip()]
            if len(names) > lim.max_labels_per_item:
                raise InvalidRequestError(f"{len(names)} labels for one image, at most {lim.max_labels_per_item}")
            for name in names:
                if len(name) > lim.max_label_chars:
                    raise InvalidRequestError(f"label {name[:20]!r}... is {len(name)} characters long, at most "
                                              f"{lim.max_label_chars}")
                if name.isdigit() and int(name) >= lim.max_classes:
                    raise InvalidRequestError(f"class number {name} is out of range: at most {lim.max_classes} "
                                              "classes")
            out.append(names)
        return out

    def add(self, uploads: list[tuple[str, bytes]], labels: list[str]) -> dict[str, Any]:
        """Add uploaded images (name, bytes) with one comma-separated label list for all, or one per image.
        The images are kept in the upload folder; on any failure nothing is added and nothing kept."""
        self._check_writable()
        if not uploads:
            raise InvalidRequestError("no images to add")
        if len(uploads) > self.limits.max_images_per_add:
            raise InvalidRequestError(f"{len(uploads)} images in one request, at most "
                                      f"{self.limits.max_images_per_add}")
        per_image = self._label_lists(labels, len(uploads))
        if self.batcher is None:
            raise UnavailableError(f"adding images is unavailable: {self.encoder_error}")
        allowance = self._request_pixels()
        codes = self.encode([self._decode(data, name, allowance) for name, data in uploads])
        # decoded above, so the header reads: the format names the kept file
        exts = [Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS).format.lower() for _, data in uploads]
        nbytes = sum(len(data) for _, data in uploads)
        self.uploads.reserve(nbytes, len(uploads))
        saved = []
        try:
            os.makedirs(self.upload_dir, exist_ok=True)
            for (_, data), ext in zip(uploads, exts):
                path = os.path.join(self.upload_dir, f"{uuid.uuid4().hex}.{ext}")
                saved.append(path)
                with open(path, "wb") as out:
                    out.write(data)
            with self.lock.write(), self.retriever.transaction():
                try:
                    metas = [{"path": p, "labels": self.retriever.resolve_labels(names, self.limits.max_classes)}
                             for p, names in zip(saved, per_image)]
                except DataError as err:
                    raise InvalidRequestError(str(err)) from None
                ids = self.index.add(codes, metadata=metas)
                self.save()
                count = len(self.index)
        except BaseException as err:
            for p in saved:
                try:
                    os.unlink(p)
                except OSError:
                    pass
            self.uploads.release(nbytes, len(uploads))
            if isinstance(err, OSError):
                raise StorageError(f"cannot keep the uploaded images in {self.upload_dir}: "
                                   f"{err.strerror or err}; nothing was added") from None
            if isinstance(err, StorageError):
                raise StorageError(f"{err}; nothing was added") from None
            raise
        self._count("added", len(ids))
        return {"ids": ids.tolist(), "count": count}

    def remove(self, item_id: int) -> dict[str, Any]:
        self._check_writable()
        with self.lock.write():
            try:
                path = self.index.metadata([item_id])[0].get("path")
            except KeyError:
                raise NotFoundError(f"no item with id {item_id}") from None
            try:
                with self.retriever.transaction():
                    self.index.remove([item_id])
                    self.save()
            except StorageError as err:
                raise StorageError(f"{err}; item {item_id} was not removed") from None
            count = len(self.index)
        # an image uploaded through the API belongs to the service: delete it with its item
        if path and os.path.dirname(os.path.abspath(path)) == self.upload_dir:
            try:
                size = os.path.getsize(path)
                os.unlink(path)
                self.uploads.release(size, 1)
            except OSError:
                pass
        self._count("removed")
        return {"removed": item_id, "count": count}

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
            "writable": self.writable and (self.file_lock.held or not self.needs_file_lock),
            "limits": self.limits.as_dict(),
            "load": {"pixels_in_use": self.pixels.in_use, "pixels_peak": self.pixels.peak,
                     "pixel_waits_refused": self.pixels.refused, "uploads_bytes": self.uploads.bytes,
                     "uploads_files": self.uploads.files, "thumbnail_decodes": self.thumbnails.decodes},
            "max_batch": self.max_batch,
            "rerank": self.rerank,
            "search": self.index.search_stats() if hasattr(self.index, "search_stats") else None,
            "radius_tables": "building" if self._building else (
                "built" if getattr(self.index, "hash_tables", None)
                or (getattr(self.index, "search_stats", None) and self.index.search_stats().get("layer") == "built")
                else "not built"),
            "uptime_s": round(time.time() - self.started, 1),
            "counters": dict(self.counters),
        }
