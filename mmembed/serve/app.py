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
- ``GET /api/v1/candidates/{id}`` a candidate, ``GET /api/v1/candidates/{id}/image`` its image (PNG);
- ``POST /v1/embeddings`` OpenAI's embeddings API (plus images, ``input_type``, ``instruction``);
- ``POST /v1/rerank`` the rerank API of Cohere, Jina and text-embeddings-inference (with a reranker);
- ``GET /docs`` a plain page listing the routes from ``/openapi.json`` (no CDN: it works offline).

Errors are ``{"error", "detail", "fields"}`` under ``/api/v1`` and OpenAI's
``{"error": {"message", "type", "param", "code"}}`` under ``/v1``.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmembed.errors import ConfigError, DataError, MMEmbedError
from mmembed.serve import compat
from mmembed.serve.batching import SearchService
from mmembed.serve.checks import RawInput, check_embedding
from mmembed.serve.limits import ApiError, Upload, check_search, check_upload_size
from mmembed.serve.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from mmembed.serve.middleware import RequestGuard, SecurityHeaders, error_response, is_openai_path
from mmembed.serve.models import (
    API_KEY_HEADER,
    API_PREFIX,
    CandidateInfo,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    Health,
    IndexInfo,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIModel,
    OpenAIModelList,
    Readiness,
    RerankRequest,
    RerankResponse,
    SearchQuery,
    SearchResponse,
    TaskInfo,
)
from mmembed.serve.settings import ServeSettings, accepted_hosts
from mmembed.serve.validation import validation_error
from mmembed.version import __version__

logger = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("mmembed.serve") / "static"))
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 409,
                                                                                        413, 415, 421, 422, 503)}


# --------------------------------------------------------------------------- state


class ServiceState:
    """The service of an app, or why there is none yet (loading, or failed to load).

    ``source`` is what to serve now (a :class:`~mmembed.retrieval.Retriever` or an
    :class:`~mmembed.serve.backend.EmbeddingModel`), a retrieval directory to load, or ``None``
    with ``load`` building what to serve (``mmembed serve --model NAME``)."""

    def __init__(self, source: Any, settings: ServeSettings, encoder_spec: str | None = None,
                 load: Callable[..., Any] | None = None, on_load_error: Callable[[str], None] | None = None):
        self.settings = settings
        self.encoder_spec = encoder_spec
        self._load_source = load
        self._on_load_error = on_load_error
        self.directory: Path | None = None
        self.service: SearchService | None = None
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self.metrics = Metrics(lambda: self.service.admission.in_flight if self.service is not None else 0)
        self.started_at = int(time.time())
        if isinstance(source, (str, os.PathLike)):
            self.directory = Path(source)
        elif source is not None:
            self._serve(source)
        elif load is None:
            raise ConfigError("create_app needs a retriever, a model, a retrieval directory or a load function")

    def _serve(self, source: Any) -> None:
        self.service = SearchService(source, self.settings, encoder_spec=self.encoder_spec, metrics=self.metrics)
        self.metrics.ready.set(1)

    def start_loading(self) -> None:
        if self.service is not None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._load, name="mmembed-load", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        from mmembed.retrieval import Retriever, read_retrieval_manifest

        what = f"the index {self.directory}" if self.directory is not None else "the model"
        started = time.perf_counter()
        try:
            if self.directory is not None:
                self.encoder_spec = self.encoder_spec or read_retrieval_manifest(self.directory)["encoder"]
                source = (self._load_source or Retriever.load)(self.directory)
            else:
                assert self._load_source is not None
                source = self._load_source()
            self._serve(source)
        except Exception as e:  # reported by readiness; the details go to the log only
            logger.exception("cannot load %s", what)
            kind = "index" if self.directory is not None else "model"
            self.error = f"the {kind} could not be loaded ({type(e).__name__}); see the service log"
            if self._on_load_error is not None:
                self._on_load_error(f"{type(e).__name__}: {e}")
            return
        seconds = time.perf_counter() - started
        self.metrics.load_seconds.set(seconds)
        logger.info("%s loaded in %.1f s", what, seconds)

    def readiness(self) -> Readiness:
        service = self.service
        if service is not None:
            return Readiness(ready=True, status="ready", in_flight=service.admission.in_flight,
                             capacity=service.admission.capacity)
        status = "failed" if self.error else "loading"
        return Readiness(ready=False, status=status, detail=self.error or "the model is loading",
                         in_flight=0, capacity=self.settings.capacity)

    def close(self) -> None:
        if self.service is not None:
            self.service.close()


def _state(request: Request) -> ServiceState:
    return request.app.state.mmembed


def get_service(request: Request) -> SearchService:
    state = _state(request)
    if state.service is None:
        readiness = state.readiness()
        raise ApiError(503, "loading" if readiness.status == "loading" else "not_ready",
                       readiness.detail or "not ready", headers={"Retry-After": "1"})
    return state.service


_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                               description="required when the service was started with an API key")


_bearer = HTTPBearer(auto_error=False, description="the API key as a bearer token (what OpenAI clients send)")


def require_api_key(request: Request, key: Annotated[str | None, Security(_api_key_header)] = None,
                    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None) -> None:
    expected = _state(request).settings.api_key
    if expected is None:
        return
    given = key if key is not None else bearer.credentials if bearer is not None else None
    if given is None or not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise ApiError(401, "unauthorized", f"missing or wrong API key; send it in the {API_KEY_HEADER} header "
                                            "or as 'Authorization: Bearer KEY'",
                       headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'})


Service = Annotated[SearchService, Depends(get_service)]


# --------------------------------------------------------------------------- routes


def _health() -> Health:
    return Health(version=__version__)


def _ready(request: Request) -> Any:
    readiness = _state(request).readiness()
    if not readiness.ready:
        return JSONResponse(readiness.model_dump(), status_code=503, headers={"Retry-After": "1"})
    return readiness


def _public_routes() -> APIRouter:
    """Health and readiness (under the API prefix, and at the root where TEI, vLLM and Kubernetes
    probes look), and the metrics; no key needed."""
    router = APIRouter(tags=["status"])
    for prefix in (API_PREFIX, ""):
        router.add_api_route(f"{prefix}/health", _health, response_model=Health,
                             summary="Liveness: the process answers")
        router.add_api_route(f"{prefix}/ready", _ready, response_model=Readiness, responses={503: {"model": Readiness}},
                             summary="Readiness: the model (and index) are loaded")

    @router.get("/metrics", response_class=Response, summary="Prometheus metrics (text format)",
                responses={200: {"content": {CONTENT_TYPE: {}}}})
    def metrics(request: Request) -> Response:
        return Response(_state(request).metrics.exposition(), media_type=CONTENT_TYPE)

    return router


def _form_only(request: Request) -> None:
    """Search takes a form; a JSON body would otherwise parse as an empty form ("give text...")."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ApiError(415, "unsupported_media_type",
                       f"search takes multipart/form-data (fields text, image, task or instruction, k, rerank), "
                       f"not {content_type}; to embed JSON inputs use {API_PREFIX}/embed or /v1/embeddings")


def _api_routes() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_api_key)], responses=_ERRORS)

    @router.get("/info", response_model=IndexInfo, tags=["index"], summary="Index metadata, tasks and limits")
    def info(service: Service) -> IndexInfo:
        return service.info()

    @router.get("/tasks", response_model=list[TaskInfo], tags=["index"], summary="Tasks of the instruction registry")
    def tasks(service: Service) -> list[TaskInfo]:
        return service.tasks()

    @router.post("/search", response_model=SearchResponse, tags=["search"], dependencies=[Depends(_form_only)],
                 summary="Search with text, an image, or both (multipart/form-data)")
    async def search(request: Request, service: Service, query: Annotated[SearchQuery, Form()],
                     image: Annotated[UploadFile | None, File(description="query image (PNG, JPEG, WebP, GIF, BMP)")]
                     = None) -> SearchResponse:
        service.require_index("search")
        upload = await _read_upload(image, service.settings)
        check_search(query, upload is not None, service.settings)
        instruction = service.resolve_instruction(query.instruction, query.task)
        service.check_rerank(query.rerank)
        job, result = await service.call(lambda: service.search_job(query, upload, instruction))
        return service.search_response(query, job, result, _arrival(request))

    @router.post("/embed", response_model=EmbedResponse, tags=["search"], summary="Embed queries or candidates")
    async def embed(request: Request, service: Service, body: EmbedRequest) -> EmbedResponse:
        inputs = check_embedding([RawInput(item.text, item.image_base64) for item in body.items], body.kind,
                                 body.instruction, body.task, service)
        job, result = await service.call(lambda: service.embed_job(inputs.texts, inputs.uploads, inputs.kind,
                                                                   inputs.instruction))
        return service.embed_response(job, result, _arrival(request))

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


def _compat_routes() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], tags=["compatible"],
                       responses=_ERRORS)

    @router.get("/models", response_model=OpenAIModelList, summary="The served model names (OpenAI / vLLM)")
    def models(request: Request, service: Service) -> OpenAIModelList:
        root = service.encoder_spec or service.encoder.encoder_id
        created = _state(request).started_at
        return OpenAIModelList(data=[OpenAIModel(id=name, created=created, root=root,
                                                 input_type=compat.choose_model(name, service).input_type)
                                     for name in compat.served_names(service)])

    @router.post("/embeddings", response_model=OpenAIEmbeddingResponse,
                 summary="OpenAI's embeddings API, with image inputs, input_type and instruction")
    async def embeddings(service: Service, body: OpenAIEmbeddingRequest) -> OpenAIEmbeddingResponse:
        choice, request = compat.embedding_request(body, service)
        job, result = await service.call(lambda: service.embed_job(request.texts, request.uploads, request.kind,
                                                                    request.instruction))
        return compat.embedding_response(body, result.value, request, choice, service)

    @router.post("/rerank", response_model=RerankResponse,
                 summary="Rerank documents for a query (Cohere / Jina / TEI shape); needs a reranker")
    async def rerank(service: Service, body: RerankRequest) -> RerankResponse:
        documents = compat.rerank_documents(body, service)
        with service.admission.admitted():
            scores = await service.on_worker(service.rerank_scores, body.query, documents, body.instruction)
        return compat.rerank_response(body, documents, scores, service)

    return router


async def _read_upload(image: UploadFile | None, settings: ServeSettings) -> Upload | None:
    if image is None:
        return None
    data = await image.read(settings.max_upload_bytes + 1)
    if not data and not image.filename:
        return None  # an empty file field of an HTML form
    if len(data) > settings.max_upload_bytes:
        # the part's full size is known: it was spooled by the form parser
        size = image.size if image.size is not None else len(data)
        check_upload_size(size, settings)
    return Upload(data)


def _arrival(request: Request) -> float:
    return float(request.scope.get("mmembed.arrival", time.perf_counter()))


# --------------------------------------------------------------------------- errors


#: In Starlette's message when a form field (not a file) is over its 1 MiB limit ("Part ...", "Field ...").
_PART_TOO_LARGE = "exceeded maximum size"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers, openai=is_openai_path(request.scope))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, detail, fields = validation_error(exc.errors())
        return error_response(status, "invalid_request", detail, fields=fields, openai=is_openai_path(request.scope))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _http_error(request, exc)

    @app.exception_handler(MMEmbedError)
    async def mmembed_error(request: Request, exc: MMEmbedError) -> JSONResponse:
        status = 422 if isinstance(exc, ConfigError) else 400
        logger.info("request refused: %s", exc)
        return error_response(status, "invalid_input", _public_message(exc), openai=is_openai_path(request.scope))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error", exc_info=(type(exc), exc, exc.__traceback__))
        return error_response(500, "internal_error", "internal error; the service log has the details",
                      openai=is_openai_path(request.scope))


def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Framework errors, made precise: a body that stopped arriving, a form field over the part
    limit, a body that cannot be parsed."""
    openai = is_openai_path(request.scope)
    if request.scope.get("mmembed.body_timeout"):
        return error_response(408, "request_timeout", "the request body stopped arriving (fewer bytes than its "
                                              "Content-Length?); the connection is closed",
                      {"Connection": "close"}, openai=openai)
    detail = str(exc.detail)
    if exc.status_code == 400 and _PART_TOO_LARGE in detail:
        limit = _state(request).settings.max_text_chars
        return error_response(422, "text_too_long", "a form field is over 1 MiB; text and instruction may have "
                              f"at most {limit} characters", openai=openai)
    if exc.status_code == 400 and "parsing the body" in detail:
        return error_response(400, "invalid_request", "the request body cannot be parsed as its Content-Type "
                              f"says ({request.headers.get('content-type', 'none given')})", openai=openai)
    return error_response(exc.status_code, f"http_{exc.status_code}", detail, getattr(exc, "headers", None),
                          openai=openai)


def _public_message(exc: MMEmbedError) -> str:
    """The message without file paths (a DataError's location may name server files)."""
    if isinstance(exc, DataError):
        where = ", ".join(x for x in (exc.location.item and f"item {exc.location.item!r}",
                                      exc.location.field and f"field {exc.location.field!r}") if x)
        return f"{where}: {exc.reason}" if where else exc.reason
    return str(exc)


# --------------------------------------------------------------------------- the app


def create_app(source: Any = None, settings: ServeSettings | None = None, *,
               encoder_spec: str | None = None, load: Callable[..., Any] | None = None,
               on_load_error: Callable[[str], None] | None = None) -> FastAPI:
    """The service over a :class:`~mmembed.retrieval.Retriever` or an
    :class:`~mmembed.serve.backend.EmbeddingModel` (served at once), a retrieval directory (loaded
    in the background when the app starts, by ``load(directory)`` when given, e.g. to attach a
    reranker; its encoder spec is read from it), or nothing, with ``load()`` building what to serve
    in the background. ``encoder_spec`` names the encoder (info route, ``/v1/models``);
    ``on_load_error`` is told when loading fails."""
    settings = settings or ServeSettings()
    state = ServiceState(source, settings, encoder_spec, load, on_load_error)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        state.start_loading()
        yield
        state.close()

    # FastAPI's /docs loads Swagger UI from a CDN: replaced by a page of our own (works offline)
    app = FastAPI(title="mmembed search service", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="Universal multimodal retrieval (MM-Embed): search with text, an image or both.")
    app.state.mmembed = state
    _install_error_handlers(app)
    app.include_router(_public_routes())
    app.include_router(_api_routes())
    app.include_router(_compat_routes())
    _add_pages(app)
    app.add_middleware(RequestGuard, max_bytes=settings.max_request_bytes, hosts=accepted_hosts(settings),
                       body_timeout_s=settings.body_timeout_s)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


def _add_pages(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
