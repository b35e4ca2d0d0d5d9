"""``mmembed index``: build a searchable index over a candidate pool (FAISS or Milvus, fresh or precomputed)."""

from __future__ import annotations

import argparse
import shutil
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
    p.add_argument("--backend", default="faiss", choices=("faiss", "milvus"), help="vector engine (default faiss)")
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
    if args.train_sample is not None and args.train_sample < 1:
        raise ConfigError(f"--train-sample must be positive, got {args.train_sample}")
    params = parse_search_params(args.search_param)
    if args.backend == "faiss" and (args.uri or args.collection or args.milvus_index):
        raise ConfigError("--uri, --collection and --milvus-index need --backend milvus")
    if args.on_disk and (args.backend != "faiss" or not args.from_embeddings):
        raise ConfigError("--on-disk needs --from-embeddings and the faiss backend")
    if args.from_embeddings:
        count = _build_from_embeddings(args, params)
    elif args.backend == "milvus":
        count = _build_milvus(args, params)
    else:
        count = _build_faiss(args, params)
    print(f"indexed {count} candidates into {args.out}")
    return 0


def _build_faiss(args: argparse.Namespace, params: dict[str, float]) -> int:
    from mmembed.index import FaissIndex
    from mmembed.index.build import check_memory
    from mmembed.retrieval import Retriever

    if not args.encoder:
        raise ConfigError("--encoder is required unless --from-embeddings is given")
    pool, image_root, instructions = _resolve_pool(args)
    encoder = _load_encoder(args)
    # factory, dtype and search parameters are checked on an empty index before anything is encoded
    FaissIndex(encoder.dim, args.factory, dtype=args.dtype, search_params=params)
    check_memory("faiss", args.factory, args.dtype, encoder.dim, _count_lines(pool), train_rows=args.train_sample,
                 force=args.force)
    if params or args.train_sample:
        # parameters that act while vectors are added (HNSW efConstruction) or a chosen training
        # sample need the index made before the adds, which Retriever.build does not offer
        return _build_encoded(args, params, encoder, pool, image_root, instructions)
    retriever = Retriever.build(encoder, pool, args.out, encoder_spec=_encoder_spec(args.encoder),
                                image_root=image_root, instructions_path=instructions, factory=args.factory,
                                dtype=args.dtype, batch_size=args.batch_size, show_progress=sys.stderr.isatty(),
                                encoder_settings=common.parse_encoder_settings(args.encoder_set))
    return len(retriever.index)


def _build_milvus(args: argparse.Namespace, params: dict[str, float]) -> int:
    if not args.encoder:
        raise ConfigError("--encoder is required unless --from-embeddings is given")
    pool, image_root, instructions = _resolve_pool(args)
    return _build_encoded(args, params, _load_encoder(args), pool, image_root, instructions)


def _build_encoded(args: argparse.Namespace, params: dict[str, float], encoder, pool: Path,
                   image_root: str | Path | None, instructions: str | Path | None) -> int:
    """Embed the pool in this process and fill an index of ``args.backend`` made before the adds."""
    import numpy as np

    from mmembed.data.images import ImageStore
    from mmembed.embeddings.encode import guess_image_root
    from mmembed.eval.pool_cache import PoolEmbeddingCache
    from mmembed.index import FaissIndex
    from mmembed.index.build import make_index, write_retrieval_directory

    images = ImageStore(image_root or guess_image_root(pool))
    embedded = PoolEmbeddingCache(encoder, images, None, args.batch_size, sys.stderr.isatty()).embed_file(pool)
    index = make_index(args.backend, encoder.dim, encoder_id=encoder.encoder_id, factory=args.factory,
                       dtype=args.dtype, search_params=params, uri=args.uri, collection=args.collection,
                       milvus_index=args.milvus_index)
    if isinstance(index, FaissIndex) and not index.is_trained and args.train_sample:
        count = len(embedded.ids)
        rows = np.sort(np.random.default_rng(0).choice(count, min(count, args.train_sample), replace=False))
        index.train(embedded.vectors[rows])
    index.add(embedded.ids, embedded.vectors)
    write_retrieval_directory(args.out, index, pool, encoder_spec=_encoder_spec(args.encoder),
                              encoder_id=encoder.encoder_id, image_root=images.root, instructions_path=instructions,
                              encoder_settings=common.parse_encoder_settings(args.encoder_set))
    return len(index)


def _build_from_embeddings(args: argparse.Namespace, params: dict[str, float]) -> int:
    from mmembed.embeddings import EmbeddingSet
    from mmembed.embeddings.encode import guess_image_root
    from mmembed.eval.pool_cache import file_sha256
    from mmembed.index.build import index_from_embeddings, write_retrieval_directory

    pool, image_root, instructions = _resolve_pool(args)
    embeddings = EmbeddingSet.open(args.from_embeddings)
    embeddings.check(pool_sha256=file_sha256(pool))
    spec = _encoder_spec(args.encoder) if args.encoder else embeddings.manifest.encoder_spec
    if spec is None:
        raise ConfigError(f"{args.from_embeddings} does not record its encoder; give --encoder")
    if args.encoder:  # an explicit encoder must be the one the embeddings were made with
        encoder = _load_encoder(args)
        embeddings.check(encoder_id=encoder.encoder_id, dim=encoder.dim)
    out = Path(args.out)
    # the lists are built next to the output (same file system) and hard-linked into it
    workdir = out.parent / f".{out.name}.ondisk-work" if args.on_disk else None
    try:
        index = index_from_embeddings(embeddings, backend=args.backend, factory=args.factory, dtype=args.dtype,
                                      search_params=params, uri=args.uri, collection=args.collection,
                                      milvus_index=args.milvus_index, train_rows=args.train_sample,
                                      force=args.force, on_disk=workdir, show_progress=sys.stderr.isatty())
        write_retrieval_directory(out, index, pool, encoder_spec=spec, encoder_id=embeddings.encoder_id,
                                  image_root=image_root or guess_image_root(pool), instructions_path=instructions,
                                  encoder_settings=common.parse_encoder_settings(args.encoder_set))
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return len(index)


def _count_lines(path: Path) -> int:
    """Non-blank lines of a JSONL file (= candidates), counted without parsing, for the memory estimate."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _load_encoder(args: argparse.Namespace):
    """The --encoder with its --encoder-set options (the plain one-argument call when there are none)."""
    if args.encoder_set:
        return common.load_encoder_arg(args.encoder, args.encoder_set)
    return common.load_encoder_arg(args.encoder)
