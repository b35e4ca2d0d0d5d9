"""Load test of the search service: dynamic batching against no batching, in the same run.

Usage::

    python benchmarks/serve_load.py                          # bundled benchmark, global test pool
    python benchmarks/serve_load.py --data runs/serve-load/data --levels 1,8,32 --kinds text
    python benchmarks/serve_load.py --modes batched --burst 128
    python benchmarks/serve_load.py --modes batched --dtypes float32,bfloat16 --levels 8 --kinds text

What it does:

1. builds (once, then reuses) a retrieval directory of the benchmark's global test pool with
   ``--encoder`` (pool embeddings come from the evaluation's cache when present, ``--cache``);
2. starts ``mmembed serve`` in a subprocess per mode (``unbatched``: ``--batch-max-items 1``;
   ``batched``: ``--batch-max-items`` and ``--batch-max-wait-ms``) on free localhost ports, waits for
   readiness, and for each concurrency level and query kind (text queries of emoji_task0, image
   queries of emoji_task3) runs that many closed-loop clients until ``max(--requests, 4 x clients)``
   queries are answered (a 503 is retried after its ``Retry-After``) or ``--seconds`` pass, against
   each mode in turn, ``--rounds`` times with the order alternating (the services idle while the
   other is measured), so that drifting background load does not favour one mode;
3. reports per mode p50/p99 latency, throughput, 503s, other errors and the server-side encode and
   search times, then batched/unbatched ratios per level, with the p99 target of issue 18;
4. optionally (``--burst N``) releases N simultaneous requests at the batched service: how many
   were refused with 503 and how fast those answers came;
5. with several ``--dtypes`` (``mmembed serve --dtype``), a service per mode and dtype over the
   same float32-built index, the ratio of each dtype's throughput and latency to float32's, and
   the parity of their vectors: the cosine of each text query's vector (``/v1/embeddings``) to
   the float32 service's.

Every image query is made unique (one opaque pixel set from the request number), so no image is
answered from the encoder's feature cache, which is keyed by pixel content. Text queries cycle
through the task's queries; nothing caches text. Latency is measured by the client, end to end
over HTTP on localhost, with the clients on the same machine as the service. The exit status is 1
when a level got no answer or any error other than 503, 2 when the data cannot support the run.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

from mmembed.data.layout import MBEIRDirectory
from mmembed.data.mbeir import read_queries

logger = logging.getLogger("serve_load")

TEXT_TASK, IMAGE_TASK = "emoji_task0", "emoji_task3"
WARM_UP = 4


@dataclass
class Sample:
    status: int
    seconds: float
    encode_ms: float | None = None
    search_ms: float | None = None
    batch_items: int | None = None
    retry_after: float | None = None


@dataclass
class Result:
    mode: str
    kind: str
    clients: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)
    dtype: str = "float32"

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.mode, self.dtype, self.kind, self.clients)

    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 200]

    def latencies_ms(self) -> list[float]:
        return [s.seconds * 1000 for s in self.ok()]

    def throughput(self) -> float:
        return len(self.ok()) / self.wall_s if self.wall_s > 0 else float("nan")

    def refused(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 503]

    def other_errors(self) -> int:
        return len(self.samples) - len(self.ok()) - len(self.refused())


# --------------------------------------------------------------------------- set-up


def ensure_index(data: Path, out: Path, cache: Path, encoder: str) -> Path:
    if (out / "retrieval.json").is_file():
        logger.info("reusing the index %s", out)
        return out
    from mmembed.encoders.registry import load_encoder
    from mmembed.retrieval import Retriever

    directory = MBEIRDirectory(data)
    started = time.perf_counter()
    Retriever.build(load_encoder(encoder), directory.global_pool("test"), out, encoder_spec=encoder,
                    image_root=directory.root, instructions_path=directory.instructions_path, cache_dir=cache,
                    show_progress=sys.stderr.isatty())
    logger.info("built the index %s in %.0f s", out, time.perf_counter() - started)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(index: Path, port: int, args: argparse.Namespace, batch_items: int,
                  log: Path, dtype: str = "float32") -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "mmembed.cli.main", "-q", "serve", str(index), "--port", str(port),
               "--dtype", dtype, *(["--threads", str(args.threads)] if args.threads else []),
               "--workers", str(args.workers), "--queue-size", str(args.queue_size),
               "--batch-max-items", str(batch_items), "--batch-max-wait-ms", str(args.batch_max_wait_ms)]
    logger.info("starting: %s (log: %s)", " ".join(command), log)
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT), f"http://127.0.0.1:{port}"


def wait_ready(url: str, process: subprocess.Popen, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with code {process.returncode}; see its log")
        try:
            if httpx.get(f"{url}/api/v1/ready", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the service was not ready within {timeout:.0f} s")


def load_queries(data: Path) -> tuple[list[dict], list[dict]]:
    """Search requests of the text task and of the image task (test split)."""
    directory = MBEIRDirectory(data)
    registry = directory.instructions()
    texts, images = [], []
    for task_name, out in ((TEXT_TASK, texts), (IMAGE_TASK, images)):
        task = directory.task(task_name)
        for q in read_queries(task.queries):
            fields = {"k": "10", "instruction": registry.prompts(q.dataset_id, q.modality, task.task.cand_modality)[0]}
            image = directory.images.resolve(q.image, q.qid).read_bytes() if q.image else None
            if q.text:
                fields["text"] = q.text
            out.append({"data": fields, "image": image})
    return texts, images


class Queries:
    """Requests for one level: text queries in turn; image queries each with pixels of their own."""

    def __init__(self, pool: list[dict], salt: int):
        self.pool = pool
        self.salt = salt

    def get(self, n: int) -> dict:
        query = self.pool[n % len(self.pool)]
        if query["image"] is None:
            return {"data": query["data"], "files": None}
        return {"data": query["data"], "files": {"image": ("query.png", unique_image(query["image"],
                                                                                    self.salt + n))}}


def unique_image(data: bytes, n: int) -> bytes:
    """The image with pixel (0, 0) set to an opaque colour made from ``n``: new pixel content, so
    no feature-cache hit; one pixel of a 72x72 emoji changes nothing else."""
    with Image.open(io.BytesIO(data)) as image:
        rgba = image.convert("RGBA")
    rgba.putpixel((0, 0), (n % 256, (n // 256) % 256, (n // 65536) % 256, 255))
    out = io.BytesIO()
    rgba.save(out, format="PNG")
    return out.getvalue()


# --------------------------------------------------------------------------- load


def one_request(client: httpx.Client, url: str, query: dict) -> Sample:
    started = time.perf_counter()
    try:
        response = client.post(f"{url}/api/v1/search", data=query["data"], files=query["files"])
    except httpx.TransportError:
        return Sample(0, time.perf_counter() - started)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        retry = response.headers.get("retry-after")
        return Sample(response.status_code, seconds, retry_after=float(retry) if retry and retry.isdigit() else None)
    timings = response.json()["timings_ms"]
    return Sample(200, seconds, timings["encode"], timings["search"], timings.get("batch_items"))


def run_level(url: str, queries: Queries, mode: str, kind: str, clients: int, max_ok: int,
              seconds: float) -> Result:
    """``clients`` closed-loop clients until ``max_ok`` answers or ``seconds``. A client answered 503
    retries the same query after its ``Retry-After`` (as a polite client does); the 503 is counted."""
    result = Result(mode, kind, clients, 0.0)
    lock = threading.Lock()
    taken = [0]
    deadline = time.perf_counter() + seconds

    def next_query() -> dict | None:
        with lock:
            if taken[0] >= max_ok:
                return None
            taken[0] += 1
            return queries.get(taken[0])

    def client_loop() -> None:
        with httpx.Client(timeout=120) as client:
            while (query := next_query()) is not None and time.perf_counter() < deadline:
                while time.perf_counter() < deadline:
                    sample = one_request(client, url, query)
                    with lock:
                        result.samples.append(sample)
                    if sample.status != 503:
                        break
                    time.sleep(min(sample.retry_after or 1.0, max(0.0, deadline - time.perf_counter())))

    result.wall_s = run_threads(client_loop, clients)
    return result


def run_threads(target: Callable[[], None], n: int) -> float:
    """Run ``target`` in ``n`` threads at once; the wall seconds until all have finished."""
    started = time.perf_counter()
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def burst(url: str, query: dict, n: int) -> Result:
    """``n`` requests released at the same instant."""
    result = Result("batched", "burst", n, 0.0)
    barrier = threading.Barrier(n)
    lock = threading.Lock()

    def fire() -> None:
        with httpx.Client(timeout=120) as client:
            barrier.wait()
            sample = one_request(client, url, query)
        with lock:
            result.samples.append(sample)

    result.wall_s = run_threads(fire, n)
    return result


def run_all(index: Path, texts: list[dict], images: list[dict], args: argparse.Namespace) -> tuple[list[Result], dict]:
    """Every mode's service runs at once (idle ones cost no CPU); each level runs ``--rounds`` times
    per mode, the modes alternating, so that background load drifting over the run does not favour
    one mode. Returns the results and the service's info (what encoder it really runs)."""
    variants = [(mode, dtype) for mode in args.mode_list for dtype in args.dtype_list]
    services = {(mode, dtype): start_service(index, free_port(), args, args.batch_max_items if mode == "batched" else 1,
                                             Path(args.index).parent / f"serve-{mode}-{dtype}.log", dtype)
                for mode, dtype in variants}
    results: dict[tuple[str, str, str, int], Result] = {}
    try:
        for (mode, dtype), (process, url) in services.items():
            logger.info("%s %s service ready after %.1f s", mode, dtype, wait_ready(url, process, args.ready_timeout))
            warm_up(url, texts, images)
        info = httpx.get(f"{next(iter(services.values()))[1]}/api/v1/info", timeout=30).json()
        info["precisions"] = {dtype: httpx.get(f"{services[(args.mode_list[0], dtype)][1]}/api/v1/info",
                                               timeout=30).json().get("precision") for dtype in args.dtype_list}
        info["parity"] = {dtype: text_parity(services[(args.mode_list[0], "float32")][1],
                                             services[(args.mode_list[0], dtype)][1], texts)
                          for dtype in args.dtype_list if dtype != "float32" and "float32" in args.dtype_list}
        for i, clients in enumerate(args.level_list):
            for kind in args.kind_list:
                for turn in range(args.rounds):
                    order = variants if turn % 2 == 0 else variants[::-1]
                    for mode, dtype in order:
                        salt = ((i * args.rounds + turn) * len(variants) + variants.index((mode, dtype)) + 1) * 100_000
                        logger.info("%s %s: %s queries, %d clients, round %d ...", mode, dtype, kind, clients, turn + 1)
                        result = run_level(services[(mode, dtype)][1],
                                           Queries(texts if kind == "text" else images, salt),
                                           mode, kind, clients, max(args.requests, 4 * clients), args.seconds)
                        result.dtype = dtype
                        merge(results, result)
        if args.burst and ("batched", args.dtype_list[0]) in services:
            logger.info("overload burst of %d ...", args.burst)
            merge(results, burst(services[("batched", args.dtype_list[0])][1], Queries(texts, 0).get(0), args.burst))
    finally:
        for process, _ in services.values():
            process.terminate()
            process.wait(30)
    return list(results.values()), info


def text_parity(reference_url: str, url: str, texts: list[dict], n: int = 64) -> float:
    """Lowest cosine, over the first ``n`` text queries (with their instructions), of a service's
    query vectors to the reference service's."""
    import numpy as np

    rows = []
    for base in (reference_url, url):
        vectors = []
        for query in texts[:n]:
            body = {"input": query["data"]["text"], "input_type": "query", "instruction": query["data"]["instruction"]}
            vectors.append(httpx.post(f"{base}/v1/embeddings", json=body, timeout=60).json()["data"][0]["embedding"])
        rows.append(np.asarray(vectors, dtype=np.float64))
    a, b = (r / np.linalg.norm(r, axis=1, keepdims=True) for r in rows)
    return float((a * b).sum(axis=1).min())


def merge(results: dict[tuple[str, str, str, int], Result], result: Result) -> None:
    key = result.key
    if key in results:
        results[key].samples += result.samples
        results[key].wall_s += result.wall_s
    else:
        results[key] = result


def warm_up(url: str, texts: list[dict], images: list[dict]) -> None:
    """First calls load lazily (and a batch of each size compiles nothing, but allocates)."""
    with httpx.Client(timeout=120) as client:
        for n in range(WARM_UP):
            for pool in (texts, images):
                one_request(client, url, Queries(pool, salt=900_000).get(n))


# --------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def num(value: float, digits: int = 0) -> str:
    """A table cell: '–' where there was nothing to measure."""
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


HEADER = ("| mode | dtype | queries | clients | requests | ok | p50 ms | p99 ms | ok/s | encode ms (server, mean) | "
          "search ms (server, mean) | batch items (mean) | 503 | 503 p50 ms | other errors |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def row(r: Result) -> str:
    ok = r.ok()
    lat = r.latencies_ms()
    refused = [s.seconds * 1000 for s in r.refused()]
    batch = [s.batch_items for s in ok if s.batch_items is not None]
    return (f"| {r.mode} | {r.dtype} | {r.kind} | {r.clients} | {len(r.samples)} | {len(ok)} | "
            f"{num(percentile(lat, 50))} | "
            f"{num(percentile(lat, 99))} | {num(r.throughput(), 1)} | "
            f"{num(mean([s.encode_ms for s in ok if s.encode_ms]), 1)} | "
            f"{num(mean([s.search_ms for s in ok if s.search_ms]), 1)} | {num(mean(batch), 1)} | {len(refused)} | "
            f"{num(percentile(refused, 50))} | {r.other_errors()} |")


RATIO_HEADER = ("| dtype | queries | clients | throughput batched/unbatched | p50 batched/unbatched | "
                "p99 batched/unbatched | p99 batched ms | p99 target ms | target met |\n"
                "|---|---|---:|---:|---:|---:|---:|---:|---|")
DTYPE_HEADER = ("| mode | dtype | queries | clients | throughput / float32 | p50 / float32 | p99 / float32 |\n"
                "|---|---|---|---:|---:|---:|---:|")


def dtype_rows(results: list[Result]) -> list[str]:
    """Each reduced dtype against float32, same mode, kind and clients (measured in the same run)."""
    by_key = {r.key: r for r in results}
    rows = []
    for (mode, dtype, kind, clients), r in by_key.items():
        base = by_key.get((mode, "float32", kind, clients))
        if dtype == "float32" or base is None:
            continue
        rows.append(f"| {mode} | {dtype} | {kind} | {clients} | {ratio(r.throughput(), base.throughput())} | "
                    f"{ratio(percentile(r.latencies_ms(), 50), percentile(base.latencies_ms(), 50))} | "
                    f"{ratio(percentile(r.latencies_ms(), 99), percentile(base.latencies_ms(), 99))} |")
    return rows


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 and not (math.isnan(a) or math.isnan(b)) else "n/a"


def ratio_rows(results: list[Result]) -> list[str]:
    """Batched against unbatched per level. The p99 target (issue 18): at most 2 x the single-client
    p99 x (clients / throughput ratio), the single-client p99 being the unbatched one."""
    by_key = {r.key: r for r in results}
    rows = []
    for (mode, dtype, kind, clients), batched in by_key.items():
        unbatched = by_key.get(("unbatched", dtype, kind, clients))
        single = by_key.get(("unbatched", dtype, kind, min(c for m, d, k, c in by_key if k == kind and d == dtype)))
        if mode != "batched" or unbatched is None or single is None:
            continue
        speedup = batched.throughput() / unbatched.throughput() if unbatched.throughput() > 0 else float("nan")
        p99 = percentile(batched.latencies_ms(), 99)
        target = 2 * percentile(single.latencies_ms(), 99) * clients / speedup if speedup > 0 else float("nan")
        met = "n/a" if math.isnan(target) or math.isnan(p99) else ("yes" if p99 <= target else "no")
        rows.append(f"| {dtype} | {kind} | {clients} | {ratio(batched.throughput(), unbatched.throughput())} | "
                    f"{ratio(percentile(batched.latencies_ms(), 50), percentile(unbatched.latencies_ms(), 50))} | "
                    f"{ratio(p99, percentile(unbatched.latencies_ms(), 99))} | {num(p99)} | {num(target)} | {met} |")
    return rows


def failures(results: list[Result]) -> list[str]:
    problems = []
    for r in results:
        if r.kind != "burst" and not r.ok():
            problems.append(f"{r.mode} {r.kind} x{r.clients}: no answered query")
        if r.other_errors():
            problems.append(f"{r.mode} {r.kind} x{r.clients}: {r.other_errors()} errors other than 503")
    return problems


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/bundled", help="the bundled benchmark (M-BEIR layout)")
    parser.add_argument("--index", default="runs/serve-load/index", help="retrieval directory (built if missing)")
    parser.add_argument("--encoder", default="cpu-default", help="encoder spec used when building the index")
    parser.add_argument("--cache", default="runs/cache/pools", help="pool embedding cache of the evaluation")
    parser.add_argument("--levels", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--kinds", default="text,image", help="query kinds: text, image or both")
    parser.add_argument("--modes", default="unbatched,batched", help="service modes to compare")
    parser.add_argument("--dtypes", default="float32", help="service dtypes (mmembed serve --dtype) to compare")
    parser.add_argument("--threads", type=int, help="mmembed serve --threads (default: torch's choice)")
    parser.add_argument("--requests", type=int, default=64, help="answered requests per level (at least 4 per client)")
    parser.add_argument("--seconds", type=float, default=20.0, help="most seconds per level, kind, mode and round")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each level per mode, alternating the modes")
    parser.add_argument("--workers", type=int, default=2, help="service decoding workers")
    parser.add_argument("--queue-size", type=int, default=64, help="service queue size")
    parser.add_argument("--batch-max-items", type=int, default=32, help="batched mode: most items per encoder call")
    parser.add_argument("--batch-max-wait-ms", type=float, default=5.0, help="batched mode: longest wait")
    parser.add_argument("--burst", type=int, default=0, help="simultaneous requests of an overload burst (0: none)")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    args = parser.parse_args()
    args.level_list = [int(x) for x in args.levels.split(",")]
    args.kind_list = [k for k in args.kinds.split(",") if k]
    args.mode_list = [m for m in args.modes.split(",") if m]
    args.dtype_list = [d for d in args.dtypes.split(",") if d]
    if not set(args.dtype_list) <= {"float32", "bfloat16"} or not args.dtype_list:
        parser.error("--dtypes takes float32 and/or bfloat16")
    if not set(args.kind_list) <= {"text", "image"} or not set(args.mode_list) <= {"batched", "unbatched"}:
        parser.error("--kinds takes text and/or image; --modes takes batched and/or unbatched")
    if min(args.level_list) < 1 or args.requests < 1 or args.rounds < 1:
        parser.error("--levels, --requests and --rounds must be positive")
    return args


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    data = Path(args.data)
    if not (data / "query").is_dir():
        logger.error("no benchmark at %s: build it with 'mmembed data build %s' (or --subset)", data, data)
        return 2
    texts, images = load_queries(data)
    if not texts or not images:
        logger.error("%s has no test queries of %s or %s", data, TEXT_TASK, IMAGE_TASK)
        return 2
    index = ensure_index(data, Path(args.index), Path(args.cache), args.encoder)
    results, info = run_all(index, texts, images, args)
    report(results, info, args)
    problems = failures(results)
    for problem in problems:
        logger.error("%s", problem)
    return 1 if problems else 0


def report(results: list[Result], info: dict, args: argparse.Namespace) -> None:
    env = (f"{os.cpu_count()} CPU cores (clients on the same machine); workers={args.workers}, "
           f"queue_size={args.queue_size}; batched: batch_max_items={args.batch_max_items}, "
           f"batch_max_wait_ms={args.batch_max_wait_ms:g}")
    print(f"\nencoder {info.get('encoder')} ({info.get('encoder_id')}), {info.get('count')} candidates of "
          f"{Path(args.data)}; {env}\n")
    print(HEADER)
    for r in results:
        print(row(r))
    rows = ratio_rows(results)
    if rows:
        print("\n" + RATIO_HEADER)
        print("\n".join(rows))
    rows = dtype_rows(results)
    if rows:
        print("\n" + DTYPE_HEADER)
        print("\n".join(rows))
    for dtype, cosine in info.get("parity", {}).items():
        print(f"\n{dtype} text query vectors: lowest cosine to float32's {cosine:.6f} (first 64 text queries)")
    for dtype, precision in info.get("precisions", {}).items():
        print(f"--dtype {dtype}: encodes {precision}")
    print(f"torch threads per service: {args.threads or 'torch default'}; the machine may be shared with other "
          "jobs: compare the ratios, measured in the same run")


if __name__ == "__main__":
    sys.exit(main())
