"""Training throughput and peak memory of the CPU default model, plain vs GradCache, in one run.

Each configuration runs in its own subprocess, so every peak RSS is that configuration's own:

- ``plain-32``: global batch 32, each side embedded in one forward pass;
- ``gradcache-512``: global batch 512 (16x the negatives) through GradCache in chunks of 32;
- ``plain-512`` (with ``--plain-512``): batch 512 without GradCache, for what GradCache saves.

Target: peak RSS of gradcache-512 at most 1.25x that of plain-32. What trains is the projector
and the top three MiniLM layers in full (more trainable state than the LoRA of
``recipes/cpu-default/stage1.yaml``: the harder case for memory). The features of
every training image are computed into a shared cache directory first (a child process of its
own), and the in-memory feature cache is capped, so the figures are those of training rather than
of EfficientNet or of the cache. plain-32 runs one untimed warm-up step, then ``--steps`` timed
ones; the batch-512 configurations run ``--big-steps`` timed steps.

    .venv/bin/python benchmarks/train_throughput.py [--data data/bundled] [--steps 3] [--plain-512]

Without ``--data`` the bundled benchmark's subset is built into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {"plain-32": (32, None), "gradcache-512": (512, 32), "plain-512": (512, None)}
TRAIN_PATTERNS = [r"^text\.model\.encoder\.layer\.[345]\."]


def prefill(data: str, cache: str) -> dict:
    """Compute the features of every image of the training queries and pool into ``cache``."""
    from mmembed.data.layout import MBEIRDirectory
    from mmembed.data.mbeir import read_candidates, read_queries
    from mmembed.encoders.base import Item
    from mmembed.encoders.registry import load_encoder

    directory = MBEIRDirectory(data)
    paths = {r.image for r in read_candidates(directory.global_pool("train")) if r.image}
    for task in directory.tasks("train"):
        paths |= {q.image for q in read_queries(task.queries) if q.image}
    encoder = load_encoder("cpu-default", image_cache_dir=cache, image_cache_bytes=64 * 2**20)
    items = [Item(p, None, directory.images.ref(p, p)) for p in sorted(paths)]
    start = time.perf_counter()
    encoder.encode_candidates(items, batch_size=64)
    return {"images": len(items), "seconds": time.perf_counter() - start}


def child(name: str, data: str, cache: str, steps: int, threads: int) -> dict:
    """Train ``steps`` timed steps (plain-32: after one untimed warm-up step) and report the figures."""
    import torch

    from mmembed.config import from_dict
    from mmembed.training.config import TrainConfig
    from mmembed.training.trainer import Trainer

    batch, chunk = CONFIGS[name]
    with tempfile.TemporaryDirectory() as out:
        config = from_dict(TrainConfig, {
            "output_dir": out, "model": {"encoder": "cpu-default", "train_patterns": TRAIN_PATTERNS,
                                         "settings": {"image_cache_dir": cache, "image_cache_bytes": 64 * 2**20}},
            "data": {"mbeir": [{"root": data}]},
            "train": {"global_batch_size": batch, "chunk_size": chunk, "max_steps": steps + 1,
                      "num_threads": threads},
            "optim": {"lr": 1e-4}, "logging": {"progress": False, "plot": False}})
        trainer = Trainer(config)
        rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        iterator = iter(trainer.loader)
        if batch <= 32:
            trainer.train_step(next(iterator))  # warm-up: first-call costs
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            trainer.train_step(next(iterator))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"config": name, "batch": batch, "chunk": chunk, "steps": steps, "threads": torch.get_num_threads(),
            "samples_per_s": steps * batch / wall, "cpu_s_per_sample": cpu / (steps * batch),
            "rss_after_load_mb": rss_loaded, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(name: str, args: argparse.Namespace, data: str, cache: str) -> dict:
    steps = args.steps if name == "plain-32" else args.big_steps
    cmd = [sys.executable, __file__, "--child", name, "--data", data, "--cache", cache, "--steps", str(steps),
           "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="M-BEIR-layout directory (default: build the bundled subset)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of plain-32")
    parser.add_argument("--big-steps", type=int, default=1, help="timed steps of the batch-512 configurations")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--plain-512", action="store_true", help="also run batch 512 without GradCache (slow)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--child", choices=[*sorted(CONFIGS), "prefill"], help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "prefill":
        print(json.dumps(prefill(args.data, args.cache)))
        return
    if args.child:
        print(json.dumps(child(args.child, args.data, args.cache, args.steps, args.threads)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from mmembed.data.bundled import build

            data = str(build(Path(tmp) / "bundled", subset=True).root)
        cache = str(Path(tmp) / "features")
        filled = run_child("prefill", args, data, cache)
        print(f"image features of {filled['images']} training images cached in {filled['seconds']:.0f} s")
        names = ["plain-32", "gradcache-512"] + (["plain-512"] if args.plain_512 else [])
        rows = [run_child(name, args, data, cache) for name in names]
    base = rows[0]["peak_rss_mb"]
    print(f"{'config':<15}{'batch':>6}{'chunk':>6}{'samples/s':>11}{'cpu ms/sample':>15}{'RSS loaded':>12}"
          f"{'peak RSS':>10}{'vs plain-32':>13}")
    for r in rows:
        print(f"{r['config']:<15}{r['batch']:>6}{str(r['chunk'] or '-'):>6}{r['samples_per_s']:>11.1f}"
              f"{1000 * r['cpu_s_per_sample']:>15.1f}{r['rss_after_load_mb']:>10.0f}MB{r['peak_rss_mb']:>8.0f}MB"
              f"{r['peak_rss_mb'] / base:>12.2f}x")
    ratio = rows[1]["peak_rss_mb"] / base
    print(f"GradCache at batch 512 peaks at {ratio:.2f}x the RSS of plain batch 32 (target <= 1.25x): "
          f"{'OK' if ratio <= 1.25 else 'ABOVE TARGET'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
