"""The search service: an index file, the model that built it, and the locks around them.

Usable without HTTP (tests, notebooks); the HTTP layer (attnhash.serve.http) only translates requests and
errors. Errors are attnhash errors: NotFoundError, InvalidRequestError, UnavailableError, and the DataErrors
of image decoding.

Concurrency: searches share a readers-writer lock; adds and removes take it exclusively and rewrite the index
file atomically before they return. The network runs one forward pass at a time (torch already uses every
core for one batch); images that arrive while it is busy are encoded together in the next pass (MicroBatcher).
"""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from attnhash.codes import pack_codes, sign
from attnhash.data import open_item_ref
from attnhash.errors import AttnHashError, InvalidRequestError, NotFoundError, UnavailableError
from attnhash.retrieval import Retriever
from attnhash.retrieval.rerank import DEFAULT as RERANK_DEFAULT
from attnhash.serve.batching import MicroBatcher
from attnhash.serve.locks import RWLock
from attnhash.serve.uploads import decode_upload


class SearchService:
    """The index, the encoder and the locks behind the HTTP handlers (usable without HTTP too)."""

    def __init__(self, index_path: str, run_dir: str | None = None, *, encoder: Any = None, backend: str = "faiss",
                 persist: bool = True, upload_dir: str | None = None, device: str = "auto", max_k: int = 1000,
                 load_model: bool = True, radius_tables: bool = False, index_options: dict | None = None,
                 rerank: bool | None = None, max_batch: int = 256) -> None:
        self.index_path = str(index_path)
        # index_options: backend options (milvus: collection, token); index_path is then the Milvus database
        self.retriever = Retriever.open(self.index_path, backend=backend, load_model=False, **(index_options or {}))
        self.rerank = RERANK_DEFAULT if rerank is None else bool(rerank)
        self.max_batch = max_batch
        self._outputs = False  # whether the encoder gives real-valued outputs (for ranking ties by score)
        self.index = self.retriever.index
        self.lock = RWLock()
        self.batcher: MicroBatcher | None = None
        self.persist = persist
        self.max_k = max_k
        self.upload_dir = upload_dir or f"{self.index_path}.uploads"
        self.encoder_error: str | None = None
        if encoder is None and load_model:
            try:
                encoder = Retriever.load_encoder(self.index, run_dir, device=device)
            except AttnHashError as err:
                if run_dir:  # asked for explicitly: fail at start-up
                    raise
                self.encoder_error = str(err)
        elif encoder is None:
            self.encoder_error = "the service was started without a model"
        if encoder is not None:
            self.retriever = Retriever(self.index, encoder)
            if hasattr(encoder, "encode_images_with_outputs"):  # one pass gives z; the codes are sign(z)
                self._outputs = True
                self.batcher = MicroBatcher(lambda images: encoder.encode_images_with_outputs(images)[1])
            else:
                self.batcher = MicroBatcher(encoder.encode_images)
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

    def encode_for_search(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Codes of decoded images and, when the encoder gives them, their real-valued outputs z."""
        if self.batcher is None:
            raise UnavailableError(f"search by image is unavailable: {self.encoder_error}")
        if not self._outputs:
            return self.batcher(images), None
        z = self.batcher(images)
        return pack_codes(sign(z)), z

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

    def results(self, codes: np.ndarray, k: int | None, radius: int | None,
                real: np.ndarray | None = None) -> list[list[dict[str, Any]]]:
        """Hits of each query code (ties ranked by score when the real-valued outputs are given)."""
        with self.lock.read():
            rows = self.retriever.search_codes(codes, k=k, radius=radius, max_results=self.max_k, query_real=real)
        for hits in rows:
            for h in hits:
                h["thumbnail"] = f"/api/items/{h['id']}/image"
        self._count("searches", len(rows))
        return rows

    def search_upload(self, data: bytes, name: str, k: int | None, radius: int | None,
                      rerank: bool | None = None) -> dict[str, Any]:
        """The query (its code, k or radius) and its hits, for an uploaded image."""
        k, radius = self.check_query(k, radius)
        t0 = time.perf_counter()
        code, real = self.encode_for_search([decode_upload(data, name)])
        rerank = self.rerank if rerank is None else rerank
        return self._answer({"filename": name}, code, k, radius, t0, real if rerank else None)

    def search_batch(self, uploads: list[tuple[str, bytes]], ids: list[int], k: int | None, radius: int | None,
                     rerank: bool | None = None) -> dict[str, Any]:
        """Many queries in one request (uploaded images, then items by id), answered by one index search per
        kind: {"results": [{"query", "results"}, ...], "took_ms"}."""
        k, radius = self.check_query(k, radius)
        if not uploads and not ids:
            raise InvalidRequestError("give one or more images, or ids")
        if len(uploads) + len(ids) > self.max_batch:
            raise InvalidRequestError(f"at most {self.max_batch} queries per batch, got {len(uploads) + len(ids)}")
        t0 = time.perf_counter()
        rerank = self.rerank if rerank is None else rerank
        answers: list[dict[str, Any]] = []
        if uploads:
            codes, real = self.encode_for_search([decode_upload(data, name) for name, data in uploads])
            rows = self.results(codes, k, radius, real if rerank else None)
            answers += [{"query": {"filename": name, "code": c.tobytes().hex(), "k": k, "radius": radius},
                         "results": hits} for (name, _), c, hits in zip(uploads, codes, rows)]
        if ids:
            with self.lock.read():
                try:
                    codes = self.index.reconstruct(ids)
                except KeyError as err:
                    raise NotFoundError(str(err.args[0])) from None
            rows = self.results(codes, k, radius)
            answers += [{"query": {"id": i, "code": c.tobytes().hex(), "k": k, "radius": radius}, "results": hits}
                        for i, c, hits in zip(ids, codes, rows)]
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
        hits = self.results(code, k, radius, real)[0]
        return {"query": {**query, "code": code[0].tobytes().hex(), "k": k, "radius": radius}, "results": hits,
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
            return _thumbnail(ref, size)
        except AttnHashError as err:
            raise NotFoundError(f"item {item_id}: {err}") from None

    # ---- changes ------------------------------------------------------------------------------------
    def save(self) -> None:
        if getattr(self.index, "persistent", False):  # a Milvus collection: durable already, keep its metadata
            self.index.save_info()
        elif self.persist:
            self.index.save(self.index_path)

    def add(self, uploads: list[tuple[str, bytes]], labels: list[str]) -> dict[str, Any]:
        """Add uploaded images (name, bytes) with one comma-separated label list for all, or one per image.
        The images are kept in the upload folder; on any failure nothing is added and nothing kept."""
        if len(labels) not in (0, 1, len(uploads)):
            raise InvalidRequestError(f"give one labels field for all images or one per image; got {len(labels)} "
                                      f"for {len(uploads)} images")
        decoded = [decode_upload(data, name) for name, data in uploads]
        codes = self.encode(decoded)
        os.makedirs(self.upload_dir, exist_ok=True)
        saved = []
        try:
            for _, data in uploads:
                fmt = Image.open(io.BytesIO(data)).format.lower()
                path = os.path.abspath(os.path.join(self.upload_dir, f"{uuid.uuid4().hex}.{fmt}"))
                with open(path, "wb") as out:
                    out.write(data)
                saved.append(path)
            per_image = labels * len(uploads) if len(labels) == 1 else labels or [""] * len(uploads)
            with self.lock.write():
                metas = [{"path": p, "labels": self.retriever.resolve_labels(lab.split(","))}
                         for p, lab in zip(saved, per_image)]
                ids = self.index.add(codes, metadata=metas)
                self.save()
                count = len(self.index)
        except BaseException:
            for p in saved:
                try:
                    os.unlink(p)
                except OSError:
                    pass
            raise
        self._count("added", len(ids))
        return {"ids": ids.tolist(), "count": count}

    def remove(self, item_id: int) -> dict[str, Any]:
        with self.lock.write():
            try:
                path = self.index.metadata([item_id])[0].get("path")
            except KeyError:
                raise NotFoundError(f"no item with id {item_id}") from None
            self.index.remove([item_id])
            self.save()
            count = len(self.index)
        # an image uploaded through the API belongs to the service: delete it with its item
        if path and os.path.dirname(path) == os.path.abspath(self.upload_dir):
            try:
                os.unlink(path)
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


@lru_cache(maxsize=2048)
def _thumbnail(ref: str, size: int) -> bytes:
    """PNG bytes of the image behind an item reference, shrunk to fit size x size (never enlarged)."""
    img = Image.fromarray(open_item_ref(ref))
    img.thumbnail((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
