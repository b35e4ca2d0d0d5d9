"""ANN benchmark on vectors with the structure of real embeddings: FAISS index types and Milvus Lite, one run.

Usage::

    python benchmarks/ann.py                       # 1,000,000 rows, every index type
    python benchmarks/ann.py --n 200000 --types flat,fp16,ivfpq,milvus

Data: real text embedded by the shipped model. ``--base`` WordNet noun glosses (the Debian
``wordnet-base`` package the bundled benchmark is built from) are embedded as candidates by
``cpu-default-stage3`` (384-d), and the first lemma of other synsets as queries; the vectors are
cached under ``--cache-dir`` so reruns skip the encoding. The base set is replicated with small
Gaussian noise (``--noise`` per dimension, renormalised) to ``--n`` rows, as issue 15 asks:
random unit vectors have no structure and every ANN recall on them is meaningless.

Every row of the table is measured in the same run and reported against exact Flat search of
the same run: build time, bytes per vector on disk, queries/s (best of ``--repeats``), and
recall@10 = the share of the exact top 10 an index returns.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from mmembed.index import FaissIndex

log = logging.getLogger("benchmarks.ann")
WORDNET = Path("/usr/share/wordnet/data.noun")
MODEL = "cpu-default-stage3"


@dataclass(frozen=True)
class Spec:
    key: str
    label: str
    factory: str
    dtype: str
    #: Search settings measured on the one built index, one table row each.
    sweeps: tuple[dict, ...] = ({},)
    #: Settings applied before the vectors are added (HNSW efConstruction).
    build_params: dict | None = None


@dataclass
class Row:
    label: str
    build_s: float
    bytes_per_vector: float
    qps: float
    recall_at_k: float


def specs(nlist: int, pq: int) -> list[Spec]:
    probes = ({"nprobe": 16}, {"nprobe": 64}, {"nprobe": 128})
    return [
        Spec("flat", "Flat (exact)", "Flat", "float32"),
        Spec("fp16", "Flat fp16", "Flat", "float16"),
        Spec("sq8", "SQ8", "SQ8", "float32"),
        Spec("hnsw", "HNSW32", "HNSW32", "float32", ({"efSearch": 64}, {"efSearch": 256}, {"efSearch": 1024})),
        Spec("hnswc", "HNSW32 efConstruction 200", "HNSW32", "float32",
             ({"efSearch": 64}, {"efSearch": 256}, {"efSearch": 1024}), {"efConstruction": 200}),
        Spec("ivf", f"IVF{nlist},Flat", f"IVF{nlist},Flat", "float32", probes),
        Spec("ivfpq", f"IVF{nlist},PQ{pq}", f"IVF{nlist},PQ{pq}", "float32", probes[:2]),
        # PQ to find candidates, their float16 vectors to re-rank the best 32 x k of them exactly
        Spec("ivfpqr", f"IVF{nlist},PQ{pq}+fp16 refine", f"IVF{nlist},PQ{pq},Refine(SQfp16)", "float32",
             tuple({**p, "k_factor_rf": 32} for p in probes)),
        Spec("milvus", "Milvus Lite", "milvus", "float32"),
    ]


# --- data ---------------------------------------------------------------------------------------

def wordnet_texts(limit: int, queries: int) -> tuple[list[str], list[str]]:
    """``limit`` noun glosses (candidates) and the first lemma of ``queries`` other synsets."""
    if not WORDNET.is_file():
        raise SystemExit(f"{WORDNET} not found: install the Debian package wordnet-base (make setup does)")
    glosses, lemmas = [], []
    with open(WORDNET, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" ") or "|" not in line:
                continue  # the licence header
            fields, gloss = line.split("|", 1)
            lemma = fields.split()[4].replace("_", " ")
            if len(glosses) < limit:
                glosses.append(f"{lemma}: {gloss.strip()}")
            elif len(lemmas) < queries:
                lemmas.append(lemma)
            else:
                break
    return glosses, lemmas


def embedded_base(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(candidates, queries) embedded by the shipped model, cached by size."""
    cache = args.cache_dir / f"wordnet-{MODEL}-{args.base}-{args.queries}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return z["base"], z["queries"]
    import torch

    from mmembed.encoders.base import Item
    from mmembed.encoders.registry import load_encoder

    torch.set_num_threads(args.threads)
    glosses, lemmas = wordnet_texts(args.base, args.queries)
    encoder = load_encoder(MODEL)
    log.info("embedding %d WordNet glosses and %d lemma queries with %s (cached afterwards)", len(glosses),
             len(lemmas), MODEL)
    base = encoder.encode_candidates([Item(str(i), t) for i, t in enumerate(glosses)], batch_size=128,
                                     show_progress=True)
    queries = encoder.encode_queries([Item(f"q{i}", t) for i, t in enumerate(lemmas)],
                                     "Retrieve the definition of this word.", batch_size=128)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, base=base.astype(np.float32), queries=queries.astype(np.float32))
    return base.astype(np.float32), queries.astype(np.float32)


def replicate(base: np.ndarray, n: int, noise: float, seed: int, chunk: int = 100_000) -> np.ndarray:
    """``n`` rows: row i is base[i % len(base)] plus N(0, noise^2) per dimension, renormalised.

    The first ``len(base)`` rows are the base vectors themselves (no noise).
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        block = base[rows % len(base)]
        jitter = rng.standard_normal(block.shape, dtype=np.float32) * noise
        jitter[rows < len(base)] = 0
        out[rows] = block + jitter
    faiss.normalize_L2(out)
    return out


# --- measuring -----------------------------------------------------------------------------------

def exact_top(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(queries, k)[1]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return sum(len(set(a) & set(e)) for a, e in zip(found.tolist(), exact.tolist())) / exact.size


def best_qps(index, queries: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    best, ids = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        ids = index.search(queries, k).ids
        best = min(best, time.perf_counter() - start)
    return len(queries) / best, ids


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(spec: Spec, ids: list[str], x: np.ndarray, args: argparse.Namespace):
    if spec.key == "milvus":
        from mmembed.index.milvus_index import MilvusIndex

        index = MilvusIndex(x.shape[1], index_type=args.milvus_index, index_params=json.loads(args.milvus_params))
        index.set_search_params(**json.loads(args.milvus_search))
        for start in range(0, len(ids), 100_000):
            index.add(ids[start:start + 100_000], x[start:start + 100_000])
        index.build_index()
        return index
    index = FaissIndex(x.shape[1], spec.factory, dtype=spec.dtype, search_params=spec.build_params)
    if not index.is_trained:
        rows = np.random.default_rng(0).choice(len(x), min(len(x), args.train), replace=False)
        index.train(x[np.sort(rows)])
    index.add(ids, x)
    return index


def run_one(spec: Spec, ids: list[str], x: np.ndarray, queries: np.ndarray, exact: np.ndarray,
            args: argparse.Namespace, workdir: Path) -> list[Row]:
    start = time.perf_counter()
    index = build(spec, ids, x, args)
    build_s = time.perf_counter() - start
    rows = []
    for params in spec.sweeps:
        if params:
            index.set_search_params(**params)
        qps, found = best_qps(index, queries, args.k, args.repeats)
        label = spec.label
        if spec.key == "milvus":
            label = f"{label} {index.index_type}"
        shown = {k: v for k, v in (index.search_params if spec.key == "milvus" else params).items()}
        if shown:
            label += " (" + ", ".join(f"{k} {v}" for k, v in shown.items() if k != "k_factor_rf") + ")"
        hits = np.array([[-1 if i is None else int(i) for i in row] for row in found.tolist()])
        rows.append(Row(label, build_s, 0.0, qps, recall(hits, exact)))
    # saved after searching: a saved Milvus Lite index reconnects to its new place, removed below
    target = workdir / spec.key
    index.save(target)
    size = directory_bytes(target) - (target / "ids.json").stat().st_size  # vectors only; ids are the same
    if hasattr(index, "close"):
        index.close()
    shutil.rmtree(target)
    for row in rows:
        row.bytes_per_vector = size / len(ids)
    del index
    gc.collect()
    return rows


def print_table(rows: list[Row], args: argparse.Namespace, dim: int) -> None:
    exact = next((r for r in rows if r.label.startswith("Flat (exact)")), rows[0])
    print(f"\n{args.n:,} x {dim} vectors ({args.base:,} WordNet glosses embedded by {MODEL}, replicated with "
          f"noise {args.noise}), {args.queries:,} lemma queries, k={args.k}, faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads, best of {args.repeats}")
    head = (f"{'index':<40} {'build s':>8} {'x Flat':>7} {'B/vector':>9} {'x Flat':>7} {'QPS':>8} "
            f"{'x Flat':>7} {f'recall@{args.k}':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.label:<40} {r.build_s:8.1f} {r.build_s / exact.build_s:7.2f} {r.bytes_per_vector:9.1f} "
              f"{r.bytes_per_vector / exact.bytes_per_vector:7.3f} {r.qps:8.0f} {r.qps / exact.qps:7.2f} "
              f"{r.recall_at_k:9.3f}")
    print(f"x Flat: ratio to exact Flat measured in this run; recall@{args.k} = share of the exact top {args.k} "
          "returned")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="rows after replication (default 1,000,000)")
    p.add_argument("--base", type=int, default=20_000, help="WordNet glosses embedded (default 20,000)")
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("--noise", type=float, default=0.02, help="replication noise per dimension (default 0.02)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    p.add_argument("--pq", type=int, default=48, help="PQ sub-quantizers")
    p.add_argument("--train", type=int, default=100_000, help="IVF/PQ training sample rows")
    p.add_argument("--types", default="flat,fp16,sq8,hnsw,hnswc,ivf,ivfpq,ivfpqr,milvus",
                   help="which indexes, comma-separated")
    p.add_argument("--milvus-index", help="Milvus index type (default: chosen by size, as mmembed does)")
    p.add_argument("--milvus-params", default="{}", help='Milvus index build params as JSON, e.g. \'{"nlist": 4096}\'')
    p.add_argument("--milvus-search", default="{}", help='Milvus search params as JSON, e.g. \'{"ef": 256}\'')
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="FAISS and torch threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "mmembed" / "bench")
    p.add_argument("--json", type=Path, help="also write the rows here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    faiss.omp_set_num_threads(args.threads)
    known = {s.key: s for s in specs(args.nlist, args.pq)}
    unknown = [t for t in args.types.split(",") if t.strip() not in known]
    if unknown:
        raise SystemExit(f"unknown --types {unknown}; choose from {', '.join(known)}")
    chosen = [known[t.strip()] for t in args.types.split(",")]
    if chosen[0].key != "flat":
        chosen.insert(0, known["flat"])  # the peer every ratio is measured against
    base, queries = embedded_base(args)
    x = replicate(base, args.n, args.noise, args.seed)
    ids = [str(i) for i in range(args.n)]
    log.info("exact ground truth over %d x %d", *x.shape)
    exact = exact_top(x, queries, args.k)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmembed-ann-") as tmp:
        for spec in chosen:
            log.info("running %s", spec.label)
            for row in run_one(spec, ids, x, queries, exact, args, Path(tmp)):
                rows.append(row)
                log.info("  %s", row)
    print_table(rows, args, x.shape[1])
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
