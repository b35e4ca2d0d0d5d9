"""``mmembed evaluate``: score an encoder on an M-BEIR-format directory (local and global pools)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmembed.cli import common
from mmembed.cli.common import (
    ENCODER_SET_HELP,
    add_config_arguments,
    add_rerank_arguments,
    rerank_config_from_args,
)
from mmembed.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate an encoder on an M-BEIR directory",
                       description="Score every task of a split against its local pool and the global pool, with "
                                   "and without instructions; print the per-task table and write JSON results, "
                                   "TREC runs and the resolved configuration. Configuration keys are those of "
                                   "mmembed.eval.mbeir_runner.EvalConfig (split, pools, instruction_modes, seed, "
                                   "metric, extra_metrics, depth, modality_error_k, tasks, batch_size, max_queries, "
                                   "cache_dir, image_root, text_format, index, memory_limit, recall_sample, "
                                   "search_device; hybrid=rrf|weighted: dense fused with BM25; "
                                   "dims=[384,96]: a score per embedding dimension). With --rerank, every run is also "
                                   "reranked and each task reports its metrics before reranking, after, and fused "
                                   "with the retrieval score.")
    p.add_argument("data", help="M-BEIR-layout dataset directory, or a BEIR directory (corpus.jsonl, queries.jsonl, "
                                "qrels/SPLIT.tsv) for text retrieval")
    p.add_argument("--encoder", help="encoder directory (save_pretrained output) or 'cpu-default'; not needed with "
                                     "--embeddings and --query-embeddings")
    p.add_argument("--encoder-set", metavar="KEY=VALUE", action="append", default=[], help=ENCODER_SET_HELP)
    p.add_argument("--out", help="directory for results.json, runs/ and config.json")
    p.add_argument("--image-root", help="where the images' relative paths start, when they live outside DATA "
                                        "(same as --set image_root=...)")
    p.add_argument("--embeddings", metavar="DIR", help="precomputed vectors of the split's global pool ('mmembed "
                                                       "encode' output) instead of encoding the pools; searched "
                                                       "streamed, never loaded whole")
    p.add_argument("--query-embeddings", metavar="DIR",
                   help="precomputed query vectors ('mmembed encode DATA --queries' output): with --embeddings, "
                        "no encoder is loaded")
    p.add_argument("--index", help="the global pool's index: exact (default: streamed exact top-k), faiss (exact "
                                   "FAISS in memory), faiss-ivf, faiss-hnsw, milvus (approximate: their recall@k "
                                   "against exact is measured and written next to every score), or a saved index "
                                   "directory ('mmembed index build' output of this pool)")
    p.add_argument("--memory-limit", metavar="SIZE", help="memory the exact search may use, e.g. 200MB or 4GiB "
                                                          "(default: half of what is available)")
    add_config_arguments(p)
    add_rerank_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmembed.config import load_config
    from mmembed.eval.mbeir_runner import EvalConfig, run_evaluation
    from mmembed.eval.tables import results_table

    base = {"show_progress": sys.stderr.isatty(), **({"image_root": args.image_root} if args.image_root else {}),
            **({"embeddings_dir": args.embeddings} if args.embeddings else {}),
            **({"query_embeddings_dir": args.query_embeddings} if args.query_embeddings else {}),
            **({"index": args.index} if args.index else {}),
            **({"memory_limit": args.memory_limit} if args.memory_limit else {})}
    config = load_config(EvalConfig, args.config, args.set, base=base)
    rerank_config = rerank_config_from_args(args, show_progress=sys.stderr.isatty())
    if args.encoder is None and not (config.embeddings_dir and config.query_embeddings_dir):
        raise ConfigError("give --encoder, or both --embeddings and --query-embeddings")
    # looked up at call time (tests patch it)
    if config.dims and (rerank_config is not None or config.hybrid):
        raise ConfigError("dims scores the dense retrieval at each dimension; it does not combine with --rerank "
                          "or hybrid (run them separately)")
    encoder = common.load_encoder_arg(args.encoder, args.encoder_set) if args.encoder else None
    if (Path(args.data) / "corpus.jsonl").is_file() and (config.dims or config.hybrid):
        raise ConfigError(f"{args.data}: dims and hybrid work on M-BEIR directories, not BEIR ones")
    if (Path(args.data) / "corpus.jsonl").is_file():
        if rerank_config is not None:
            raise ConfigError(f"{args.data}: --rerank works on M-BEIR directories; BEIR directories are not "
                              "reranked yet")
        return _run_beir(encoder, args, config)
    if rerank_config is not None:
        return _run_reranked(encoder, args, config, rerank_config)
    if config.dims:
        from mmembed.eval.dims import dims_markdown, run_dims_evaluation

        print(dims_markdown(run_dims_evaluation(encoder, args.data, config, args.out)))
        return 0
    results = run_evaluation(encoder, args.data, config, args.out)
    print(results_table(results))
    if args.out:
        print(f"results written to {args.out}")
    return 0


def _run_reranked(encoder, args: argparse.Namespace, config, rerank_config) -> int:
    from dataclasses import asdict

    from mmembed.eval.rerank_eval import run_rerank_evaluation
    from mmembed.eval.tables import rerank_table, results_table
    from mmembed.rerank import build_reranker

    reranker = build_reranker(rerank_config)
    results = run_rerank_evaluation(encoder, reranker, args.data, config, args.out,
                                    rerank_config=asdict(rerank_config))
    print(results_table(results.retrieval))
    print(f"\nreranked by {reranker.reranker_id}, top {reranker.top_k}:")
    print(rerank_table(results))
    if args.out:
        print(f"results written to {args.out}")
    return 0


def _run_beir(encoder, args: argparse.Namespace, config) -> int:
    from mmembed.eval.beir_runner import run_beir_evaluation

    if encoder is None:
        raise ConfigError(f"{args.data}: a BEIR directory is evaluated with an encoder; give --encoder")
    from mmembed.eval.tables import markdown_table

    result = run_beir_evaluation(encoder, args.data, split=config.split, batch_size=config.batch_size,
                                 max_queries=config.max_queries, show_progress=config.show_progress,
                                 output_dir=args.out)
    rows = [[result.name, result.split, str(result.num_queries), str(result.corpus_size),
             *(f"{v * 100:.1f}" for v in result.scores.values())]]
    print(markdown_table(["dataset", "split", "queries", "corpus", *result.scores], rows))
    return 0
