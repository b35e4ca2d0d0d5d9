"""Reranking throughput of the bundled SmolLM2-135M reranker: batching and shared-prefix reuse, one run.

For each scoring mode (query likelihood, P(True)) the same (query, candidate) pairs — ``--queries``
queries with ``--top-k`` candidates each, random sentences over a fixed word list — are scored by:

- ``batch 1``: one pair per forward pass, no prefix reuse (the naive loop);
- ``batched``: ``--batch-size`` pairs per forward pass, no prefix reuse;
- ``batched + prefix``: the same batches with the shared prefix's KV cache reused (the default).

Reported: pairs per second (best of ``--repeats``) and the largest score difference from the naive
loop (reuse and batching must not change scores beyond float rounding). Run:

    .venv/bin/python benchmarks/rerank_throughput.py [--queries 8] [--top-k 10] [--batch-size 10]
        [--dtype float32|bfloat16] [--threads N]

On a shared CPU, pass ``--threads 1``: oversubscribed torch threads spin and can cost 3-4x.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from mmembed.encoders.base import Item
from mmembed.rerank.llm import LLMReranker
from mmembed.rerank.smollm2 import MODEL_NAME, load_smollm2

_WORD_LIST = ("a the red blue green small large old young happy cat dog bird fish tree house car boat train plane "
              "city river mountain beach forest garden kitchen table chair window door street market music food "
              "coffee bread cake apple flower sun moon star cloud rain snow water stone book letter phone picture "
              "runs jumps sits sleeps eats reads writes plays walks flies near under over behind with after")
WORDS = _WORD_LIST.split()


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def make_pairs(queries: int, top_k: int, seed: int = 0) -> tuple[list[Item], list[Item]]:
    rng = random.Random(seed)
    qs, cs = [], []
    for q in range(queries):
        query = Item(f"q{q}", sentence(rng, 6, 12))
        for c in range(top_k):
            qs.append(query)
            cs.append(Item(f"q{q}-c{c}", " ".join(sentence(rng, 8, 16) for _ in range(3))))
    return qs, cs


def measure(reranker: LLMReranker, qs: list[Item], cs: list[Item], repeats: int) -> tuple[float, np.ndarray]:
    reranker.score_pairs(qs[:2], cs[:2])  # warm-up
    best, scores = float("inf"), np.zeros(0)
    for _ in range(repeats):
        start = time.perf_counter()
        scores = reranker.score_pairs(qs, cs)
        best = min(best, time.perf_counter() - start)
    return len(qs) / best, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    qs, cs = make_pairs(args.queries, args.top_k)
    model, tokenizer = load_smollm2(dtype=getattr(torch, args.dtype))
    settings = [("batch 1", 1, False), (f"batch {args.batch_size}", args.batch_size, False),
                (f"batch {args.batch_size} + prefix", args.batch_size, True)]
    print(f"SmolLM2-135M-Instruct, {len(qs)} pairs ({args.queries} queries x {args.top_k}), "
          f"{torch.get_num_threads()} threads, {args.dtype}, best of {args.repeats}")
    print(f"{'mode':<18}{'setting':<22}{'pairs/s':>9}{'speed-up':>10}{'max |diff|':>12}")
    for mode in ("query_likelihood", "p_true"):
        reranker = LLMReranker(model, tokenizer, mode=mode, name=MODEL_NAME)
        base_rate, base_scores = None, None
        for label, batch_size, reuse in settings:
            reranker.batch_size, reranker.prefix_reuse = batch_size, reuse
            rate, scores = measure(reranker, qs, cs, args.repeats)
            if base_rate is None:
                base_rate, base_scores = rate, scores
            diff = float(np.abs(scores - base_scores).max())
            print(f"{mode:<18}{label:<22}{rate:>9.1f}{rate / base_rate:>9.2f}x{diff:>12.2e}")


if __name__ == "__main__":
    main()
