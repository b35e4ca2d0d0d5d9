"""The M-BEIR global pool at full size, simulated: 5.6M candidates x 384 dims (float16 on disk), 190k queries.

Usage::

    nice -n 10 python benchmarks/sim_5m.py --root /data/sim            # full size: 4.3 GB of vectors
    python benchmarks/sim_5m.py --scale 0.1 --root /tmp/sim              # 560k candidates, 19k queries

Writes a synthetic split (:mod:`mmembed.testing.synthetic`: random candidate vectors, queries near
their positive, two instruction modes, a 10,000-candidate local pool) and runs
``mmembed evaluate DIR --embeddings E --query-embeddings Q --memory-limit M`` in a fresh process,
reporting its wall time, peak RSS (VmHWM), bytes read (``/proc/<pid>/io``: ``rchar`` = all reads,
``read_bytes`` = from the device, not the page cache), the exact search's passes and planned peak,
and the throughput (candidate-query pairs scored per second). It then prints the arithmetic that
projects the measured run to the full size, to 4,096 dimensions and to one GPU; the projection is
arithmetic on the measured rate, never a measurement. Results go to ``--json`` if given.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

FULL_CANDIDATES = 5_600_000
FULL_QUERIES = 190_000
MODES = 2  # random and no instruction: each query is searched twice
FULL_DIM = 4096


def _watch(pid: int, stop: threading.Event, out: dict) -> None:
    """Sample the child's /proc io and VmHWM until it exits (the last sample is its total)."""
    while not stop.is_set():
        try:
            io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
            status = Path(f"/proc/{pid}/status").read_text()
            hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
            out.update(rchar=int(io["rchar"]), read_bytes=int(io["read_bytes"]), peak_rss=hwm)
        except (OSError, StopIteration, ValueError):
            pass
        stop.wait(0.5)


def run_evaluate(root: Path, memory_limit: str) -> dict:
    command = [sys.executable, "-m", "mmembed.cli.main", "evaluate", str(root), "--embeddings",
               str(root / "embeddings"), "--query-embeddings", str(root / "query-embeddings"), "--memory-limit",
               memory_limit, "--out", str(root / "out"), "--set", "pools=[global,local]"]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    measured: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(child.pid, stop, measured), daemon=True)
    watcher.start()
    out, err = child.communicate()
    stop.set()
    watcher.join()
    if child.returncode:
        raise SystemExit(f"evaluate failed ({child.returncode}):\n{err[-3000:]}")
    measured["wall_seconds"] = round(time.perf_counter() - started, 1)
    results = json.loads((root / "out" / "results.json").read_text())
    measured["search"] = results["search"]
    measured["averages"] = results["averages"]
    return measured


def projection(candidates: int, queries: int, dim: int, measured: dict) -> list[str]:
    """The arithmetic from the measured run to the full pool, to 4,096 dims, and to one H100 (labelled)."""
    pairs = candidates * queries * MODES
    seconds = measured["search"]["seconds"]
    rate = pairs / seconds
    flops = 2 * dim * rate
    full_pairs = FULL_CANDIDATES * FULL_QUERIES * MODES
    lines = [
        f"measured: {pairs:.3g} candidate-query pairs in {seconds:.0f} s of exact search = {rate:.3g} pairs/s "
        f"= {flops / 1e9:.1f} GFLOP/s effective at {dim} dims (matrix products plus the top-k merge)",
        f"full size at {dim} dims, same rate: {full_pairs:.3g} pairs / {rate:.3g} = {full_pairs / rate / 3600:.1f} h",
        f"full size at {FULL_DIM} dims, if the rate per FLOP held: {full_pairs * 2 * FULL_DIM / flops / 3600:.0f} h "
        "on this 2-core CPU",
        f"vectors per pass at {FULL_DIM} dims, float16: {FULL_CANDIDATES * FULL_DIM * 2 / 1e9:.0f} GB "
        f"(at {dim} dims: {FULL_CANDIDATES * dim * 2 / 1e9:.1f} GB)",
        f"queries at {FULL_DIM} dims, float32, both modes: {FULL_QUERIES * MODES * FULL_DIM * 4 / 1e9:.1f} GB, and "
        f"their results (global and local, depth 50): {FULL_QUERIES * MODES * 100 * 84 / 1e9:.1f} GB; both are "
        "held for the whole search (it streams the candidates, not the queries), so --memory-limit must exceed "
        "about 10 GB, or the tasks are evaluated in groups (--set tasks=[...])",
        f"one H100 (not measured): {full_pairs * 2 * FULL_DIM:.3g} FLOP; at an assumed 400 TFLOP/s of bf16 matrix "
        f"product that is {full_pairs * 2 * FULL_DIM / 400e12:.0f} s of arithmetic; the 46 GB of float16 "
        "vectors fit in its 80 GB, so one pass, bounded by reading them (about 15 s at 3 GB/s from NVMe)",
    ]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="work directory (needs about 4.9 GB at full scale)")
    p.add_argument("--scale", type=float, default=1.0, help="share of the full candidate and query counts")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--memory-limit", default="2GB")
    p.add_argument("--reuse", action="store_true", help="keep the synthetic split of an earlier run in --root")
    p.add_argument("--json", help="write the measurements here")
    args = p.parse_args()
    from mmembed.testing.synthetic import write_synthetic

    candidates, queries = int(FULL_CANDIDATES * args.scale), int(FULL_QUERIES * args.scale)
    root = Path(args.root)
    if not (args.reuse and (root / "query-embeddings" / "queries.json").is_file()):
        started = time.perf_counter()
        write_synthetic(root, candidates=candidates, queries=queries, dim=args.dim, chunk_size=65_536,
                        dtype="float16", local_size=10_000, noise=3.0)
        print(f"wrote {candidates:,} candidates x {args.dim} and {queries:,} queries in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    measured = run_evaluate(root, args.memory_limit)
    search = measured["search"]
    print(f"evaluate: {measured['wall_seconds']} s wall, exact search {search['seconds']} s in "
          f"{search['exact_passes']} pass(es) over {candidates:,} vectors; peak RSS "
          f"{measured.get('peak_rss', 0) / 2**30:.2f} GiB (limit {search['memory_limit'] / 2**30:.2f} GiB, "
          f"planned {search['planned_peak_bytes'] / 2**30:.2f} GiB); read {measured.get('rchar', 0) / 1e9:.2f} GB "
          f"({measured.get('read_bytes', 0) / 1e9:.2f} GB from the device)")
    lines = projection(candidates, queries, args.dim, measured)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"candidates": candidates, "queries": queries, "dim": args.dim,
                                               "memory_limit": args.memory_limit, **measured,
                                               "projection": lines}, indent=1))


if __name__ == "__main__":
    main()
