"""``mmembed index``: build a searchable index over a candidate pool (FAISS or Milvus, fresh or precomputed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmembed.cli import common
from mmembed.errors import ConfigError, DataError, Location


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("index", help="build a retrieval index", description="Build and inspect indexes.")
    index_sub = parser.add_subparsers(dest="index_command", metavar="ACTION")
    index_sub.required = True
    p = index_sub.add_parser("build", help="embed a candidate pool and index it",
                             description="Embed every candidate of an M-BEIR candidate-pool file (or read its "
                                         "embeddings from 'mmembed encode' output with --from-embeddings) and write "
                                         "a self-contained retrieval directory (vectors, candidates, instructions). "
                                         "The memory a FAISS build needs is estimated first; a build that cannot "
                                         "fit is refused unless --force.")
    p.add_argument("pool", help="candidate pool JSONL, or an M-BEIR directory (its global test pool is used)")
    p.add_argument("--encoder", help="encoder directory (save_pretrained output) or 'cpu-default'; with "
                                     "--from-embeddings it defaults to the encoder recorded there")
    p.add_argument("--encoder-set", metavar="KEY=VALUE", action="append", default=[],
                   help=common.ENCODER_SET_HELP)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--from-embeddings", metavar="DIR", help="index these precomputed embeddings ('mmembed encode' "
                                                            "output) instead of encoding the pool")
    p.add_argument("--split", default="test", help="global pool split when POOL is a directory (default test)")
    p.add_argument("--image-root", help="image root (default: the M-BEIR directory holding the pool)")
    p.add_argument("--instructions", help="query_instructions.tsv to search by task (default: the dataset's)")
    p.add_argument("--backend", default="faiss", choices=("faiss", "milvus", "exact"),
                   help="vector engine (default faiss); exact: streamed exact search over the --from-embeddings "
                        "store, which is not copied (search memory bounded, any pool size)")
    p.add_argument("--factory", default="Flat",
                   help="FAISS factory string: Flat (exact), SQ8, HNSW32, IVF1024,Flat, IVF4096,PQ64, "
                        "OPQ64,IVF4096,PQ64, ...")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="FAISS flat vector storage type (float16 halves memory)")
    p.add_argument("--search-param", metavar="KEY=VALUE", action="append", default=[],
                   help="index knob kept with the index, e.g. nprobe=32 (FAISS IVF), efSearch=128 and "
                        "efConstruction=200 (FAISS HNSW; the latter applies while building), ef=128 or nprobe=32 "
                        "(Milvus)")
    p.add_argument("--train-sample", type=int, help="rows to train IVF/PQ on (default: FAISS's 256 per list, at "
                                                    "least 262,144)")
    p.add_argument("--on-disk", action="store_true",
                   help="keep an IVF index's inverted lists in a file beside it instead of in memory (with "
                        "--from-embeddings; for pools whose codes do not fit in RAM)")
    p.add_argument("--force", action="store_true", help="build even when the memory estimate exceeds what is free")
    p.add_argument("--uri", help="Milvus URI: http://host:19530 for a server (default: a Milvus Lite database "
                                 "inside the index directory)")
    p.add_argument("--collection", help="Milvus collection name (default: a new unique name)")
    p.add_argument("--milvus-index", help="Milvus index type (default: chosen by size: FLAT up to 200,000 vectors, "
                                          "then HNSW, then IVF_SQ8)")
    p.add_argument("--dims", type=int, metavar="D",
                   help="index only the first D coordinates of each vector (renormalised; for a model trained for "
                        "truncation, see its matryoshka.json), with --from-embeddings and the faiss backend")
    p.add_argument("--rescore", action="store_true",
                   help="with --dims: rescore the first pass's top candidates with the full vectors, kept in a file "
                        "read from disk (full.npy)")
    p.add_argument("--rescore-depth", type=int, metavar="N", help="candidates rescored per query (default 100)")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=run_build)


def parse_search_params(items: list[str]) -> dict[str, float]:
    params: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not key or number is None:
            raise ConfigError(f"--search-param must look like KEY=NUMBER (e.g. nprobe=32), got {item!r}")
        params[key] = int(number) if number.is_integer() else number
    return params


def _resolve_pool(args: argparse.Namespace) -> tuple[Path, str | Path | None, str | Path | None]:
    """(pool file, image root, instructions) from POOL (a file or an M-BEIR directory)."""
    from mmembed.data.layout import MBEIRDirectory

    pool, instructions, image_root = Path(args.pool), args.instructions, args.image_root
    if pool.is_dir():
        directory = MBEIRDirectory(pool)
        pool = directory.global_pool(args.split)
        image_root = image_root or directory.root
        if instructions is None and directory.instructions_path.is_file():
            instructions = directory.instructions_path
    if not pool.is_file():  # before any encoder is loaded or embedding read
        raise DataError("candidate pool file not found", Location(file=str(pool)))
    return pool, image_root, instructions


def _encoder_spec(spec: str) -> str:
    return str(Path(spec).resolve()) if Path(spec).exists() else spec


def run_build(args: argparse.Namespace) -> int:
    from mmembed.index.directory import build_retrieval_directory

    if args.train_sample is not None and args.train_sample < 1:
        raise ConfigError(f"--train-sample must be positive, got {args.train_sample}")
    params = parse_search_params(args.search_param)
    if args.backend != "milvus" and (args.uri or args.collection or args.milvus_index):
        raise ConfigError("--uri, --collection and --milvus-index need --backend milvus")
    if args.on_disk and (args.backend != "faiss" or not args.from_embeddings):
        raise ConfigError("--on-disk needs --from-embeddings and the faiss backend")
    if not args.encoder and not args.from_embeddings:
        raise ConfigError("--encoder is required unless --from-embeddings is given")
    if args.backend == "exact" and not args.from_embeddings:
        raise ConfigError("--backend exact searches an 'mmembed encode' store: give --from-embeddings")
    if (args.rescore or args.rescore_depth) and args.dims is None:
        raise ConfigError("--rescore and --rescore-depth go with --dims D (the first pass's dimension)")
    if args.rescore_depth is not None and not args.rescore:
        raise ConfigError("--rescore-depth needs --rescore")
    pool, image_root, instructions = _resolve_pool(args)
    encoder = common.load_encoder_from_args(args) if args.encoder else None
    index = build_retrieval_directory(
        pool, args.out, encoder_spec=_encoder_spec(args.encoder) if args.encoder else None, encoder=encoder,
        embeddings=args.from_embeddings, image_root=image_root, instructions_path=instructions, backend=args.backend,
        factory=args.factory, dtype=args.dtype, search_params=params, train_rows=args.train_sample,
        on_disk=args.on_disk, force=args.force, uri=args.uri, collection=args.collection,
        milvus_index=args.milvus_index, batch_size=args.batch_size,
        encoder_settings=common.parse_encoder_settings(args.encoder_set), show_progress=sys.stderr.isatty(),
        dims=args.dims, rescore=args.rescore, rescore_depth=args.rescore_depth)
    print(f"indexed {len(index)} candidates into {args.out}")
    return 0
