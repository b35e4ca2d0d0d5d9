"""Evaluation before and after the one-pass exact search, on the same synthetic split, in the same run.

Usage::

    git archive 4711b3b mmembed | tar -x -C /tmp/old       # the code before issue 23
    python benchmarks/sim_5m.py --scale 0.02 --root /tmp/sim02  # a synthetic split (or any from it)
    nice -n 10 python benchmarks/eval_before_after.py --old-tree /tmp/old --root /tmp/sim02

Each side runs in a fresh process: the old code (a FAISS Flat copy of the pool per task, mode and
pool; the pool loaded whole as float32) with a stand-in encoder that returns the split's stored
query vectors, and the new code (``--embeddings`` + ``--query-embeddings``, one streamed exact
search). Prints each side's wall time and peak RSS (VmHWM), the ratio, and whether every score of
``results.json`` is identical.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


class StoredQueries:
    """An encoder stand-in: the split's stored query vectors by qid and instruction (none or chosen)."""

    def __init__(self, root: Path, dim: int):
        self.encoder_id, self.dim = f"synthetic-{dim}", dim
        self.vectors = {}
        for path in (root / "query-embeddings").glob("*.npz"):
            mode = path.name.split(".")[-2]
            with np.load(path) as z:
                self.vectors[mode] = dict(zip(z["qids"].tolist(), z["vectors"]))

    def encode_queries(self, items, instruction=None, **kwargs):
        chosen = instruction if isinstance(instruction, list) else [instruction] * len(items)
        return np.stack([self.vectors["none" if c is None else "random"][i.id] for i, c in zip(items, chosen)])

    def encode_candidates(self, items, **kwargs):
        raise AssertionError("the pool's vectors come from the store")


def side(which: str, root: Path, dim: int, memory_limit: str) -> dict:
    from mmembed.eval.mbeir_runner import EvalConfig, run_evaluation

    started = time.perf_counter()
    if which == "old":
        results = run_evaluation(StoredQueries(root, dim), root,
                                 EvalConfig(embeddings_dir=str(root / "embeddings"), show_progress=False))
    else:
        results = run_evaluation(None, root, EvalConfig(embeddings_dir=str(root / "embeddings"),
                                                        query_embeddings_dir=str(root / "query-embeddings"),
                                                        memory_limit=memory_limit, show_progress=False))
    status = Path("/proc/self/status").read_text()
    return {"seconds": round(time.perf_counter() - started, 1),
            "peak_mib": int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) // 1024,
            "scores": [(r.task, r.pool, r.instructions, r.scores) for r in results.results]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-tree", required=True, help="a directory holding the old 'mmembed' package")
    p.add_argument("--root", required=True, help="a synthetic split (benchmarks/sim_5m.py writes one)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--memory-limit", default="1GB")
    p.add_argument("--side", choices=("old", "new"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        if args.side == "old":
            sys.path.insert(0, args.old_tree)
        print(json.dumps(side(args.side, Path(args.root), args.dim, args.memory_limit)))
        return
    runs = {}
    for which in ("old", "new"):
        out = subprocess.run([sys.executable, __file__, "--side", which, *sys.argv[1:]], capture_output=True,
                             text=True, check=True).stdout
        runs[which] = json.loads(out.strip().splitlines()[-1])
        print(f"{which}: {runs[which]['seconds']} s, peak RSS {runs[which]['peak_mib']} MiB", flush=True)
    old, new = runs["old"], runs["new"]
    print(f"new / old: time {new['seconds'] / old['seconds']:.2f}, peak RSS {new['peak_mib'] / old['peak_mib']:.2f}; "
          f"scores identical: {old['scores'] == new['scores']}")


if __name__ == "__main__":
    main()
