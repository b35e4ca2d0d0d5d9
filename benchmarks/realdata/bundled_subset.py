"""A 10,000-training-query version of the bundled benchmark, for timing the recipe at that size.

The bundled benchmark (``mmembed data build``: emoji and WordNet, 49,819 training queries, a
64,858-candidate pool) is cut the way its demo-size build is, by *concept*, so that the pools
shrink with the queries as they would for a user with this much data:

1. a concept (a base emoji with its variants, a word) is kept when its seeded hash falls under
   ``--share``; a candidate is kept when one of its concepts is, a query when all of its
   concepts and all of its positives are;
2. exactly ``--train-queries`` training queries are drawn from the kept ones (seeded), each task
   keeping its share of the kept training queries (largest remainder); val and test keep every
   kept query.

Splits, ids, texts, instructions and images are the bundled benchmark's; the pools (local and
global, per split) are its pools restricted to the kept candidates, and the qrels its qrels
restricted to the kept queries. Run: ``python -m benchmarks.realdata.bundled_subset --out DIR``
(it builds, or reuses, the full benchmark at ``--source``; set-up as for ``mmembed data build``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

from benchmarks.realdata.common import SUMMARY
from mmembed.data.bundled.builder import BuildResult
from mmembed.data.bundled.builder import build as build_bundled
from mmembed.data.bundled.specs import fraction, src_json
from mmembed.data.layout import INSTRUCTIONS_FILE, SPLITS, MBEIRDirectory, global_pool_file, qrels_file, query_file
from mmembed.data.mbeir import read_candidates, read_qrels, read_queries, write_candidates, write_qrels, write_queries
from mmembed.errors import ConfigError
from mmembed.fileio import atomic_directory, write_json
from mmembed.types import Candidate, Query

log = logging.getLogger(__name__)

SALT = "bundled-subset"


def concepts_of(src_content: str | None) -> list[str]:
    return json.loads(src_content or "{}").get("concepts", [])


class ConceptSample:
    """The seeded choice of concepts: each is kept when its hash falls under ``share``."""

    def __init__(self, share: float, seed: int):
        self.share, self.seed = share, seed

    def keeps(self, concept: str) -> bool:
        return fraction(f"{self.seed}:{concept}", SALT) < self.share

    def keeps_candidate(self, c: Candidate) -> bool:
        return any(self.keeps(x) for x in concepts_of(c.src_content))

    def keeps_query(self, q: Query, kept_dids: set[str]) -> bool:
        concepts = concepts_of(q.src_content)
        return bool(concepts) and all(self.keeps(x) for x in concepts) and all(d in kept_dids for d in q.pos)


def quotas(available: dict[str, int], total: int) -> dict[str, int]:
    """``total`` split over the tasks in proportion to ``available`` (largest remainder, ties by name)."""
    pool = sum(available.values())
    if pool < total:
        raise ConfigError(f"only {pool} training queries are kept, fewer than the {total} asked for; "
                          "raise --share")
    exact = {name: total * n / pool for name, n in available.items()}
    out = {name: int(x) for name, x in exact.items()}
    for name in sorted(exact, key=lambda n: (-(exact[n] - out[n]), n))[: total - sum(out.values())]:
        out[name] += 1
    return out


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def seeded_draw(queries: list[Query], n: int, seed: int) -> list[Query]:
    """``n`` of ``queries`` by a seeded hash of their ids, in their file order."""
    chosen = set(sorted((q.qid for q in queries), key=lambda qid: fraction(f"{seed}:{qid}", SALT))[:n])
    return [q for q in queries if q.qid in chosen]


def select(src: MBEIRDirectory, sample: ConceptSample, train_queries: int,
           seed: int) -> tuple[set[str], dict[tuple[str, str], list[Query]]]:
    """The kept candidate ids and the kept queries per (split, task name)."""
    kept_dids: set[str] = set()
    for split in SPLITS:
        kept_dids |= {c.did for c in read_candidates(src.global_pool(split)) if sample.keeps_candidate(c)}
    kept = {(split, task.name): [q for q in read_queries(task.queries) if sample.keeps_query(q, kept_dids)]
            for split in SPLITS for task in src.tasks(split)}
    quota = quotas({name: len(qs) for (split, name), qs in kept.items() if split == "train"}, train_queries)
    for (split, name), queries in kept.items():
        if split == "train":
            kept[(split, name)] = seeded_draw(queries, quota[name], seed)
    return kept_dids, kept


def write_subset(stage: Path, src: MBEIRDirectory, kept_dids: set[str],
                 kept: dict[tuple[str, str], list[Query]]) -> tuple[dict[str, dict[str, int]], set[str]]:
    """Queries, qrels and pools restricted to the kept ones; returns the counts and the image paths."""
    counts: dict[str, dict[str, int]] = {}
    images: set[str] = set()
    for split in SPLITS:
        for task in src.tasks(split):
            queries = kept[(split, task.name)]
            counts.setdefault(task.name, {})[split] = len(queries)
            write_queries(stage / query_file(task.dataset, task.task.id, split), queries)
            qrels = read_qrels(task.qrels)
            write_qrels(stage / qrels_file(task.dataset, task.task.id, split),
                        {q.qid: qrels[q.qid] for q in queries}, task.task.id)
            images |= {q.image for q in queries if q.image}
            local = stage / task.local_pool.relative_to(src.root)
            if not local.exists():  # one pool file serves every split of a task
                pool = [c for c in read_candidates(task.local_pool) if c.did in kept_dids]
                write_candidates(local, pool)
                images |= {c.image for c in pool if c.image}
        pool = [c for c in read_candidates(src.global_pool(split)) if c.did in kept_dids]
        write_candidates(stage / global_pool_file(split), pool)
        images |= {c.image for c in pool if c.image}
    return counts, images


def build(out: Path, full: BuildResult, *, train_queries: int = 10_000, share: float = 0.25, seed: int = 0) -> dict:
    """Write the subset of the bundled benchmark ``full`` into ``out`` (replaced as a whole)."""
    src = MBEIRDirectory(full.root)
    kept_dids, kept = select(src, ConceptSample(share, seed), train_queries, seed)
    with atomic_directory(out) as stage:
        counts, images = write_subset(stage, src, kept_dids, kept)
        _link_or_copy(src.root / INSTRUCTIONS_FILE, stage / INSTRUCTIONS_FILE)
        for rel in sorted(images):
            _link_or_copy(src.root / rel, stage / rel)
        summary = {"facts": {"source": f"bundled benchmark {full.content_hash[:12]} ({src_json(full.sources)})",
                             "share": share, "seed": seed, "train_queries": train_queries},
                   "images": len(images), "candidates": len(kept_dids), "queries": counts}
        write_json(stage / SUMMARY, summary)
    log.info("wrote %s: %s", out, json.dumps(counts))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (replaced as a whole)")
    parser.add_argument("--source", type=Path, default=Path("data/bundled"),
                        help="the full bundled benchmark (built there when absent or stale)")
    parser.add_argument("--train-queries", type=int, default=10_000)
    parser.add_argument("--share", type=float, default=0.25, help="share of concepts kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    full = build_bundled(args.source)  # reuses a valid build
    summary = build(args.out, full, train_queries=args.train_queries, share=args.share, seed=args.seed)
    print(src_json(summary["queries"]))


if __name__ == "__main__":
    main()
