"""``mmembed mine``: hard negatives for the training queries, with a trained encoder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmembed.cli import common
from mmembed.cli.common import ENCODER_SET_HELP, add_config_arguments
from mmembed.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mine", help="mine hard negatives for training queries",
                       description="Retrieve the top k of every training query with ENCODER and write training "
                                   "files with hard negatives. M-BEIR directories get MM-Embed's modality-aware "
                                   "negatives (type 1: wrong modality ranked above the first positive; type 2: "
                                   "right modality, not a positive, from a rank window); BEIR directories "
                                   "(corpus.jsonl) get window negatives. Resumable (rerun the same command) and "
                                   "shardable (--shard i/n in n processes). Configuration keys are those of "
                                   "mmembed.mining.MiningConfig (split, tasks, k, window, num_type1, num_type2, "
                                   "random_fallback, instruction_mode, beir_instruction, seed, chunk_size, "
                                   "batch_size, cache_dir, typed_sets, modality_error_k, folds, fold). Each row "
                                   "keeps a fixed sample in neg_cand_list and, with typed_sets (default), every "
                                   "type-1 and type-2 candidate in neg_cand_sets, which training samples afresh "
                                   "each epoch; folds/fold mine one fold of the queries (cross-fitting).")
    p.add_argument("data", help="M-BEIR-layout directory, or a BEIR directory for text negatives")
    p.add_argument("--encoder", required=True, help="the (stage-1) encoder: a directory or a built-in name")
    p.add_argument("--encoder-set", metavar="KEY=VALUE", action="append", default=[], help=ENCODER_SET_HELP)
    p.add_argument("--out", required=True, help="output directory (per-task query files or negatives.jsonl)")
    p.add_argument("--embeddings", metavar="DIR", help="precomputed vectors of the split's global pool ('mmembed "
                                                       "encode' output) instead of encoding it")
    p.add_argument("--index", help="the pool's index: exact (default), faiss, faiss-ivf, faiss-hnsw, milvus, or a "
                                   "saved index directory of this pool (as 'mmembed evaluate --index')")
    p.add_argument("--memory-limit", metavar="SIZE", help="memory the exact search may use, e.g. 2GB")
    p.add_argument("--shard", metavar="I/N", help="mine every N-th chunk starting at I (default: from torchrun "
                                                  "RANK/WORLD_SIZE, else 0/1)")
    add_config_arguments(p)
    p.set_defaults(func=run)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like I/N (e.g. 0/2), got {text!r}") from None
    return index, count


def run(args: argparse.Namespace) -> int:
    from mmembed.config import load_config
    from mmembed.mining import MiningConfig, mine_beir, mine_mbeir, stats_table

    base = {**({"embeddings_dir": args.embeddings} if args.embeddings else {}),
            **({"index": args.index} if args.index else {}),
            **({"memory_limit": args.memory_limit} if args.memory_limit else {})}
    config = load_config(MiningConfig, args.config, args.set, base=base)
    shard = parse_shard(args.shard)
    encoder = common.load_encoder_arg(args.encoder, args.encoder_set)  # looked up at call time (tests patch it)
    mine = mine_beir if (Path(args.data) / "corpus.jsonl").is_file() else mine_mbeir
    result = mine(encoder, args.data, args.out, config, shard=shard, show_progress=sys.stderr.isatty())
    if not result.complete:
        print(f"this shard is done; {args.out} is complete when every shard has finished")
        return 0
    print(stats_table(result))
    print(f"{'reused' if result.reused else 'wrote'} {args.out}")
    return 0
