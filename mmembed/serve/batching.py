"""The service's side of a :class:`~mmembed.retrieval.Retriever`: admission control, dynamic
batching, per-phase timings, and the conversions between retrieval objects and API models.

Concurrency. A request on the encoder path (search, embeddings) is admitted while fewer than
``capacity`` are in; the next is refused at once (503 with ``Retry-After``) instead of queueing
without bound. Its image is decoded on a small thread pool (``workers``), then its job joins the
:class:`Batcher`: one thread that runs queued jobs together, up to ``batch_max_items`` items per
encoder call, waiting at most ``batch_max_wait_ms`` for requests already admitted. One encoder
call for 32 queries costs far less than 32 calls (one matrix product instead of many small ones,
and one vector-index search), so throughput grows with load instead of latency alone. The CPU
encoder's feature cache is not thread-safe; the single batcher thread, and one lock shared with
the rerank route, keep every encoder and reranker call serial.

Timings. A batch runs its phases one after another here — encode the queries, search the index,
rerank — each timed by a :class:`Stopwatch`; nothing of the encoder, index or reranker is wrapped.
In a batch, every member reports the batch's phases and its size (``batch_items``).
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from mmembed.encoders.base import Item
from mmembed.errors import ConfigError, MMEmbedError
from mmembed.serve.backend import has_index
from mmembed.serve.limits import ApiError, Upload, decode_image, decode_image_bytes
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
from mmembed.version import __version__

logger = logging.getLogger(__name__)

T = TypeVar("T")

# --------------------------------------------------------------------------- timings


class Stopwatch:
    """Milliseconds per phase of one batch; a phase that never ran is absent."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)

    def ran(self, phase: str) -> bool:
        return phase in self.ms

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the block's wall time to phase ``name`` (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] += (time.perf_counter() - started) * 1000


# --------------------------------------------------------------------------- admission and batching


class Admission:
    """Counts requests in the encoder path; beyond ``capacity`` the next one is refused at once (503)."""

    def __init__(self, capacity: int, retry_after_s: int = 1):
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextmanager
    def admitted(self) -> Iterator[None]:
        with self._lock:
            if self._in_flight >= self.capacity:
                raise ApiError(503, "overloaded", f"the service is busy ({self.capacity} requests in progress); "
                                                  f"retry in {self.retry_after_s} s",
                               headers={"Retry-After": str(self.retry_after_s)})
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1


@dataclass
class Job:
    """One request's share of an encoder call: a search (one query) or an embedding request (items)."""

    kind: str  # "search", "query" or "candidate"
    items: list[Item]
    instructions: list[str | None]
    k: int = 0
    rerank: bool = False
    #: A search's candidate restriction and fusion: (where, modality, hybrid); jobs batch with equal ones.
    options: tuple[str | None, str | None, str | None] = (None, None, None)
    future: Future = field(default_factory=Future)

    @property
    def size(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class JobResult:
    """Hits (search) or vectors (embeddings) of one job, and the phases of the call it was part of."""

    value: Any
    ms: dict[str, float]
    batch_items: int
    started: float


class Batcher:
    """One thread that runs queued jobs in batches of at most ``max_items`` items.

    A batch starts with the oldest job and takes queued ones while they fit. When requests are
    admitted but still being read or decoded (``expect``), it waits up to ``max_wait_s`` for them:
    under load the batch fills, while a lone request is never delayed.
    """

    def __init__(self, run: Callable[[list[Job]], None], max_items: int, max_wait_s: float):
        self.max_items = max_items
        self.max_wait_s = max_wait_s
        self._run = run
        self._queue: deque[Job] = deque()
        self._expected = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="mmembed-batcher", daemon=True)
        self._thread.start()

    def expect(self, n: int = 1) -> None:
        with self._cond:
            self._expected += n
            self._cond.notify_all()

    def submit(self, job: Job, *, expected: bool = True) -> Future:
        with self._cond:
            if self._closed:
                raise ApiError(503, "shutting_down", "the service is shutting down")
            if expected:
                self._expected -= 1
            self._queue.append(job)
            self._cond.notify_all()
        return job.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]  # drop abandoned ones
            if batch:
                self._run(batch)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            items = batch[0].size
            deadline = time.monotonic() + self.max_wait_s
            while items < self.max_items:
                if self._queue:
                    if items + self._queue[0].size > self.max_items:
                        break
                    batch.append(self._queue.popleft())
                    items += batch[-1].size
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._expected <= 0:
                    break
                self._cond.wait(remaining)
            return batch


# --------------------------------------------------------------------------- the service


class SearchService:
    """What the routes call: searches, embeddings, candidates and metadata of one retriever (or of an
    :class:`~mmembed.serve.backend.EmbeddingModel`: embeddings, reranking and tasks without an index)."""

    def __init__(self, retriever: Any, settings: ServeSettings, encoder_spec: str | None = None,
                 metrics: Any = None):
        self.retriever = retriever
        self.settings = settings
        self.encoder_spec = encoder_spec
        self.metrics = metrics
        self.encoder_lock = threading.Lock()
        self.admission = Admission(settings.capacity, settings.retry_after_s)
        self._workers = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="mmembed-worker")
        self.batcher = Batcher(self._run_batch, settings.batch_max_items, settings.batch_max_wait_ms / 1000)
        self._thumbnail = functools.lru_cache(maxsize=512)(self._make_thumbnail)

    @property
    def encoder(self) -> Any:
        return self.retriever.encoder

    @property
    def has_index(self) -> bool:
        return has_index(self.retriever)

    def require_index(self, what: str) -> None:
        if not self.has_index:
            raise ApiError(409, "no_index", f"{what} needs an index, and this service serves the model only; "
                                            "start it with 'mmembed serve --model NAME INDEX' to search")

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
        return IndexInfo(
            has_index=self.has_index, count=len(self.retriever.index) if self.has_index else None, dim=encoder.dim,
            encoder_id=encoder.encoder_id, encoder=self.encoder_spec, precision=precision_of(encoder),
            reranker=self.reranker_id, tasks=self.tasks(), version=__version__,
            limits=Limits(max_upload_bytes=s.max_upload_bytes, max_request_bytes=s.max_request_bytes,
                          max_pixels=s.max_pixels, max_text_chars=s.max_text_chars, max_k=s.max_k,
                          max_depth=s.max_depth, max_embed_items=s.max_embed_items, image_formats=list(IMAGE_FORMATS)))

    @property
    def reranker_id(self) -> str | None:
        reranker = self.reranker
        return None if reranker is None else str(getattr(reranker, "reranker_id", type(reranker).__name__))

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
                                               "'mmembed serve ... --rerank CONFIG.yaml' to rerank")

    # --- the encoder path ----------------------------------------------------------------------

    async def call(self, prepare: Callable[[], Job]) -> tuple[Job, JobResult]:
        """Admit a request (or 503), build its job on a worker thread (image decoding), then wait
        for the batch it joins."""
        with self.admission.admitted():
            self.batcher.expect()
            try:
                job = await self.on_worker(prepare)
            except BaseException:
                self.batcher.expect(-1)
                raise
            return job, await asyncio.wrap_future(self.batcher.submit(job))

    async def on_worker(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            future = self._workers.submit(fn, *args)
        except RuntimeError:  # shut down
            raise ApiError(503, "shutting_down", "the service is shutting down") from None
        return await asyncio.wrap_future(future)

    def search_job(self, query: SearchQuery, upload: Upload | None, instruction: str | None) -> Job:
        image = decode_image(upload.data, self.settings, upload.what) if upload is not None else None
        rerank = self.can_rerank and query.rerank is not False
        options = (query.where, query.modality, query.hybrid)
        try:  # a bad filter is the request's error, found before it joins a batch (the mask is cached)
            self.retriever.filter_mask(query.where, query.modality)
        except ConfigError as e:
            raise ApiError(422, "invalid_filter", str(e)) from None
        return Job("search", [Item("query", query.text, image)], [instruction], k=query.offset + query.k,
                   rerank=rerank, options=options)

    def embed_job(self, texts: list[str | None], uploads: list[Upload | None], kind: str,
                  instruction: str | None) -> Job:
        items = [Item(f"item {i}", text, decode_image(u.data, self.settings, u.what) if u else None)
                 for i, (text, u) in enumerate(zip(texts, uploads))]
        return Job(kind, items, [instruction] * len(items))

    def _run_batch(self, jobs: list[Job]) -> None:
        """Run jobs together; when the batch fails, each job runs alone so that only the failing
        requests get the error (one bad input must not fail its batch-mates)."""
        try:
            results = self._execute(jobs)
        except Exception as e:
            if len(jobs) == 1:
                jobs[0].future.set_exception(e)
                return
            logger.info("a batch of %d requests failed (%s: %s); running them one by one", len(jobs),
                        type(e).__name__, e)
            for job in jobs:
                self._run_batch([job])
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)

    def _execute(self, jobs: list[Job]) -> list[JobResult]:
        started = time.perf_counter()
        values: list[Any] = [None] * len(jobs)
        groups: dict[tuple[str, bool, tuple], list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[(job.kind, job.rerank, job.options)].append(i)
        stopwatch = Stopwatch()
        with self.encoder_lock:
            for (kind, rerank, _), members in groups.items():
                group = [jobs[i] for i in members]
                for i, value in zip(members, self._execute_group(kind, rerank, group, stopwatch)):
                    values[i] = value
        items = sum(job.size for job in jobs)
        if self.metrics is not None:
            self.metrics.batch_items.observe(items)
        return [JobResult(value, dict(stopwatch.ms), items, started) for value in values]

    def _execute_group(self, kind: str, rerank: bool, jobs: list[Job], stopwatch: Stopwatch) -> list[Any]:
        items = [item for job in jobs for item in job.items]
        instructions = [instruction for job in jobs for instruction in job.instructions]
        if kind == "search":
            rows = self._search(items, instructions, max(job.k for job in jobs), rerank, stopwatch, jobs[0].options)
            return [row[:job.k] for row, job in zip(rows, jobs)]
        encoder = self.retriever.encoder
        batch_size = min(len(items), self.batcher.max_items)  # one large request is encoded in pieces
        with stopwatch.phase("encode"):
            if kind == "query":
                vectors = encoder.encode_queries(items, instructions, batch_size=batch_size)
            else:
                vectors = encoder.encode_candidates(items, batch_size=batch_size)
        rows = np.asarray(vectors, dtype=np.float32)
        bounds = np.cumsum([0] + [job.size for job in jobs])
        return [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _search(self, items: list[Item], instructions: Sequence[str | None], k: int, rerank: bool,
                stopwatch: Stopwatch, options: tuple = (None, None, None)) -> list[list[Any]]:
        """``Retriever.search_items`` phase by phase, each timed: encode, search the index, rerank."""
        retriever = self.retriever
        reranker = self.reranker if rerank else None
        depth = k if reranker is None else max(k, reranker.top_k)
        with stopwatch.phase("encode"):
            vectors = retriever.encoder.encode_queries(items, list(instructions))
        where, modality, hybrid = options
        with stopwatch.phase("search"):
            allowed = retriever.filter_mask(where, modality)
            if hybrid is not None:
                from mmembed.index.hybrid import hybrid_search

                hits = retriever.hits_for(*hybrid_search(retriever, vectors, [i.text for i in items], depth, allowed,
                                                      hybrid))
            else:
                hits = retriever.search_vectors(vectors, depth, allowed=allowed)
        if reranker is not None:
            with stopwatch.phase("rerank"):
                # Retriever._rerank: the reranking step of search_items (retrieval.py is owned elsewhere;
                # a public name for it is requested there)
                hits = retriever._rerank(reranker, items, list(instructions), hits)
        return [row[:k] for row in hits]

    # --- answers -------------------------------------------------------------------------------

    def search_response(self, query: SearchQuery, job: Job, result: JobResult, submitted: float) -> SearchResponse:
        return SearchResponse(
            hits=[self._hit(h) for h in result.value[query.offset:]], query_modality=job.items[0].modality.value,
            instruction=job.instructions[0], k=query.k, offset=query.offset,
            reranked="rerank" in result.ms and job.rerank,
            timings_ms=self.timings(result, submitted))

    def embed_response(self, job: Job, result: JobResult, submitted: float) -> EmbedResponse:
        rows = result.value
        return EmbedResponse(encoder_id=self.retriever.encoder.encoder_id, dim=int(rows.shape[1]),
                             kind=job.kind, instruction=job.instructions[0] if job.items else None,  # type: ignore[arg-type]
                             vectors=rows.tolist(), timings_ms=self.timings(result, submitted))

    @staticmethod
    def _hit(hit: Any) -> SearchHit:
        c = hit.candidate
        return SearchHit(rank=hit.rank, id=hit.id, score=float(hit.score),
                         retrieval_score=_opt_float(hit.retrieval_score), rerank_score=_opt_float(hit.rerank_score),
                         modality=c.modality.value, text=c.text, has_image=bool(c.image),
                         image_url=candidate_image_path(hit.id) if c.image else None)

    @staticmethod
    def timings(result: JobResult, submitted: float) -> Timings:
        ms = result.ms
        return Timings(queue=_ms(result.started - submitted), encode=round(ms.get("encode", 0.0), 3),
                       search=round(ms.get("search", 0.0), 3),
                       rerank=round(ms["rerank"], 3) if "rerank" in ms else None,
                       total=_ms(time.perf_counter() - submitted), batch_items=result.batch_items)

    # --- reranking without retrieval (runs on a worker) ----------------------------------------

    def rerank_scores(self, query: str, documents: list[str], instruction: str | None) -> np.ndarray:
        reranker = self.reranker
        if reranker is None:
            raise ApiError(409, "no_reranker", "this service has no reranker; start it with "
                                               "'mmembed serve ... --rerank CONFIG.yaml' to rerank")
        queries = [Item("query", query)] * len(documents)
        candidates = [Item(f"document {i}", text) for i, text in enumerate(documents)]
        with self.encoder_lock:
            scores = reranker.score_pairs(queries, candidates, [instruction] * len(documents))
        return np.asarray(scores, dtype=np.float64)

    # --- candidates ----------------------------------------------------------------------------

    def candidate(self, candidate_id: str) -> CandidateInfo:
        c = self._candidate(candidate_id)
        return CandidateInfo(id=c.did, text=c.text, modality=c.modality.value, has_image=bool(c.image),
                             image_url=candidate_image_path(c.did) if c.image else None)

    def _candidate(self, candidate_id: str) -> Any:
        self.require_index("a candidate")
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
        try:
            image = self._candidate_image(candidate_id, rel_path)
        except (MMEmbedError, OSError, ApiError) as e:
            logger.warning("cannot serve the image of candidate %s: %s", candidate_id, e)
            raise ApiError(500, "image_unreadable", f"the image of candidate {candidate_id!r} cannot be read "
                                                    "on the server") from None
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=False)
        return out.getvalue()

    def _candidate_image(self, candidate_id: str, rel_path: str) -> Image.Image:
        """Decoded like an upload (header size check, no warnings filters: this runs on many threads);
        the path is checked by the index's image store, which refuses paths leaving its root."""
        images = getattr(self.retriever, "images", None)
        if images is None:
            raise ConfigError("this index has no image root")
        path = images.resolve(rel_path, candidate_id)
        return decode_image_bytes(path.read_bytes(), images.max_pixels, f"image of candidate {candidate_id}")

    def close(self) -> None:
        self.batcher.close()
        self._workers.shutdown(wait=False, cancel_futures=True)


def precision_of(encoder: Any) -> dict[str, str]:
    """The dtype each modality is encoded in (``{"text": "bfloat16", "image": "float32"}``)."""
    precision = getattr(encoder, "precision", None)
    if precision is not None:
        return dict(precision)
    dtype = getattr(encoder, "dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return {"text": name, "image": name}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
