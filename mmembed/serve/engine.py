"""The service's side of a :class:`~mmembed.retrieval.Retriever`: a bounded worker pool, one encoder
lock, per-phase timings, and the conversions between retrieval objects and API models.

Concurrency. Encoding is CPU-bound and the CPU encoder's feature cache is not thread-safe, so
every encoder (and reranker) call holds one lock. Requests wait for a thread of a small pool
(``workers``) in a bounded queue (``queue_size``); when ``workers + queue_size`` requests are
already in, the next is refused at once (503 with ``Retry-After``) instead of queueing without
bound. Image decoding runs in the pool too, outside the lock.

Timings. The encoder's, the index's and the reranker's methods are wrapped on their instances
(identity and type are kept) so that the time of each phase of a request is measured where it
is spent, whichever code path of the retriever calls them.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from mmembed import __version__
from mmembed.encoders.base import Item
from mmembed.errors import ConfigError, MMEmbedError
from mmembed.serve.limits import ApiError, decode_image
from mmembed.serve.models import (
    CandidateInfo,
    EmbedResponse,
    IndexInfo,
    Limits,
    SearchHit,
    SearchQuery,
    SearchResponse,
    TaskInfo,
    Timings,
    candidate_image_path,
)
from mmembed.serve.settings import IMAGE_FORMATS, ServeSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# --------------------------------------------------------------------------- timings


class Stopwatch:
    """Milliseconds per phase of one request (filled by the instrumented methods)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)

    def ran(self, phase: str) -> bool:
        return phase in self.ms


_local = threading.local()


@contextmanager
def measuring(stopwatch: Stopwatch) -> Iterator[Stopwatch]:
    """Collect the phases timed in this thread into ``stopwatch``."""
    previous = getattr(_local, "stopwatch", None)
    _local.stopwatch = stopwatch
    try:
        yield stopwatch
    finally:
        _local.stopwatch = previous


def _timed(phase: str, method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> T:
        stopwatch = getattr(_local, "stopwatch", None)
        if stopwatch is None or getattr(_local, "phase", None) is not None:
            return method(*args, **kwargs)  # not measured, or nested in a measured call
        _local.phase = phase
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            _local.phase = None
            stopwatch.ms[phase] += (time.perf_counter() - started) * 1000

    call.__mmembed_timed__ = True  # type: ignore[attr-defined]
    return call


def instrument(obj: object, phase: str, methods: tuple[str, ...]) -> None:
    """Time ``obj``'s ``methods`` under ``phase`` (once; objects that refuse attributes are skipped)."""
    for name in methods:
        method = getattr(obj, name, None)
        if method is None or getattr(method, "__mmembed_timed__", False):
            continue
        try:
            setattr(obj, name, _timed(phase, method))
        except (AttributeError, TypeError):
            logger.debug("cannot time %s.%s; its phase reports 0 ms", type(obj).__name__, name)


# --------------------------------------------------------------------------- the worker pool


class WorkerPool:
    """A thread pool with a bounded queue: :meth:`run` refuses work beyond ``workers + queue_size``."""

    def __init__(self, workers: int, queue_size: int, retry_after_s: int = 1):
        self.capacity = workers + queue_size
        self.retry_after_s = retry_after_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mmembed-worker")
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker; :class:`ApiError` 503 at once when the pool is full."""
        with self._lock:
            if self._in_flight >= self.capacity:
                raise ApiError(503, "overloaded", f"the service is busy ({self.capacity} requests in progress); "
                                                  f"retry in {self.retry_after_s} s",
                               headers={"Retry-After": str(self.retry_after_s)})
            self._in_flight += 1
        try:
            future = self._executor.submit(fn, *args)
        except RuntimeError:  # shut down
            self._release(None)
            raise ApiError(503, "shutting_down", "the service is shutting down") from None
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _future: Future | None) -> None:
        with self._lock:
            self._in_flight -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class Upload:
    """Image bytes from a request, decoded on a worker."""

    data: bytes
    what: str = "image"


class SearchService:
    """What the routes call: searches, embeddings, candidates and metadata of one retriever."""

    def __init__(self, retriever: Any, settings: ServeSettings, encoder_spec: str | None = None):
        self.retriever = retriever
        self.settings = settings
        self.encoder_spec = encoder_spec
        self.encoder_lock = threading.Lock()
        self.pool = WorkerPool(settings.workers, settings.queue_size, settings.retry_after_s)
        instrument(retriever.encoder, "encode", ("encode_queries", "encode_candidates"))
        instrument(retriever.index, "search", ("search",))
        if self.reranker is not None:
            instrument(self.reranker, "rerank", ("rerank", "rerank_many", "score_pairs"))
        self._thumbnail = functools.lru_cache(maxsize=512)(self._make_thumbnail)

    @property
    def reranker(self) -> Any:
        return self.retriever.reranker

    @property
    def can_rerank(self) -> bool:
        return self.reranker is not None

    # --- metadata ------------------------------------------------------------------------------

    def tasks(self) -> list[TaskInfo]:
        from mmembed.retrieval import task_name

        return [TaskInfo(name=task_name(e), dataset=e.dataset_name, query_modality=e.query_modality.value,
                         candidate_modality=e.cand_modality.value, instruction=e.prompts[0])
                for e in self.retriever.tasks()]

    def info(self) -> IndexInfo:
        encoder, s = self.retriever.encoder, self.settings
        reranker = self.reranker
        return IndexInfo(
            count=len(self.retriever.index), dim=encoder.dim, encoder_id=encoder.encoder_id, encoder=self.encoder_spec,
            reranker=None if not self.can_rerank else str(getattr(reranker, "reranker_id", type(reranker).__name__)),
            tasks=self.tasks(), version=__version__,
            limits=Limits(max_upload_bytes=s.max_upload_bytes, max_request_bytes=s.max_request_bytes,
                          max_pixels=s.max_pixels, max_text_chars=s.max_text_chars, max_k=s.max_k,
                          max_embed_items=s.max_embed_items, image_formats=list(IMAGE_FORMATS)))

    def resolve_instruction(self, instruction: str | None, task: str | None) -> str | None:
        if task is None:
            return instruction
        try:
            return self.retriever.task_instruction(task)
        except ConfigError as e:
            raise ApiError(422, "unknown_task", str(e)) from None

    def check_rerank(self, rerank: bool | None) -> None:
        if rerank and not self.can_rerank:
            raise ApiError(409, "no_reranker", "this service has no reranker; start it with "
                                               "'mmembed serve INDEX --rerank CONFIG.yaml' to rerank")

    # --- search (runs on a worker) -------------------------------------------------------------

    def search(self, query: SearchQuery, upload: Upload | None, instruction: str | None,
               submitted: float) -> SearchResponse:
        started = time.perf_counter()
        with measuring(Stopwatch()) as stopwatch:
            image = decode_image(upload.data, self.settings, upload.what) if upload is not None else None
            item = Item("query", query.text, image)
            with self.encoder_lock:
                hits = self._search(query, image, instruction)
        return SearchResponse(
            hits=[self._hit(h) for h in hits], query_modality=item.modality.value, instruction=instruction,
            k=query.k, reranked=stopwatch.ran("rerank"), timings_ms=self._timings(stopwatch, submitted, started))

    def _search(self, query: SearchQuery, image: Image.Image | None, instruction: str | None) -> list[Any]:
        rerank = query.rerank if self.can_rerank else False
        return self.retriever.search(query.text, image, instruction=instruction, k=query.k, rerank=rerank)

    @staticmethod
    def _hit(hit: Any) -> SearchHit:
        c = hit.candidate
        return SearchHit(rank=hit.rank, id=hit.id, score=float(hit.score),
                         retrieval_score=_opt_float(hit.retrieval_score), rerank_score=_opt_float(hit.rerank_score),
                         modality=c.modality.value, text=c.text, has_image=bool(c.image),
                         image_url=candidate_image_path(hit.id) if c.image else None)

    @staticmethod
    def _timings(stopwatch: Stopwatch, submitted: float, started: float) -> Timings:
        now = time.perf_counter()
        return Timings(queue=_ms(started - submitted), encode=round(stopwatch.ms.get("encode", 0.0), 3),
                       search=round(stopwatch.ms.get("search", 0.0), 3),
                       rerank=round(stopwatch.ms["rerank"], 3) if stopwatch.ran("rerank") else None,
                       total=_ms(now - submitted))

    # --- embed (runs on a worker) --------------------------------------------------------------

    def embed(self, texts: list[str | None], uploads: list[Upload | None], kind: str, instruction: str | None,
              submitted: float) -> EmbedResponse:
        started = time.perf_counter()
        with measuring(Stopwatch()) as stopwatch:
            items = [Item(f"item {i}", text, decode_image(u.data, self.settings, u.what) if u else None)
                     for i, (text, u) in enumerate(zip(texts, uploads))]
            encoder = self.retriever.encoder
            with self.encoder_lock:
                if kind == "query":
                    vectors = encoder.encode_queries(items, instruction, batch_size=len(items))
                else:
                    vectors = encoder.encode_candidates(items, batch_size=len(items))
        rows = np.asarray(vectors, dtype=np.float32)
        return EmbedResponse(encoder_id=encoder.encoder_id, dim=int(rows.shape[1]), kind=kind,  # type: ignore[arg-type]
                             instruction=instruction, vectors=rows.tolist(),
                             timings_ms=self._timings(stopwatch, submitted, started))

    # --- candidates ----------------------------------------------------------------------------

    def candidate(self, candidate_id: str) -> CandidateInfo:
        c = self._candidate(candidate_id)
        return CandidateInfo(id=c.did, text=c.text, modality=c.modality.value, has_image=bool(c.image),
                             image_url=candidate_image_path(c.did) if c.image else None)

    def _candidate(self, candidate_id: str) -> Any:
        c = self.retriever.candidates.get(candidate_id)
        if c is None:
            raise ApiError(404, "not_found", f"no candidate with id {candidate_id!r} in this index")
        return c

    def thumbnail(self, candidate_id: str, size: int) -> bytes:
        """PNG of a candidate's image, scaled to fit ``size`` x ``size`` (cached)."""
        c = self._candidate(candidate_id)
        if not c.image:
            raise ApiError(404, "no_image", f"candidate {candidate_id!r} has no image")
        return self._thumbnail(c.did, c.image, size)

    def _make_thumbnail(self, candidate_id: str, rel_path: str, size: int) -> bytes:
        images = getattr(self.retriever, "images", None)
        try:
            if images is None:
                raise ConfigError("this index has no image root")
            image = images.load(rel_path, candidate_id)
        except MMEmbedError as e:
            logger.warning("cannot serve the image of candidate %s: %s", candidate_id, e)
            raise ApiError(500, "image_unreadable", f"the image of candidate {candidate_id!r} cannot be read "
                                                    "on the server") from None
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=False)
        return out.getvalue()

    def close(self) -> None:
        self.pool.shutdown()


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
