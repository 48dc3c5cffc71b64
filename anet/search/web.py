"""The search page: a small FastAPI app over one index, for people rather than scripts.

Upload a query image (or pick one of the gallery's), set attribute / camera filters, see the top k
across cameras with scores and predicted attributes, and click a hit to make it the next query.
Uploads are embedded with the model that built the index (loaded from the registry on the first
upload); a gallery item as query reuses its stored embedding. ``make serve INDEX=runs/index``
starts it on 127.0.0.1.

Routes: ``GET /`` (the page), ``GET /api/info`` (model, vocabularies, cameras), ``GET /api/gallery``
(items to pick from), ``GET /api/thumb/{item}`` (PNG), ``POST /api/search`` (JSON: ``image`` as
base64 or ``item``, ``k``, ``filters``, ``cameras``, ``min_confidence``). Mistakes answer 400 with
``{"error": "..."}``.

What one search may cost is bounded (:mod:`anet.search.limits`): 413 for a body or an upload too large,
503 with ``Retry-After`` beyond the searches the page takes at once.

Example:
    >>> serve_page(GalleryIndex.open("runs/index"), host="127.0.0.1", port=8000)   # until Ctrl-C
"""

# no ``from __future__ import annotations``: FastAPI reads the route functions' annotations at run
# time, and some name classes imported inside create_app
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from anet.errors import UserError
from anet.search.index import GalleryIndex
from anet.search.limits import Limits, SearchGate, TooLarge, upload_bytes
from anet.search.predictor import ReidPredictor
from anet.search.query import Filters, Query, embed_query, load_image, query_from_item, search
from anet.search.served import load_predictor

PAGE = Path(__file__).with_name("page.html")
THUMB = 128
log = logging.getLogger(__name__)


class SearchRequest(BaseModel):
    """The body of ``POST /api/search``: exactly one of ``image`` (base64) and ``item``."""

    image: str | None = None
    item: int | None = None
    k: int = Field(20, ge=1, le=500)
    filters: dict[str, str] = Field(default_factory=dict)  # attribute -> class ("" = any)
    cameras: list[str] = Field(default_factory=list)
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)
    rerank: bool = False  # re-rank the top candidates (an index built with --knn)


def create_app(index: GalleryIndex, predictor: ReidPredictor | None = None, limits: Limits | None = None) -> Any:
    """The FastAPI app; ``predictor`` (the index's model) is loaded from the registry when not given."""
    from fastapi import FastAPI, Request  # lazy: only the page needs fastapi
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or Limits()
    app = FastAPI(title="anet search", docs_url=None, redoc_url=None)
    app.add_middleware(SearchGate, limits=limits)
    loaded: dict[str, ReidPredictor] = {} if predictor is None else {"model": predictor}

    @app.exception_handler(TooLarge)
    async def too_large(request: Request, exc: TooLarge) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=413)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)  # e.g. a body not JSON

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_line(exc.errors())}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return _info(index)

    @app.get("/api/gallery")
    def gallery(offset: int = 0, limit: int = 24) -> list[dict[str, Any]]:
        rows = index.table.iloc[max(0, offset):max(0, offset) + min(limit, 200)]
        return [{"item": int(r.item), "camera": r.camera} for r in rows.itertuples(index=False)]

    @app.get("/api/thumb/{item}")
    def thumb(item: int) -> Response:
        if not 0 <= item < len(index):
            raise UserError(f"item {item}: the index has items 0..{len(index) - 1}")
        return Response(thumbnail_png(load_image(index, item)), media_type="image/png")

    @app.post("/api/search")
    def run_search(body: SearchRequest) -> dict[str, Any]:
        query = _query(index, body, loaded, limits.max_pixels)
        filters = Filters({k: v for k, v in body.filters.items() if v}, tuple(body.cameras), body.min_confidence)
        hits = search(index, query, body.k + (body.item is not None), filters, rerank=body.rerank)
        hits = hits[hits["item"] != body.item].head(body.k)  # a gallery item as query: show the others
        hits = hits.assign(rank=range(1, len(hits) + 1))
        return {"query": {"item": body.item, "attributes": {n: {"class": c, "confidence": p}
                                                            for n, (c, p) in query.attributes.items()}},
                "hits": [_hit(h, index) for h in hits.to_dict("records")]}

    return app


def _validation_line(errors: Any) -> str:
    """One line for a body FastAPI could not read, naming the field and never echoing the input (an upload
    sent as a form instead of JSON would otherwise come back as a 500 from encoding its bytes)."""
    first = next(iter(errors), {})
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    what = first.get("msg", "not valid")
    return (f"{where}: {what}; POST /api/search takes JSON: {{\"image\": <base64> | \"item\": <n>, \"k\": 1..500, "
            "\"filters\": {...}, \"cameras\": [...], \"min_confidence\": 0..1}")


def _info(index: GalleryIndex) -> dict[str, Any]:
    cameras = sorted({c for c in index.table["camera"] if c}, key=lambda c: (len(c), c))  # "2" before "10"
    return {"model": str(index.model), "count": len(index), "kind": index.meta["kind"], "vocab": index.vocab,
            "cameras": cameras, "rerank": bool(index.meta.get("knn"))}


def _query(index: GalleryIndex, body: SearchRequest, loaded: dict[str, ReidPredictor], max_pixels: int) -> Query:
    if (body.image is None) == (body.item is None):
        raise UserError("send exactly one of 'image' (base64) and 'item' (a gallery item)")
    if body.item is not None:
        return query_from_item(index, body.item)
    if "model" not in loaded:
        loaded["model"], ref = load_predictor(index.model.uri)
        index.check_model(ref)
    return embed_query(loaded["model"], index.model, upload_bytes(body.image or "", max_pixels))


def _hit(hit: dict[str, Any], index: GalleryIndex) -> dict[str, Any]:
    attrs = {n: {"class": hit[n], "confidence": float(hit[f"{n}_confidence"])} for n in index.vocab}
    return {"rank": int(hit["rank"]), "item": int(hit["item"]), "score": float(hit["score"]),
            "camera": hit["camera"], "time": hit["time"], "path": hit["path"], "attributes": attrs,
            "thumb": f"/api/thumb/{int(hit['item'])}",
            **({"rerank_distance": float(hit["rerank_distance"])} if "rerank_distance" in hit else {})}


def thumbnail_png(image: np.ndarray, size: int = THUMB) -> bytes:
    """A PNG at most ``size`` px on its longer side (small cached images are scaled up to it)."""
    picture = Image.fromarray(np.ascontiguousarray(image))
    scale = size / max(picture.size)
    picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                             Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def serve_page(index: GalleryIndex, host: str = "127.0.0.1", port: int = 8000,
               predictor: ReidPredictor | None = None, limits: Limits | None = None) -> None:
    """Run the page with uvicorn until interrupted."""
    import faiss  # lazy: see GalleryIndex.open
    import uvicorn  # lazy: only the page needs uvicorn

    # one query per request: a single thread was faster than OpenMP's team (bench/search_bench.py)
    faiss.omp_set_num_threads(1)
    log.info("search page for %s (%d items, model %s) on http://%s:%d", index.folder, len(index), index.model,
             host, port)
    uvicorn.run(create_app(index, predictor, limits), host=host, port=port, log_level="warning")
