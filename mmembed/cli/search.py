"""``mmembed search``: query a retrieval index, or a running service, with text, an image, or both."""

from __future__ import annotations

import argparse
from typing import Any

from mmembed.cli.common import add_rerank_arguments, parse_encoder_settings, rerank_config_from_args
from mmembed.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index (or a running service) with text and/or an image",
                       description="Search a retrieval directory built by 'mmembed index build', or a running "
                                   "'mmembed serve' with --server URL (no model is loaded here then).")
    p.add_argument("index", nargs="?", help="retrieval directory (not with --server)")
    p.add_argument("--server", metavar="URL", help="ask a running service instead, e.g. http://127.0.0.1:8000 "
                                                   "(API key: --api-key or $MMEMBED_API_KEY)")
    p.add_argument("--api-key", help="the service's API key (with --server)")
    p.add_argument("--text", help="query text")
    p.add_argument("--image", help="query image file")
    p.add_argument("--instruction", help="task instruction for the query")
    p.add_argument("--task", help="use the instruction of a task, e.g. 'emoji:text->image' (see --list-tasks)")
    p.add_argument("--list-tasks", action="store_true", help="list the tasks of the index and exit")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--modality", action="append", choices=("text", "image", "image,text"),
                   help="return only candidates of this modality (repeat for several)")
    p.add_argument("--where", metavar="EXPR", help="return only candidates whose fields match, e.g. "
                                                   "'dataset == \"10\"' (fields: id, dataset, modality and the keys "
                                                   "of a JSON src_content; and, or, not, ==, !=, <, >, in [...])")
    p.add_argument("--hybrid", choices=("rrf", "weighted", "bm25"),
                   help="fuse the dense ranking with BM25 over the candidates' texts by reciprocal rank (rrf) or "
                        "a weighted sum; bm25: BM25 alone (needs mmembed[hybrid])")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch threads (default 1: one query gains nothing from more, and on a busy machine "
                        "idle-spinning threads make a cold start several times slower)")
    p.add_argument("--encoder-set", metavar="KEY=VALUE", action="append", default=[],
                   help="an encoder loading option, over those recorded when the index was built (e.g. device=cuda)")
    add_rerank_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.index is None) == (args.server is None):
        raise ConfigError("give a retrieval directory or --server URL (one of them)")
    if not args.list_tasks:
        if not args.text and not args.image:
            raise ConfigError("give --text, --image, or both")
        if args.instruction and args.task:
            raise ConfigError("give --instruction or --task, not both")
    if args.server is not None:
        return _run_remote(args)
    return _run_local(args)


def _run_local(args: argparse.Namespace) -> int:
    import torch

    from mmembed.retrieval import Retriever, task_name

    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    rerank_config = rerank_config_from_args(args)
    retriever = Retriever.load(args.index, encoder_settings=parse_encoder_settings(args.encoder_set))
    if args.list_tasks:
        for entry in retriever.tasks():
            print(f"{task_name(entry)}\t{entry.prompts[0]}")
        return 0
    instruction = retriever.task_instruction(args.task) if args.task else args.instruction
    image = None
    if args.image:
        from pathlib import Path

        from mmembed.data.images import load_image_file

        image = load_image_file(Path(args.image), "query")
    if rerank_config is not None:
        from mmembed.rerank import build_reranker

        retriever.reranker = build_reranker(rerank_config)
    hits = retriever.search(args.text, image, instruction=instruction, k=args.k, where=args.where,
                            modality=args.modality, hybrid=args.hybrid)
    reranked = retriever.reranker is not None
    if reranked:
        print(f"reranked by {retriever.reranker.reranker_id}; columns: rank, score, retrieval score, id, ...")
    for hit in hits:
        c = hit.candidate
        _print_hit(hit.rank, hit.score, hit.retrieval_score, hit.id, c.modality.value, c.text,
                   c.image and f"[image {c.image}]", reranked)
    return 0


def _run_remote(args: argparse.Namespace) -> int:
    """The same search through the service's API: nothing heavy is imported or loaded here."""
    from pathlib import Path

    from mmembed.serve.client import Client, ServiceError
    from mmembed.serve.settings import api_key_from_env

    if args.encoder_set or rerank_config_from_args(args) is not None:
        raise ConfigError("--encoder-set and reranking options belong to the service (mmembed serve), not to "
                          "--server searches")
    try:
        with Client(args.server, api_key=api_key_from_env(args.api_key)) as client:
            if args.list_tasks:
                for task in client.tasks():
                    print(f"{task.name}\t{task.instruction}")
                return 0
            if args.modality and len(args.modality) > 1:
                raise ConfigError("--server searches take one --modality (or a --where on modality)")
            answer = client.search(args.text, Path(args.image) if args.image else None,
                                   instruction=args.instruction, task=args.task, k=args.k, where=args.where,
                                   modality=args.modality[0] if args.modality else None, hybrid=args.hybrid)
    except ServiceError as e:
        raise ConfigError(f"{args.server}: {e}") from None
    if answer.reranked:
        print("reranked by the service; columns: rank, score, retrieval score, id, ...")
    for hit in answer.hits:
        _print_hit(hit.rank, hit.score, hit.retrieval_score, hit.id, hit.modality, hit.text,
                   hit.has_image and "[image]", answer.reranked)
    return 0


def _print_hit(rank: int, score: float, retrieval_score: float | None, hit_id: str, modality: str,
               text: str | None, image: Any, reranked: bool) -> None:
    shown = " | ".join(x for x in (text, image) if x)
    scores = f"{score:.4f}" + (f"  {retrieval_score:.4f}" if reranked and retrieval_score is not None else "")
    print(f"{rank:>3}  {scores}  {hit_id:<12} {modality:<10} {shown}")
