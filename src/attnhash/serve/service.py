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

from attnhash.data import open_item_ref
from attnhash.errors import AttnHashError, InvalidRequestError, NotFoundError, UnavailableError
from attnhash.retrieval import Retriever
from attnhash.serve.batching import MicroBatcher
from attnhash.serve.locks import RWLock
from attnhash.serve.uploads import decode_upload


class SearchService:
    """The index, the encoder and the locks behind the HTTP handlers (usable without HTTP too)."""

    def __init__(self, index_path: str, run_dir: str | None = None, *, encoder: Any = None, backend: str = "faiss",
                 persist: bool = True, upload_dir: str | None = None, device: str = "auto", max_k: int = 1000,
                 load_model: bool = True, radius_tables: bool = False) -> None:
        self.index_path = str(index_path)
        self.retriever = Retriever.open(self.index_path, backend=backend, load_model=False)
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
            self.batcher = MicroBatcher(encoder.encode_images)
        self._building = False
        if radius_tables and hasattr(self.index, "build_hash"):
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
                self.index.build_hash()
        finally:
            self._building = False

    def _count(self, key: str, n: int = 1) -> None:
        with self._count_lock:
            self.counters[key] += n

    # ---- queries ------------------------------------------------------------------------------------
    def encode(self, images: list[np.ndarray]) -> np.ndarray:
        """Codes of decoded images through the shared model (batched across concurrent requests)."""
        if self.batcher is None:
            raise UnavailableError(f"search by image is unavailable: {self.encoder_error}")
        return self.batcher(images)

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

    def results(self, codes: np.ndarray, k: int | None, radius: int | None) -> list[dict[str, Any]]:
        with self.lock.read():
            hits = self.retriever.search_codes(codes, k=k, radius=radius, max_results=self.max_k)[0]
        for h in hits:
            h["thumbnail"] = f"/api/items/{h['id']}/image"
        self._count("searches")
        return hits

    def search_upload(self, data: bytes, name: str, k: int | None, radius: int | None) -> dict[str, Any]:
        """The query (its code, k or radius) and its hits, for an uploaded image."""
        k, radius = self.check_query(k, radius)
        t0 = time.perf_counter()
        code = self.encode([decode_upload(data, name)])
        return self._answer({"filename": name}, code, k, radius, t0)

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

    def _answer(self, query: dict, code: np.ndarray, k: int | None, radius: int | None, t0: float) -> dict[str, Any]:
        hits = self.results(code, k, radius)
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
        if self.persist:
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
            "radius_tables": "building" if self._building else (
                "built" if getattr(self.index, "hash_tables", None) else "not built"),
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
