"""The HTTP API and web page of the search service (FastAPI). Handlers only translate: requests to
SearchService calls, attnhash errors to status codes.

Endpoints (JSON unless said otherwise; errors are {"detail": "<one line>"} with a 4xx/5xx status):
    GET    /api/health                      liveness and item count
    GET    /api/stats                       index facts (count, bits, backend, model fingerprint, classes, limits)
    POST   /api/search                      multipart: image (file), k (default 10) or radius, rerank -> results
    POST   /api/search/batch                multipart: images (files) and/or ids, k or radius, rerank -> one
                                            answer per query, from one index search
    GET    /api/search/by-id/{id}?k=|radius= the same with the code of an item already in the index
    POST   /api/items                       multipart: images (files), labels (one comma list for all or per image)
    GET    /api/items/{id}                  one item's metadata
    DELETE /api/items/{id}                  remove an item
    GET    /api/items/{id}/image?size=160   the item's image as a PNG thumbnail (for the results grid)
    GET    /                                the web page (static/index.html, app.js, style.css)

Every search answer has "results" (at most max_k), "total" (how many items matched) and "truncated".

Writes (POST/DELETE under /api/items) are off unless a token is configured (ATTNHASH_TOKEN or a token file),
then need `Authorization: Bearer <token>` (401 without it) and are refused from another site's page (403).
Requests naming a host outside `allowed_hosts` (default: the loopback names) get 400 (DNS rebinding).

Limits (attnhash.serve.limits.ServiceLimits): the body is refused with 413 beyond `max_upload_mb` (checked on
Content-Length, and counted for chunked bodies); a file Pillow cannot verify as PNG/JPEG/GIF/BMP/WebP/TIFF
is refused with 415, an image or a request with too many pixels to decode with 413; when the decoded-pixel
budget or the places for concurrent requests are taken for longer than `wait_s`, 503 with Retry-After; a
full uploads folder or disk 507. A change that cannot be saved is not applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path as FilePath
from typing import Any

from fastapi import FastAPI, File, Form, Path, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from attnhash.data.images import ImageTooLargeError, NotAnImageError
from attnhash.errors import (
    AttnHashError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    StorageError,
    UnavailableError,
)
from attnhash.index import MAX_ID
from attnhash.serve.guard import LOOPBACK_HOSTS, WriteGuardMiddleware, load_token
from attnhash.serve.limits import ConcurrencyLimitMiddleware, SaturatedError, ServiceLimits
from attnhash.serve.middleware import BodyLimitMiddleware
from attnhash.serve.service import SearchService, WritesDisabledError
from attnhash.version import __version__

STATIC_DIR = FilePath(__file__).with_name("static")
FROM_ENV = "from-env"  # create_app's default token: the ATTNHASH_TOKEN environment variable, if set

# attnhash errors -> HTTP status; the first match in this order wins (subclasses first)
_STATUS = ((NotFoundError, 404), (InvalidRequestError, 422), (UnavailableError, 503), (ImageTooLargeError, 413),
           (NotAnImageError, 415), (WritesDisabledError, 403), (ConflictError, 409), (StorageError, 507),
           (AttnHashError, 400))
ItemId = Path(ge=0, le=MAX_ID, description="item id (0 to 2^63-1)")


def _status(err: AttnHashError) -> int:
    return next(code for cls, code in _STATUS if isinstance(err, cls))


def create_app(index_path: str, run_dir: str | None = None, *, max_upload_mb: float | None = None,
               encoder: Any = None, backend: str = "faiss", persist: bool = True, upload_dir: str | None = None,
               device: str = "auto", max_k: int | None = None, load_model: bool = True, radius_tables: bool = False,
               token: str | None = FROM_ENV, allowed_hosts: Sequence[str] | None = None,
               allowed_origins: Sequence[str] = (), limits: ServiceLimits | None = None,
               lock_wait: float = 0.0, index_options: dict | None = None, rerank: bool | None = None,
               engine: str = "torch") -> FastAPI:
    """The HTTP API and web page over `index_path` (see the module docstring).

    `encoder` injects a ready encoder (anything with bits, fingerprint, run_dir and encode_images); otherwise
    the run folder `run_dir`, or the one recorded in the index, is loaded (`engine` "onnx": its exported
    model.onnx). Without a usable model the service
    still answers searches by id, and image searches get 503 with the reason. `radius_tables` builds the
    FAISS radius-search hash tables at start-up (in the background) instead of on the first radius query.

    `token`: the write token (default: ATTNHASH_TOKEN; None: writes off). A service that accepts writes and
    persists them holds the index's writer lock until it shuts down (`app.state.service.close()`); `lock_wait`
    waits that long for another writer. `allowed_hosts`: Host names served (default: the loopback names;
    "*" for any). `allowed_origins`: pages of other origins allowed to write (e.g. "https://app.example").
    """
    limits = replace(limits or ServiceLimits(), **({} if max_upload_mb is None else {"max_upload_mb": max_upload_mb}))
    if token == FROM_ENV:
        token = load_token()
    svc = SearchService(index_path, run_dir, encoder=encoder, backend=backend, persist=persist,
                        upload_dir=upload_dir, device=device, max_k=max_k, load_model=load_model,
                        radius_tables=radius_tables, writable=token is not None, limits=limits, lock_wait=lock_wait,
                        index_options=index_options, rerank=rerank, engine=engine)

    @asynccontextmanager
    async def lifespan(app):
        yield
        svc.close()  # shutting down: let other writers have the index file

    app = FastAPI(title="attnhash search", version=__version__, lifespan=lifespan,
                  description="Hamming-distance image retrieval over an attnhash index")
    app.state.service = svc
    # outermost last: host check, then the place among concurrent requests, then the write guard and the body
    # limit, all before the body is read
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(svc.limits.max_upload_mb * 2**20))
    app.add_middleware(WriteGuardMiddleware, token=token, allowed_origins=allowed_origins)
    app.add_middleware(ConcurrencyLimitMiddleware, max_active=svc.limits.max_active,
                       max_waiting=svc.limits.max_waiting, wait_s=svc.limits.wait_s)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts or LOOPBACK_HOSTS),
                       www_redirect=False)

    @app.exception_handler(AttnHashError)
    def _attnhash_error(request, err: AttnHashError):
        headers = {"Retry-After": str(err.retry_after)} if isinstance(err, SaturatedError) else None
        return JSONResponse({"detail": str(err)}, status_code=_status(err), headers=headers)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "count": len(svc.index), "model_loaded": svc.encoder is not None}

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        return {**svc.stats(), "max_upload_mb": svc.limits.max_upload_mb}

    @app.post("/api/search")
    def search(image: UploadFile = File(..., description="query image"),
               k: int | None = Form(None), radius: int | None = Form(None),
               rerank: bool | None = Form(None, description="rank equal distances by <tanh(z_q), b_d>")
               ) -> dict[str, Any]:
        return svc.search_upload(image.file.read(), image.filename or "image", k, radius, rerank)

    @app.post("/api/search/batch")
    def search_batch(images: list[UploadFile] = File([], description="query images"),
                     ids: list[int] = Form([], description="ids of items to query with"),
                     k: int | None = Form(None), radius: int | None = Form(None),
                     rerank: bool | None = Form(None)) -> dict[str, Any]:
        return svc.search_batch([(f.filename or "image", f.file.read()) for f in images], ids, k, radius, rerank)

    @app.get("/api/search/by-id/{item_id}")
    def search_by_id(item_id: int = ItemId, k: int | None = Query(None),
                     radius: int | None = Query(None)) -> dict[str, Any]:
        return svc.search_item(item_id, k, radius)

    @app.post("/api/items", status_code=201)
    def add_items(images: list[UploadFile] = File(..., description="one or more images"),
                  labels: list[str] = Form([], description="comma-separated label names, one for all or one per image")
                  ) -> dict[str, Any]:
        return svc.add([(f.filename or "image", f.file.read()) for f in images], labels)

    @app.get("/api/items/{item_id}")
    def get_item(item_id: int = ItemId) -> dict[str, Any]:
        return svc.item(item_id)

    @app.delete("/api/items/{item_id}")
    def delete_item(item_id: int = ItemId) -> dict[str, Any]:
        return svc.remove(item_id)

    @app.get("/api/items/{item_id}/image")
    def item_image(item_id: int = ItemId, size: int = Query(160, ge=16, le=1024)) -> Response:
        return Response(svc.thumbnail(item_id, size), media_type="image/png",
                        headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
