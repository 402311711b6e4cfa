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

Uploads: the body is refused with 413 beyond `max_upload_mb` (checked on Content-Length, and counted for
chunked bodies); a file Pillow cannot verify as PNG/JPEG/GIF/BMP/WebP/TIFF is refused with 415.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from attnhash.data.images import ImageTooLargeError, NotAnImageError
from attnhash.errors import AttnHashError, InvalidRequestError, NotFoundError, UnavailableError
from attnhash.serve.middleware import BodyLimitMiddleware
from attnhash.serve.service import SearchService
from attnhash.version import __version__

STATIC_DIR = Path(__file__).with_name("static")

# attnhash errors -> HTTP status; the first match in this order wins (subclasses first)
_STATUS = ((NotFoundError, 404), (InvalidRequestError, 422), (UnavailableError, 503), (ImageTooLargeError, 413),
           (NotAnImageError, 415), (AttnHashError, 400))


def _status(err: AttnHashError) -> int:
    return next(code for cls, code in _STATUS if isinstance(err, cls))


def create_app(index_path: str, run_dir: str | None = None, *, max_upload_mb: float = 10.0, encoder: Any = None,
               backend: str = "faiss", persist: bool = True, upload_dir: str | None = None, device: str = "auto",
               max_k: int = 1000, load_model: bool = True, radius_tables: bool = False,
               index_options: dict | None = None, rerank: bool | None = None) -> FastAPI:
    """The HTTP API and web page over `index_path` (see the module docstring).

    `encoder` injects a ready encoder (anything with bits, fingerprint, run_dir and encode_images); otherwise
    the run folder `run_dir`, or the one recorded in the index, is loaded. Without a usable model the service
    still answers searches by id, and image searches get 503 with the reason. `radius_tables` builds the
    FAISS radius-search hash tables at start-up (in the background) instead of on the first radius query.
    """
    svc = SearchService(index_path, run_dir, encoder=encoder, backend=backend, persist=persist,
                        upload_dir=upload_dir, device=device, max_k=max_k, load_model=load_model,
                        radius_tables=radius_tables, index_options=index_options, rerank=rerank)
    app = FastAPI(title="attnhash search", version=__version__,
                  description="Hamming-distance image retrieval over an attnhash index")
    app.state.service = svc
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(max_upload_mb * 2**20))

    @app.exception_handler(AttnHashError)
    def _attnhash_error(request, err: AttnHashError):
        return JSONResponse({"detail": str(err)}, status_code=_status(err))

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "count": len(svc.index), "model_loaded": svc.encoder is not None}

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        return {**svc.stats(), "max_upload_mb": max_upload_mb}

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
    def search_by_id(item_id: int, k: int | None = Query(None), radius: int | None = Query(None)) -> dict[str, Any]:
        return svc.search_item(item_id, k, radius)

    @app.post("/api/items", status_code=201)
    def add_items(images: list[UploadFile] = File(..., description="one or more images"),
                  labels: list[str] = Form([], description="comma-separated label names, one for all or one per image")
                  ) -> dict[str, Any]:
        return svc.add([(f.filename or "image", f.file.read()) for f in images], labels)

    @app.get("/api/items/{item_id}")
    def get_item(item_id: int) -> dict[str, Any]:
        return svc.item(item_id)

    @app.delete("/api/items/{item_id}")
    def delete_item(item_id: int) -> dict[str, Any]:
        return svc.remove(item_id)

    @app.get("/api/items/{item_id}/image")
    def item_image(item_id: int, size: int = Query(160, ge=16, le=1024)) -> Response:
        return Response(svc.thumbnail(item_id, size), media_type="image/png",
                        headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
