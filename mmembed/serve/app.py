"""The HTTP service: :func:`create_app` builds a FastAPI app over a retriever or a retrieval directory.

Nothing is loaded at import time. Given a :class:`~mmembed.retrieval.Retriever`, the app serves
at once; given a directory, it loads it in a background thread when the app starts, answering
liveness at once and readiness (and everything else) with 503 until the index is loaded.

Routes (all JSON unless said otherwise; see ``/openapi.json``):

- ``GET /`` the web page, ``/static/*`` its files;
- ``GET /api/v1/health`` liveness, ``GET /api/v1/ready`` readiness (no key needed for either);
- ``GET /api/v1/info`` index metadata, tasks and limits; ``GET /api/v1/tasks`` the tasks;
- ``POST /api/v1/search`` multipart: text, image file, instruction or task, k, rerank;
- ``POST /api/v1/embed`` JSON items (text and/or base64 image) -> vectors;
- ``GET /api/v1/candidates/{id}`` a candidate, ``GET /api/v1/candidates/{id}/image`` its image (PNG).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmembed import __version__
from mmembed.errors import ConfigError, DataError, MMEmbedError
from mmembed.serve.engine import SearchService, Upload
from mmembed.serve.limits import ApiError, check_search, check_text, check_upload_size
from mmembed.serve.models import (
    API_KEY_HEADER,
    API_PREFIX,
    CandidateInfo,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    FieldProblem,
    Health,
    IndexInfo,
    Readiness,
    SearchQuery,
    SearchResponse,
    TaskInfo,
)
from mmembed.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("mmembed.serve") / "static"))
#: The page's Content-Security-Policy: its own scripts and styles only; thumbnails are blob: URLs.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413,
                                                                                        415, 422, 503)}


# --------------------------------------------------------------------------- state


class ServiceState:
    """The service of an app, or why there is none yet (loading, or failed to load)."""

    def __init__(self, source: Any, settings: ServeSettings, encoder_spec: str | None = None):
        self.settings = settings
        self.directory: Path | None = None
        self.service: SearchService | None = None
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        if isinstance(source, (str, os.PathLike)):
            self.directory = Path(source)
        else:
            self.service = SearchService(source, settings, encoder_spec=encoder_spec)

    def start_loading(self) -> None:
        if self.service is not None or self.directory is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._load, name="mmembed-load", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        from mmembed.retrieval import Retriever, read_retrieval_manifest

        assert self.directory is not None
        started = time.perf_counter()
        try:
            spec = read_retrieval_manifest(self.directory)["encoder"]
            self.service = SearchService(Retriever.load(self.directory), self.settings, encoder_spec=spec)
        except Exception as e:  # reported by readiness; the details go to the log only
            logger.exception("cannot load the index %s", self.directory)
            self.error = f"the index could not be loaded ({type(e).__name__}); see the service log"
            return
        logger.info("index %s loaded in %.1f s", self.directory, time.perf_counter() - started)

    def readiness(self) -> Readiness:
        in_flight, capacity = (0, self.settings.capacity) if self.service is None else \
            (self.service.pool.in_flight, self.service.pool.capacity)
        detail = None if self.service is not None else self.error or "the index is loading"
        return Readiness(ready=self.service is not None, detail=detail, in_flight=in_flight, capacity=capacity)

    def close(self) -> None:
        if self.service is not None:
            self.service.close()


def _state(request: Request) -> ServiceState:
    return request.app.state.mmembed


def get_service(request: Request) -> SearchService:
    state = _state(request)
    if state.service is None:
        raise ApiError(503, "not_ready", state.readiness().detail or "not ready", headers={"Retry-After": "1"})
    return state.service


_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                               description="required when the service was started with an API key")


def require_api_key(request: Request, key: Annotated[str | None, Security(_api_key_header)] = None) -> None:
    expected = _state(request).settings.api_key
    if expected is None:
        return
    if key is None or not hmac.compare_digest(key.encode("utf-8"), expected.encode("utf-8")):
        raise ApiError(401, "unauthorized", f"missing or wrong API key; send it in the {API_KEY_HEADER} header",
                       headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'})


Service = Annotated[SearchService, Depends(get_service)]


# --------------------------------------------------------------------------- routes


def _public_routes() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, tags=["status"])

    @router.get("/health", response_model=Health, summary="Liveness: the process answers")
    def health() -> Health:
        return Health(version=__version__)

    @router.get("/ready", response_model=Readiness, summary="Readiness: the index is loaded",
                responses={503: {"model": Readiness}})
    def ready(request: Request) -> Any:
        readiness = _state(request).readiness()
        if not readiness.ready:
            return JSONResponse(readiness.model_dump(), status_code=503, headers={"Retry-After": "1"})
        return readiness

    return router


def _api_routes() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_api_key)], responses=_ERRORS)

    @router.get("/info", response_model=IndexInfo, tags=["index"], summary="Index metadata, tasks and limits")
    def info(service: Service) -> IndexInfo:
        return service.info()

    @router.get("/tasks", response_model=list[TaskInfo], tags=["index"], summary="Tasks of the instruction registry")
    def tasks(service: Service) -> list[TaskInfo]:
        return service.tasks()

    @router.post("/search", response_model=SearchResponse, tags=["search"],
                 summary="Search with text, an image, or both (multipart/form-data)")
    async def search(request: Request, service: Service, query: Annotated[SearchQuery, Form()],
                     image: Annotated[UploadFile | None, File(description="query image (PNG, JPEG, WebP, GIF, BMP)")]
                     = None) -> SearchResponse:
        upload = await _read_upload(image, service.settings)
        check_search(query, upload is not None, service.settings)
        instruction = service.resolve_instruction(query.instruction, query.task)
        service.check_rerank(query.rerank)
        return await service.pool.run(service.search, query, upload, instruction, _arrival(request))

    @router.post("/embed", response_model=EmbedResponse, tags=["search"], summary="Embed queries or candidates")
    async def embed(request: Request, service: Service, body: EmbedRequest) -> EmbedResponse:
        texts, uploads, instruction = _check_embed(body, service)
        return await service.pool.run(service.embed, texts, uploads, body.kind, instruction, _arrival(request))

    @router.get("/candidates/{candidate_id:path}/image", tags=["candidates"], summary="A candidate's image (PNG)",
                response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def candidate_image(service: Service, candidate_id: str,
                        size: Annotated[int, Query(ge=16, le=4096, description="largest side, pixels")] = 256
                        ) -> Response:
        side = min(size, service.settings.max_thumbnail_side)
        return Response(service.thumbnail(candidate_id, side), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/candidates/{candidate_id:path}", response_model=CandidateInfo, tags=["candidates"],
                summary="A candidate's text, modality and image link")
    def candidate(service: Service, candidate_id: str) -> CandidateInfo:
        return service.candidate(candidate_id)

    return router


async def _read_upload(image: UploadFile | None, settings: ServeSettings) -> Upload | None:
    if image is None:
        return None
    data = await image.read(settings.max_upload_bytes + 1)
    if not data and not image.filename:
        return None  # an empty file field of an HTML form
    check_upload_size(len(data), settings)
    return Upload(data)


def _check_embed(body: EmbedRequest,
                 service: SearchService) -> tuple[list[str | None], list[Upload | None], str | None]:
    settings = service.settings
    if len(body.items) > settings.max_embed_items:
        raise ApiError(422, "too_many_items", f"{len(body.items)} items; the limit is {settings.max_embed_items}")
    if body.kind == "candidate" and (body.instruction or body.task):
        raise ApiError(422, "invalid_request", "candidates are embedded without an instruction")
    if body.instruction is not None and body.task is not None:
        raise ApiError(422, "invalid_request", "give an instruction or a task, not both")
    check_text(body.instruction, "instruction", settings)
    texts, uploads = [], []
    for i, item in enumerate(body.items):
        if item.text is None and item.image_base64 is None:
            raise ApiError(422, "empty_item", f"item {i} has neither text nor an image")
        check_text(item.text, f"the text of item {i}", settings)
        texts.append(item.text)
        uploads.append(None if item.image_base64 is None else _b64_upload(item.image_base64, i, settings))
    return texts, uploads, service.resolve_instruction(body.instruction, body.task)


def _b64_upload(data: str, index: int, settings: ServeSettings) -> Upload:
    what = f"image of item {index}"
    check_upload_size(len(data) * 3 // 4, settings, what)  # before decoding
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_base64", f"the {what} is not valid base64") from None
    return Upload(raw, what)


def _arrival(request: Request) -> float:
    return float(request.scope.get("mmembed.arrival", time.perf_counter()))


# --------------------------------------------------------------------------- errors


def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None,
           fields: list[FieldProblem] | None = None) -> JSONResponse:
    body = ErrorResponse(error=error, detail=detail, fields=fields).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [FieldProblem(field=".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")),
                               message=str(e.get("msg", "invalid"))) for e in exc.errors()]
        detail = "; ".join(f"{f.field or 'request'}: {f.message}" for f in fields) or "invalid request"
        return _error(422, "invalid_request", detail, fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, f"http_{exc.status_code}", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(MMEmbedError)
    async def mmembed_error(_request: Request, exc: MMEmbedError) -> JSONResponse:
        status = 422 if isinstance(exc, ConfigError) else 400
        logger.info("request refused: %s", exc)
        return _error(status, "invalid_input", _public_message(exc))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error", exc_info=(type(exc), exc, exc.__traceback__))
        return _error(500, "internal_error", "internal error; the service log has the details")


def _public_message(exc: MMEmbedError) -> str:
    """The message without file paths (a DataError's location may name server files)."""
    if isinstance(exc, DataError):
        where = ", ".join(x for x in (exc.location.item and f"item {exc.location.item!r}",
                                      exc.location.field and f"field {exc.location.field!r}") if x)
        return f"{where}: {exc.reason}" if where else exc.reason
    return str(exc)


# --------------------------------------------------------------------------- middleware


class RequestGuard:
    """Stamps each request's arrival and refuses bodies over ``max_bytes`` before they are read."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["mmembed.arrival"] = time.perf_counter()
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is None:
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                return _error(411, "length_required", "send the request body with a Content-Length header")
            return None
        if not length.isdigit():
            return _error(400, "invalid_request", "malformed Content-Length header")
        if int(length) > self.max_bytes:
            return _error(413, "request_too_large", f"the request body is {int(length)} bytes; "
                                                    f"the limit is {self.max_bytes} bytes")
        return None


class SecurityHeaders:
    """Headers on every answer: no MIME sniffing, no referrer, no framing; the page gets a strict CSP."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        page = not scope["path"].startswith(("/docs", "/redoc"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                            (b"x-frame-options", b"DENY")]
                if page:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --------------------------------------------------------------------------- the app


def create_app(retriever_or_dir: Any, settings: ServeSettings | None = None, *,
               encoder_spec: str | None = None) -> FastAPI:
    """The service over a :class:`~mmembed.retrieval.Retriever` (served at once) or a retrieval
    directory (loaded in the background when the app starts; its encoder spec is read from it).
    ``encoder_spec`` names the encoder of a given retriever in the info route."""
    settings = settings or ServeSettings()
    state = ServiceState(retriever_or_dir, settings, encoder_spec)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        state.start_loading()
        yield
        state.close()

    app = FastAPI(title="mmembed search service", version=__version__, lifespan=lifespan,
                  description="Universal multimodal retrieval (MM-Embed): search with text, an image or both.")
    app.state.mmembed = state
    _install_error_handlers(app)
    app.include_router(_public_routes())
    app.include_router(_api_routes())
    _add_page(app)
    app.add_middleware(RequestGuard, max_bytes=settings.max_request_bytes)
    app.add_middleware(SecurityHeaders)
    return app


def _add_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
