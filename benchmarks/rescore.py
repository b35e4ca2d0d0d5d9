"""A D-dimension first pass rescored with full vectors (``index build --dims D --rescore``) against exact
full-dimension search: memory of the searched index, queries per second, recall@10.

Usage::

    nice -n 10 python benchmarks/rescore.py --model runs/mrl/mrl/final --data data/bundled --split val \\
        --dims 96 --depth 100

The pool (the split's global pool) and the queries (up to ``--queries-per-task`` of every task of
the split, with the instructions ``evaluate`` chooses) are embedded with ``--model``;
``--pool-cache`` (an evaluation's pool-embedding cache of this model: the union of its pools) or
``--pool-vectors``/``--pool-ids`` reuse vectors already embedded. Both indexes are built from the same vectors:

* **exact**: a FAISS ``Flat`` index of the full vectors (exact inner product; the reference);
* **rescored**: :class:`mmembed.index.rescore.RescoredIndex`, a FAISS ``Flat`` index of the
  renormalised ``D``-prefixes, whose top ``depth`` per query are rescored with the full vectors
  read from a memory-mapped file on disk.

Memory is the searched index's vector bytes (FAISS ``sa_code_size`` x count); the full vectors of
the rescored index stay on disk (their size is printed too). QPS is measured one query at a time
(a service's case) and as one batch, one thread each, the two indexes alternating over
``--repeats`` rounds (median; each timing after an untimed warm-up call). Recall@10 is the share
of exact search's top 10 found in the rescored top 10. Printed ratios: exact / rescored memory,
rescored / exact QPS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def embed_pool(model, data: Path, split: str) -> tuple[list[str], np.ndarray]:
    from mmembed.data.layout import MBEIRDirectory
    from mmembed.data.mbeir import read_candidates

    directory = MBEIRDirectory(data)
    candidates = read_candidates(directory.global_pool(split))
    return [c.did for c in candidates], model.encode_candidates(candidates, image_root=directory.root,
                                                                batch_size=64, show_progress=True)


def embed_queries(model, data: Path, split: str, per_task: int) -> np.ndarray:
    from mmembed.data.layout import MBEIRDirectory
    from mmembed.data.mbeir import read_queries
    from mmembed.embeddings.queries import choose_instructions

    directory = MBEIRDirectory(data)
    registry = directory.instructions()
    blocks = []
    for task in directory.select_tasks(split, None):
        queries = read_queries(task.queries)[:per_task]
        instructions = choose_instructions(queries, task, registry, "random", 0)  # as evaluate chooses them
        blocks.append(model.encode_queries(queries, instruction=instructions, image_root=directory.root,
                                           batch_size=64))
    return np.concatenate(blocks)


def cached_union(folder: Path) -> tuple[list[str], np.ndarray]:
    """Every pool in a pool-embedding cache folder, each id once (pool files overlap)."""
    seen: dict[str, int] = {}
    blocks = []
    for ids_file in sorted(folder.glob("*.ids.json")):
        ids = json.loads(ids_file.read_text())["ids"]
        vectors = np.load(ids_file.with_name(ids_file.name.removesuffix(".ids.json") + ".vectors.npy"))
        keep = [i for i, did in enumerate(ids) if did not in seen]
        for i in keep:
            seen[ids[i]] = len(seen)
        blocks.append(vectors[keep])
    return list(seen), np.concatenate(blocks).astype(np.float32)


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls, after one untimed call (first-touch costs are not the search's)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="data/bundled", type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--pool-vectors", type=Path, help=".npy of the pool's vectors (with --pool-ids)")
    parser.add_argument("--pool-ids", type=Path, help="JSON list of the pool's ids, row by row")
    parser.add_argument("--pool-cache", type=Path, help="an evaluation's pool-cache folder of this model: the union "
                                                        "of the pools embedded there (each <key>.ids.json with its "
                                                        "<key>.vectors.npy) is the pool")
    parser.add_argument("--queries-per-task", type=int, default=200)
    parser.add_argument("--image-cache-dir", help="the model's image-feature cache (its image_cache_dir setting)")
    parser.add_argument("--dims", type=int, default=96)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--single", type=int, default=300, help="queries timed one at a time")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import faiss
    import torch

    import mmembed
    from mmembed.index import FaissIndex
    from mmembed.index.rescore import RescoredIndex

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    model = mmembed.load(args.model, **({"image_cache_dir": args.image_cache_dir} if args.image_cache_dir else {}))
    if args.pool_cache:
        ids, pool = cached_union(args.pool_cache)
    elif args.pool_vectors:
        ids, pool = json.loads(args.pool_ids.read_text()), np.load(args.pool_vectors)
    else:
        ids, pool = embed_pool(model, args.data, args.split)
    queries = embed_queries(model, args.data, args.split, args.queries_per_task)
    n, dim = pool.shape
    print(f"model {args.model} (trained dimensions {model.dimensions}); pool {n} x {dim}; {len(queries)} queries; "
          f"first pass {args.dims} dims, {args.depth} rescored per query; k={args.k}")

    exact = FaissIndex(dim)
    exact.add(ids, pool)
    with tempfile.TemporaryDirectory() as work:
        chunks = ((ids[s:s + 8192], pool[s:s + 8192]) for s in range(0, n, 8192))
        rescored = RescoredIndex.build(chunks, count=n, dim=dim, short_dim=args.dims, depth=args.depth, workdir=work)
        truth = exact.search(queries, args.k).ids
        found = rescored.search(queries, args.k).ids
        recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, truth)]))
        first = RescoredIndex(rescored.short, None, dim=dim, depth=0).search(queries, args.k).ids
        first_recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(first, truth)]))

        single = queries[:args.single]
        indexes = {"exact": exact, "rescored": rescored}
        seconds: dict[str, dict[str, list[float]]] = {name: {"single": [], "batch": []} for name in indexes}
        for _ in range(args.repeats):  # alternating, so that a busy moment of the machine hits both
            for name, index in indexes.items():
                seconds[name]["single"].append(timed(lambda index=index: [index.search(q[None], args.k)
                                                                          for q in single], 1))
                seconds[name]["batch"].append(timed(lambda index=index: index.search(queries, args.k), 1))
        results = {name: {"single_qps": len(single) / statistics.median(s["single"]),
                          "batch_qps": len(queries) / statistics.median(s["batch"])} for name, s in seconds.items()}
        exact_bytes = exact.faiss_index.sa_code_size() * n
        print(f"memory of the searched index: exact {exact_bytes / 2**20:.1f} MiB, rescored first pass "
              f"{rescored.memory_bytes / 2**20:.1f} MiB (full vectors on disk: "
              f"{Path(rescored._full_path).stat().st_size / 2**20:.1f} MiB, memory-mapped)")
    for name, r in results.items():
        print(f"{name:>9}: {r['single_qps']:8.1f} QPS one query at a time, {r['batch_qps']:9.1f} QPS in one batch")
    print(f"memory ratio (exact / rescored): {exact_bytes / rescored.memory_bytes:.2f}")
    single_ratio = results["rescored"]["single_qps"] / results["exact"]["single_qps"]
    batch_ratio = results["rescored"]["batch_qps"] / results["exact"]["batch_qps"]
    print(f"QPS ratio (rescored / exact): one at a time {single_ratio:.2f}, batch {batch_ratio:.2f}")
    print(f"recall@{args.k} against exact {dim}-d search: rescored {recall:.4f}; first pass alone {first_recall:.4f}")


if __name__ == "__main__":
    main()
