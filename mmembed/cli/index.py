"""``mmembed index``: build a searchable index over a candidate pool."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmembed.cli.common import load_encoder_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("index", help="build a retrieval index", description="Build and inspect indexes.")
    index_sub = parser.add_subparsers(dest="index_command", metavar="ACTION")
    index_sub.required = True
    p = index_sub.add_parser("build", help="embed a candidate pool and index it",
                             description="Embed every candidate of an M-BEIR candidate-pool file and write a "
                                         "self-contained retrieval directory (vectors, candidates, instructions).")
    p.add_argument("pool", help="candidate pool JSONL, or an M-BEIR directory (its global test pool is used)")
    p.add_argument("--encoder", required=True, help="encoder directory (save_pretrained output) or 'cpu-default'")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--split", default="test", help="global pool split when POOL is a directory (default test)")
    p.add_argument("--image-root", help="image root (default: the M-BEIR directory holding the pool)")
    p.add_argument("--instructions", help="query_instructions.tsv to search by task (default: the dataset's)")
    p.add_argument("--factory", default="Flat", help="FAISS factory string: Flat (exact), HNSW32, IVF1024,Flat, ...")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="vector storage type")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from mmembed.data.layout import MBEIRDirectory
    from mmembed.retrieval import Retriever

    pool, instructions, image_root = Path(args.pool), args.instructions, args.image_root
    if pool.is_dir():
        directory = MBEIRDirectory(pool)
        pool = directory.global_pool(args.split)
        image_root = image_root or directory.root
        if instructions is None and directory.instructions_path.is_file():
            instructions = directory.instructions_path
    encoder = load_encoder_arg(args.encoder)
    spec = str(Path(args.encoder).resolve()) if Path(args.encoder).exists() else args.encoder
    retriever = Retriever.build(encoder, pool, args.out, encoder_spec=spec, image_root=image_root,
                                instructions_path=instructions, factory=args.factory, dtype=args.dtype,
                                batch_size=args.batch_size, show_progress=sys.stderr.isatty())
    print(f"indexed {len(retriever.index)} candidates into {args.out}")
    return 0
