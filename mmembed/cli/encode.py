"""``mmembed encode``: a pool's embeddings as sharded, resumable chunk files with a manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmembed.cli import common
from mmembed.errors import DataError, Location


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="embed a candidate pool into sharded embedding files",
                       description="Embed every candidate of a pool into OUT: chunk files of ids + vectors "
                                   "(float16 by default) and a manifest (encoder id, pool fingerprint, dimension, "
                                   "dtype, count). Resumable (rerun the same command) and shardable: --shard I/N in "
                                   "N processes or machines writing to the same OUT (under torchrun the shard "
                                   "comes from RANK/WORLD_SIZE). 'mmembed index build --from-embeddings OUT' "
                                   "indexes the result without encoding again.")
    p.add_argument("data", help="candidate pool JSONL, or an M-BEIR directory (its global pool is used)")
    p.add_argument("--encoder", required=True, help="encoder directory (save_pretrained output) or a built-in name")
    p.add_argument("--encoder-set", metavar="KEY=VALUE", action="append", default=[],
                   help=common.ENCODER_SET_HELP)
    p.add_argument("--out", required=True, help="output directory (shared by all shards)")
    p.add_argument("--shard", metavar="I/N", help="encode every N-th chunk starting at I (default: from torchrun "
                                                  "RANK/WORLD_SIZE, else 0/1)")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="stored vector type")
    p.add_argument("--split", default="test", help="global pool split when DATA is a directory (default test)")
    p.add_argument("--image-root", help="image root (default: the M-BEIR directory holding the pool)")
    p.add_argument("--chunk-size", type=int, default=4096, help="rows per chunk file, the unit of resumption")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--queries", action="store_true",
                   help="embed the queries of every task of --split instead of the pool (DATA: an M-BEIR directory), "
                        "with the evaluation's seeded instruction choice per instruction mode, for 'mmembed evaluate "
                        "--query-embeddings OUT'; --config/--set take the evaluation's keys (seed, instruction_modes, "
                        "tasks, max_queries, text_format)")
    common.add_config_arguments(p)
    p.set_defaults(func=run)


def pool_and_root(data: str, split: str, image_root: str | None) -> tuple[Path, str | Path | None]:
    """The pool file of DATA (a file, or an M-BEIR directory's global pool) and its image root."""
    from mmembed.data.layout import MBEIRDirectory

    path = Path(data)
    if path.is_dir():
        directory = MBEIRDirectory(path)
        path, image_root = directory.global_pool(split), image_root or directory.root
    if not path.is_file():  # before the encoder is loaded
        raise DataError("candidate pool file not found", Location(file=str(path)))
    return path, image_root


def run(args: argparse.Namespace) -> int:
    from mmembed.embeddings import encode_pool, parse_shard

    if args.queries:
        return _run_queries(args)

    shard = parse_shard(args.shard) if args.shard else None
    pool, image_root = pool_and_root(args.data, args.split, args.image_root)
    encoder = common.load_encoder_from_args(args)
    spec = str(Path(args.encoder).resolve()) if Path(args.encoder).exists() else args.encoder
    result = encode_pool(encoder, pool, args.out, image_root=image_root, shard=shard, dtype=args.dtype,
                         chunk_size=args.chunk_size, batch_size=args.batch_size, encoder_spec=spec,
                         show_progress=sys.stderr.isatty())
    print(f"encoded {result.encoded} chunks, {result.reused} already done")
    if result.complete:
        print(f"complete: {args.out} (index it with: mmembed index build {pool} --from-embeddings {args.out} "
              "--out INDEX)")
    else:
        print(f"this shard is done; {args.out} is complete when every shard has finished")
    return 0



def _run_queries(args: argparse.Namespace) -> int:
    """The split's queries under each instruction mode, as the evaluation with the same settings embeds them."""
    from mmembed.config import load_config
    from mmembed.embeddings.queries import encode_split_queries
    from mmembed.errors import ConfigError
    from mmembed.eval.mbeir_runner import EvalConfig
    from mmembed.eval.text_format import with_text_format

    if not Path(args.data).is_dir():
        raise ConfigError(f"--queries embeds the queries of an M-BEIR directory; {args.data} is not a directory")
    config = load_config(EvalConfig, args.config, args.set, base={"split": args.split})
    config.validate()
    encoder = with_text_format(common.load_encoder_from_args(args), config.text_format)
    spec = str(Path(args.encoder).resolve()) if Path(args.encoder).exists() else args.encoder
    out = encode_split_queries(encoder, args.data, args.out, split=config.split, modes=config.instruction_modes,
                               seed=config.seed, text_format=config.text_format, tasks=config.tasks,
                               max_queries=config.max_queries, batch_size=args.batch_size, encoder_spec=spec,
                               show_progress=sys.stderr.isatty())
    print(f"embedded the {config.split} queries into {out} (evaluate with --query-embeddings {out})")
    return 0
