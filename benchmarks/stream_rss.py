"""Peak RSS of encode, index build and evaluate on a 1M-candidate text pool, streamed against the old way.

Usage::

    nice -n 10 python benchmarks/stream_rss.py                       # 1,000,000 candidates x 64 dims
    python benchmarks/stream_rss.py --candidates 100000 --dim 32     # quicker

Each step runs in a fresh process that reports its own peak RSS (``VmHWM``), next to the
same process's RSS right after its imports (the interpreter and libraries: the overhead no
streaming can remove) and next to its peer, the old way of doing that step, measured in the same
run:

* ``encode``: ``encode_pool`` now streams the pool file chunk by chunk; the old code read every
  candidate into a list first (``read_candidates``), measured here as that read alone (a lower
  bound of the old step, which also held the encoder's batches).
* ``evaluate``: ``mmembed evaluate --embeddings --query-embeddings`` now streams the store
  through the exact search under ``--memory-limit``; the old code loaded the whole store as
  float32 (``load_embedded_pool``) and copied it into a FAISS Flat index, measured as exactly that.
* ``index build``: ``--from-embeddings`` into a FAISS Flat float16 index (holds the vectors, by
  design) and into an exact streamed index (holds none).

The encoder is a hashing encoder (a seeded random unit vector per text), since what is measured
is the memory around it, not a model. The target (issue 23): peak RSS no more than the vectors
being searched plus a bounded overhead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class HashEncoder:
    """A deterministic stand-in encoder: each text's vector is seeded by its hash."""

    encoder_id = "hash-encoder"

    def __init__(self, dim: int):
        self.dim = dim

    def _vectors(self, texts) -> np.ndarray:
        seeds = [int.from_bytes(hashlib.blake2b((t or "").encode(), digest_size=8).digest(), "little") for t in texts]
        x = np.stack([np.random.default_rng(s).standard_normal(self.dim) for s in seeds]).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def encode_candidates(self, items, *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        return self._vectors([i.text for i in items])

    def encode_queries(self, items, instruction=None, *, batch_size: int = 64, show_progress: bool = False):
        return self._vectors([i.text for i in items])


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    """This process image's peak RSS (VmHWM: ``ru_maxrss`` would carry the forking parent's over exec)."""
    return _status("VmHWM")


def _current_rss() -> int:
    return _status("VmRSS")


def step(name: str, root: Path, dim: int) -> dict:
    """One measured step, in this (fresh) process."""
    import mmembed.cli.main  # noqa: F401  (every library the steps use, imported before the baseline)
    from mmembed.data.layout import MBEIRDirectory
    from mmembed.embeddings import encode_pool, load_embedded_pool
    from mmembed.index import FaissIndex
    from mmembed.index.directory import build_retrieval_directory

    pool = MBEIRDirectory(root).global_pool("test")
    baseline = _current_rss()
    started = time.perf_counter()
    if name == "encode":
        encode_pool(HashEncoder(dim), pool, root / "encoded", dtype="float16", chunk_size=4096, batch_size=4096)
    elif name == "encode-old-read":
        from mmembed.data.mbeir import read_candidates

        candidates = read_candidates(pool)
        assert candidates
    elif name == "evaluate":
        from mmembed.cli.main import main

        assert main(["evaluate", str(root), "--embeddings", str(root / "embeddings"), "--query-embeddings",
                     str(root / "query-embeddings"), "--memory-limit", "256MB", "--out", str(root / "out")]) == 0
    elif name == "evaluate-old":
        embedded = load_embedded_pool(root / "embeddings", pool)
        index = FaissIndex(dim)
        index.add(embedded.ids, embedded.vectors)
    elif name in ("index-faiss-fp16", "index-exact"):
        backend, dtype = ("faiss", "float16") if name == "index-faiss-fp16" else ("exact", "float32")
        build_retrieval_directory(pool, root / name, encoder_spec="hash", embeddings=root / "embeddings",
                                  backend=backend, dtype=dtype)
    else:
        raise SystemExit(f"unknown step {name}")
    return {"step": name, "seconds": round(time.perf_counter() - started, 1), "baseline_rss": baseline,
            "peak_rss": peak_rss()}


STEPS = ("encode-old-read", "encode", "evaluate-old", "evaluate", "index-faiss-fp16", "index-exact")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=2_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--root", help="work directory (default: a temporary one)")
    p.add_argument("--step", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step:
        print(json.dumps(step(args.step, Path(args.root), args.dim)))
        return
    from mmembed.testing.synthetic import write_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        started = time.perf_counter()
        write_synthetic(root, candidates=args.candidates, queries=args.queries, dim=args.dim, chunk_size=4096,
                        dtype="float16", local_size=10_000, noise=3.0)
        print(f"wrote {args.candidates:,} candidates x {args.dim} (float16) in {time.perf_counter() - started:.0f}s")
        stored = args.candidates * args.dim * 2
        print(f"vectors: {stored / 2**20:.0f} MiB float16 on disk, {2 * stored / 2**20:.0f} MiB as float32\n")
        print("| step | seconds | RSS after imports (MiB) | peak RSS (MiB) | peak - imports (MiB) |")
        print("|---|---:|---:|---:|---:|")
        for name in STEPS:
            out = subprocess.run([sys.executable, __file__, "--step", name, "--root", str(root), "--dim",
                                  str(args.dim)], capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            base, peak = row["baseline_rss"] / 2**20, row["peak_rss"] / 2**20
            print(f"| {name} | {row['seconds']} | {base:.0f} | {peak:.0f} | {peak - base:.0f} |", flush=True)


if __name__ == "__main__":
    main()
