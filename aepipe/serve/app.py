"""HTTP layer of the search service (FastAPI): JSON in and out, the web page at ``/``.

User errors are 4xx with ``{"error": "..."}``: 400 a query that cannot be used, 404 an unknown id,
413 an upload over the limit, 422 a malformed request or a vector of the wrong dimension.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from aepipe.errors import AepipeError, DimensionMismatch
from aepipe.serve.service import BadQuery, SearchService, TooLarge, UnknownItem, hits_json

try:  # Prefect installs orjson; the standard library's encoder is the fallback
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]

STATUS = {UnknownItem: 404, TooLarge: 413, DimensionMismatch: 422, BadQuery: 400}
T = TypeVar("T")
NPY = "application/x-npy"  # a bulk query: the vectors as a .npy body ...
ARROW = "application/vnd.apache.arrow.stream"  # ... answered as an Arrow IPC stream
MAX_NPY_VECTORS = 10_000


class ArrowResponse(Response):
    media_type = ARROW


def npy_vectors(body: bytes) -> np.ndarray:
    """The (n, dim) float32 vectors of a ``.npy`` request body (never unpickled)."""
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadQuery(f"the body is not a .npy array: {exc}") from None
    if arr.ndim != 2 or not len(arr) or arr.dtype.kind not in "fiu":
        raise BadQuery(f"a .npy body must be a non-empty 2-D numeric array (n, dim), got {arr.dtype} {arr.shape}")
    if len(arr) > MAX_NPY_VECTORS:
        raise TooLarge(f"{len(arr)} vectors in one request; at most {MAX_NPY_VECTORS}")
    return np.ascontiguousarray(arr, dtype=np.float32)


class HitsResponse(JSONResponse):
    """JSON of search results, encoded by orjson where installed (several times faster than json.dumps)."""

    def render(self, content: Any) -> bytes:
        if orjson is None:
            return super().render(content)
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class IdsQuery(BaseModel):
    ids: list[str] = Field(min_length=1, max_length=1000, description="stored ids to search by")
    k: int = Field(10, description="neighbours per query")
    label: str | None = Field(None, description="only items with this label")


class VectorsQuery(BaseModel):
    vectors: list[list[float]] = Field(min_length=1, max_length=1000, description="query vectors (n, dim)")
    k: int = 10
    label: str | None = None
    format: Literal["hits", "arrays"] = Field(
        "hits",
        description="hits: a record per hit (id, distance, label, source, snippet); arrays: for bulk jobs, "
        "'ids' and 'distances' as (n, k) lists, nothing else per hit (no label filter)",
    )


class TextQuery(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=1000, description="query texts (document runs)")
    k: int = 10
    label: str | None = None


def create_app(service: SearchService) -> FastAPI:
    app = FastAPI(title="aepipe search", description=f"similarity search over {service.layout.root}")
    page = resources.files("aepipe.serve").joinpath("page.html").read_text()

    @app.exception_handler(AepipeError)
    async def _user_error(request: Request, exc: AepipeError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=STATUS.get(type(exc), 400))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = first.get("msg", "invalid request")
        return JSONResponse({"error": f"{where}: {msg}" if where else msg}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> str:
        return page

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model_id": service.searcher.model_id}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return service.info()

    def answer(results: list, names: list[str], **extra: Any) -> JSONResponse:
        # a JSONResponse as is: FastAPI's jsonable_encoder pass over every hit would cost more than the search
        return HitsResponse({**answered_by(), "results": hits_json(results, names), **extra})

    def answered_by() -> dict[str, Any]:
        """The model and generation that answered (every search answer starts with them)."""
        s = service.searcher
        return {"model_id": s.model_id, "generation": s.generation.name or None}

    async def run(inline: bool, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the event loop when the service deems the work small, else in a worker
        thread (SearchService.runs_inline). The once-a-second index check goes to a thread: when
        the files changed, reopening the run can take seconds, and the loop must keep answering."""
        if service.refresh_due():
            await run_in_threadpool(service.refresh)
        return fn(*args) if inline else await run_in_threadpool(fn, *args)

    def by_ids(q: IdsQuery) -> JSONResponse:
        results, errors = service.search_ids(q.ids, q.k, q.label)
        if not results and errors:
            raise UnknownItem(f"none of the ids is in the store: {', '.join(e['id'] for e in errors[:5])}")
        unknown = {e["id"] for e in errors}
        return answer(results, [i for i in q.ids if i not in unknown], errors=errors)

    def finite(vecs: np.ndarray) -> np.ndarray:
        if not np.isfinite(vecs).all():
            raise BadQuery("query vectors hold NaN or infinite values")
        return vecs

    def by_vectors(q: VectorsQuery) -> JSONResponse:
        lengths = {len(v) for v in q.vectors}
        if len(lengths) != 1:
            raise DimensionMismatch(f"query vectors have different lengths {sorted(lengths)}")
        vecs = finite(np.asarray(q.vectors, dtype=np.float32))
        if q.format == "arrays":
            if q.label is not None:
                raise BadQuery("format 'arrays' takes no label filter; use format 'hits'")
            found = service.search_arrays(vecs, q.k)
            return HitsResponse({**answered_by(), "ids": found.ids.tolist(), "distances": found.distances})
        return answer(service.search_vectors(vecs, q.k, q.label), [str(i) for i in range(len(vecs))])

    def by_npy(vecs: np.ndarray, k: int) -> Response:
        """Bulk: ids and distances as an Arrow IPC stream, one row per query (fixed-size lists of
        k); no Python object per hit at either end. Model and generation in the schema metadata
        and in headers."""
        head = {key: str(v or "") for key, v in answered_by().items()}
        table = service.search_arrays(finite(vecs), k).to_arrow().replace_schema_metadata(head)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        headers = {"x-aepipe-model-id": head["model_id"], "x-aepipe-generation": head["generation"]}
        return ArrowResponse(sink.getvalue().to_pybytes(), headers=headers)

    @app.post("/api/search/ids")
    async def search_ids(q: IdsQuery) -> JSONResponse:
        return await run(service.runs_inline(len(q.ids), q.label, by_id=True), by_ids, q)

    @app.post(
        "/api/search/vectors",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": VectorsQuery.model_json_schema()}},
            }
        },
    )
    async def search_vectors(request: Request, k: int = 10) -> Response:
        """JSON (see the schema), or for bulk jobs a ``.npy`` body (``Content-Type:
        application/x-npy``, (n, dim) numbers, n up to 10,000, ``?k=`` in the URL) answered as an
        Arrow IPC stream (``ids`` and ``distances``, one row per query)."""
        if request.headers.get("content-type", "").split(";")[0].strip() == NPY:
            vecs = npy_vectors(await request.body())
            return await run(service.runs_inline(len(vecs)), by_npy, vecs, k)
        # pydantic reads the body itself: its JSON parser takes 1,000 x 10 floats in ~0.5 ms, where
        # FastAPI's json.loads + validation takes ~5 (bulk by-vector queries are mostly numbers)
        try:
            q = VectorsQuery.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        return await run(service.runs_inline(len(q.vectors), q.label), by_vectors, q)

    @app.post("/api/search/text")
    def search_text(q: TextQuery) -> JSONResponse:  # a worker thread: vectorizing and the encoder pass
        return answer(service.search_texts(q.texts, q.k, q.label), [t[:80] for t in q.texts])

    @app.post("/api/search/images")
    def search_images(  # a worker thread: decoding and the encoder pass run largely without the GIL
        files: list[UploadFile] = File(..., description="image file(s)"),
        k: int = Form(10),
        label: str | None = Form(None),
    ) -> JSONResponse:
        images = []
        for f in files:
            data = f.file.read(service.max_upload_bytes + 1)  # never more than the limit into memory
            images.append((Path(f.filename or "upload").name, data))
        names = [n for n, _ in images]
        return answer(service.search_image_bytes(images, k, label or None), names)

    @app.get("/api/items/{item_id:path}/thumbnail.png")
    def thumbnail(item_id: str, size: int = 96) -> Response:
        if not 8 <= size <= 512:
            raise BadQuery("size must be between 8 and 512 pixels")
        return Response(
            service.thumbnail(item_id, size), media_type="image/png", headers={"Cache-Control": "max-age=60"}
        )

    @app.get("/api/items/{item_id:path}")
    def item(item_id: str) -> dict[str, Any]:
        return service.item(item_id)

    @app.post("/api/refresh")
    def refresh() -> dict[str, Any]:
        """Reopen the run now if its index changed (the service also checks by itself, every second)."""
        return {"reopened": service.refresh(force=False), "model_id": service.searcher.model_id}

    return app


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the service until Ctrl-C (uvicorn shuts down cleanly on SIGINT/SIGTERM)."""
    import uvicorn

    service = SearchService(run_dir, freeze_gc=True)  # this process only serves: see _freeze_loaded_objects
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
