"""``mmembed search``: query a retrieval index with text, an image, or both."""

from __future__ import annotations

import argparse

from mmembed.cli.common import add_rerank_arguments, parse_encoder_settings, rerank_config_from_args
from mmembed.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index with text and/or an image",
                       description="Search a retrieval directory built by 'mmembed index build'.")
    p.add_argument("index", help="retrieval directory")
    p.add_argument("--text", help="query text")
    p.add_argument("--image", help="query image file")
    p.add_argument("--instruction", help="task instruction for the query")
    p.add_argument("--task", help="use the instruction of a task, e.g. 'emoji:text->image' (see --list-tasks)")
    p.add_argument("--list-tasks", action="store_true", help="list the tasks of the index and exit")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--encoder-set", metavar="KEY=VALUE", action="append", default=[],
                   help="an encoder loading option, over those recorded when the index was built (e.g. device=cuda)")
    add_rerank_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmembed.data.images import load_image_file
    from mmembed.retrieval import Retriever, task_name

    retriever = Retriever.load(args.index, encoder_settings=parse_encoder_settings(args.encoder_set))
    rerank_config = rerank_config_from_args(args)
    if args.list_tasks:
        for entry in retriever.tasks():
            print(f"{task_name(entry)}\t{entry.prompts[0]}")
        return 0
    if not args.text and not args.image:
        raise ConfigError("give --text, --image, or both")
    if args.instruction and args.task:
        raise ConfigError("give --instruction or --task, not both")
    instruction = retriever.task_instruction(args.task) if args.task else args.instruction
    image = None
    if args.image:
        from pathlib import Path

        image = load_image_file(Path(args.image), "query")
    if rerank_config is not None:
        from mmembed.rerank import build_reranker

        retriever.reranker = build_reranker(rerank_config)
    hits = retriever.search(args.text, image, instruction=instruction, k=args.k)
    if retriever.reranker is not None:
        print(f"reranked by {retriever.reranker.reranker_id}; columns: rank, score, retrieval score, id, ...")
    for hit in hits:
        _print_hit(hit, reranked=retriever.reranker is not None)
    return 0


def _print_hit(hit, reranked: bool) -> None:
    c = hit.candidate
    shown = " | ".join(x for x in (c.text, c.image and f"[image {c.image}]") if x)
    scores = f"{hit.score:.4f}" + (f"  {hit.retrieval_score:.4f}" if reranked else "")
    print(f"{hit.rank:>3}  {scores}  {hit.id:<12} {c.modality.value:<10} {shown}")
