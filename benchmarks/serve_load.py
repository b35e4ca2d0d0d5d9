"""Load test of the search service: latency and errors at 1, 8 and 32 concurrent clients.

Usage::

    python benchmarks/serve_load.py                          # cpu-default over the bundled global test pool
    python benchmarks/serve_load.py --levels 1,8 --requests 40 --seconds 20

What it does:

1. builds (once, then reuses) a retrieval directory of the bundled global test pool with the
   untrained ``cpu-default`` encoder (pool embeddings come from the evaluation's cache when
   present, ``--cache``);
2. starts ``mmembed serve`` in a subprocess on a free localhost port and waits for readiness;
3. for each concurrency level and each query kind (text queries of emoji_task0, image queries of
   emoji_task3), runs that many closed-loop clients until ``--requests`` queries are answered
   (a query answered 503 is retried after its ``Retry-After``) or ``--seconds`` pass, and reports
   p50/p99 latency of the answered requests, their count, 503s, other errors, throughput, and the
   server-side encode and search times (``timings_ms``). Every level gets queries of its own, so
   no image query is answered from the encoder's feature cache;
4. an overload burst: ``--burst`` simultaneous requests against a service whose queue holds
   ``--queue-size``: how many were refused with 503 and how fast those answers came.

The table is Markdown. Latency is measured by the client (end to end, over HTTP on localhost).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mmembed.data.layout import MBEIRDirectory
from mmembed.data.mbeir import read_queries

logger = logging.getLogger("serve_load")

TEXT_TASK, IMAGE_TASK = "emoji_task0", "emoji_task3"
WARM_UP = 2


@dataclass
class Sample:
    status: int
    seconds: float
    encode_ms: float | None = None
    search_ms: float | None = None
    retry_after: float | None = None


@dataclass
class Result:
    kind: str
    clients: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)

    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 200]

    def count(self, status: int) -> int:
        return sum(s.status == status for s in self.samples)


# --------------------------------------------------------------------------- set-up


def ensure_index(data: Path, out: Path, cache: Path) -> Path:
    if (out / "retrieval.json").is_file():
        logger.info("reusing the index %s", out)
        return out
    from mmembed.encoders.registry import load_encoder
    from mmembed.retrieval import Retriever

    directory = MBEIRDirectory(data)
    started = time.perf_counter()
    Retriever.build(load_encoder("cpu-default"), directory.global_pool("test"), out, encoder_spec="cpu-default",
                    image_root=directory.root, instructions_path=directory.instructions_path, cache_dir=cache,
                    show_progress=sys.stderr.isatty())
    logger.info("built the index %s in %.0f s", out, time.perf_counter() - started)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(index: Path, port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "mmembed.cli.main", "-q", "serve", str(index), "--port", str(port),
               "--workers", str(args.workers), "--queue-size", str(args.queue_size)]
    logger.info("starting: %s (log: %s)", " ".join(command), log)
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


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


def load_queries(data: Path, n: int) -> tuple[list[dict], list[dict]]:
    directory = MBEIRDirectory(data)
    registry = directory.instructions()
    texts, images = [], []
    for task_name, out in ((TEXT_TASK, texts), (IMAGE_TASK, images)):
        task = directory.task(task_name)
        for q in read_queries(task.queries)[:n]:
            fields = {"k": "10", "instruction": registry.prompts(q.dataset_id, q.modality, task.task.cand_modality)[0]}
            files = None
            if q.image:
                files = {"image": (Path(q.image).name, directory.images.resolve(q.image, q.qid).read_bytes())}
            if q.text:
                fields["text"] = q.text
            out.append({"data": fields, "files": files})
    return texts, images


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
    return Sample(200, seconds, timings["encode"], timings["search"])


def run_level(url: str, queries: list[dict], kind: str, clients: int, max_ok: int, seconds: float) -> Result:
    """``clients`` closed-loop clients until ``max_ok`` answers or ``seconds``. A client answered 503
    retries the same query after its ``Retry-After`` (as a polite client does); the 503 is counted."""
    result = Result(kind, clients, 0.0)
    lock = threading.Lock()
    taken = [0]
    deadline = time.perf_counter() + seconds

    def client_loop() -> None:
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    if taken[0] >= max_ok:
                        return
                    query = queries[taken[0] % len(queries)]
                    taken[0] += 1
                while time.perf_counter() < deadline:
                    sample = one_request(client, url, query)
                    with lock:
                        result.samples.append(sample)
                    if sample.status != 503:
                        break
                    time.sleep(min(sample.retry_after or 1.0, max(0.0, deadline - time.perf_counter())))
                if time.perf_counter() >= deadline:
                    return

    result.wall_s = run_threads(client_loop, clients)
    return result


def run_threads(target, n: int) -> float:
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
    result = Result("burst", n, 0.0)
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


# --------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def row(r: Result) -> str:
    ok = r.ok()
    lat = [s.seconds * 1000 for s in ok]
    enc = [s.encode_ms for s in ok if s.encode_ms is not None]
    sea = [s.search_ms for s in ok if s.search_ms is not None]
    refused = [s.seconds * 1000 for s in r.samples if s.status == 503]
    other = len(r.samples) - len(ok) - len(refused)
    mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
    return (f"| {r.kind} | {r.clients} | {len(r.samples)} | {len(ok)} | {percentile(lat, 50):.0f} | "
            f"{percentile(lat, 99):.0f} | {mean(enc):.1f} | {mean(sea):.1f} | {len(ok) / r.wall_s:.1f} | "
            f"{len(refused)} | {percentile(refused, 50):.0f} | {other} |")


HEADER = ("| queries | clients | requests | ok | p50 ms | p99 ms | encode ms (server, mean) | "
          "search ms (server, mean) | ok/s | 503 | 503 p50 ms | other errors |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/bundled", help="the bundled benchmark (M-BEIR layout)")
    parser.add_argument("--index", default="runs/serve-load/index", help="retrieval directory (built if missing)")
    parser.add_argument("--cache", default="runs/cache/pools", help="pool embedding cache of the evaluation")
    parser.add_argument("--levels", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=64, help="answered requests per level and query kind")
    parser.add_argument("--seconds", type=float, default=25.0, help="most seconds per level and query kind")
    parser.add_argument("--workers", type=int, default=1, help="service encoder workers")
    parser.add_argument("--queue-size", type=int, default=16, help="service queue size")
    parser.add_argument("--burst", type=int, default=64, help="simultaneous requests of the overload burst")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    levels = [int(x) for x in args.levels.split(",")]
    index = ensure_index(Path(args.data), Path(args.index), Path(args.cache))
    texts, images = load_queries(Path(args.data), args.requests * len(levels) + WARM_UP)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_service(index, port, args, Path(args.index).parent / "serve.log")
    try:
        logger.info("service ready after %.1f s", wait_ready(url, process, args.ready_timeout))
        with httpx.Client(timeout=120) as client:  # warm-up: first calls load lazily
            for query in texts[-WARM_UP:] + images[-WARM_UP:]:
                one_request(client, url, query)
        results = []
        for i, clients in enumerate(levels):
            for kind, queries in (("text", texts), ("image", images)):
                logger.info("%s queries, %d clients ...", kind, clients)
                own = queries[i * args.requests:(i + 1) * args.requests]
                results.append(run_level(url, own, kind, clients, args.requests, args.seconds))
        logger.info("overload burst of %d ...", args.burst)
        results.append(burst(url, texts[0], args.burst))
    finally:
        process.terminate()
        process.wait(30)
    env = f"{os.cpu_count()} CPU cores, workers={args.workers}, queue_size={args.queue_size}"
    print(f"\ncpu-default (untrained) over {Path(args.data)} global test pool; {env}\n")
    print(HEADER)
    for r in results:
        print(row(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
