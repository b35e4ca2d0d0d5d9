"""The main job (``make demo``): build the bundled benchmark, evaluate, index, and answer queries.

Steps, each reusing what an earlier run left on disk (the benchmark build, pool embeddings,
trained checkpoints):

1. build the bundled emoji/WordNet benchmark in M-BEIR layout and print its task table;
2. evaluate the CPU default model — untrained, and every trained checkpoint found under
   ``runs/`` (e.g. from ``mmembed train recipes/cpu-default-stage1.yaml``) — on the test split,
   local and global pools, and print the per-task tables;
3. index the global test pool with the best model and answer one query of each kind: text,
   image, and composed image + modification, marking the true answers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mmembed.data.bundled import build, stats_table
from mmembed.data.layout import MBEIRDirectory
from mmembed.data.mbeir import read_queries
from mmembed.encoders.registry import load_encoder
from mmembed.eval.report import results_table
from mmembed.eval.runner import EvalConfig, run_evaluation
from mmembed.retrieval import Retriever

logger = logging.getLogger("mmembed.demo")

EXAMPLES = (("emoji_task0", "text"), ("emoji_task3", "image"), ("emoji_task7", "composed image + modification"))


def _say(text: str = "") -> None:
    print(text, flush=True)


def trained_checkpoints(runs: Path) -> list[Path]:
    """Final outputs of training runs (directories holding an encoder config.json)."""
    return sorted(p.parent for p in runs.glob("*/final/config.json"))


def evaluate_models(data: Path, runs: Path, cache: Path, max_queries: int) -> list[tuple[str, float, object]]:
    models: list[tuple[str, str]] = [("cpu-default (untrained)", "cpu-default")]
    models += [(f"{p.parent.name} (trained)", str(p)) for p in trained_checkpoints(runs)]
    config = EvalConfig(max_queries=max_queries, instruction_modes=["random"], cache_dir=str(cache),
                        show_progress=sys.stderr.isatty())
    scored = []
    for label, spec in models:
        _say(f"\n## {label}: {spec}")
        encoder = load_encoder(spec)
        started = time.perf_counter()
        results = run_evaluation(encoder, data, config, runs / "demo" / "eval" / Path(spec).parent.name)
        _say(results_table(results))
        _say(f"(evaluated in {time.perf_counter() - started:.0f} s; hit@5 = M-BEIR's 'Recall@5')")
        scored.append((spec, results.average("global", "random") or 0.0, encoder))
    return scored


def show_examples(retriever: Retriever, data: MBEIRDirectory) -> None:
    for task_name, kind in EXAMPLES:
        task = data.task(task_name)
        query = read_queries(task.queries)[0]
        instruction = data.instructions().prompts(query.dataset_id, query.modality, task.task.cand_modality)[0]
        image = data.images.ref(query.image, query.qid) if query.image else None
        _say(f"\n### {kind} query ({task_name}): text={query.text!r} image={query.image!r}")
        _say(f"instruction: {instruction}")
        for hit in retriever.search(query.text, image, instruction=instruction, k=5):
            mark = "*" if hit.id in query.pos else " "
            c = hit.candidate
            shown = c.text if c.text else ""
            if c.image:
                shown = f"[{c.image}] {shown}"
            _say(f" {mark} {hit.rank}. {hit.score:.3f} {c.modality.value:<10} {shown[:90]}")
    _say("\n(* marks a correct answer)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmembed.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/bundled", help="where the bundled benchmark is built")
    parser.add_argument("--runs", default="runs", help="training runs and demo outputs")
    parser.add_argument("--cache", default=".cache/embeddings", help="pool embedding cache")
    parser.add_argument("--max-queries", type=int, default=300, help="test queries per task")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    data, runs = Path(args.data), Path(args.runs)

    _say("# 1. The bundled benchmark (emoji images + CLDR names + WordNet senses, M-BEIR layout)")
    result = build(data)
    _say(f"{'reused' if result.reused else 'built'} {data} in {result.seconds:.0f} s")
    _say(stats_table(data))

    _say("\n# 2. Evaluation on the test split (local pool = each task's own; global = all 9 pools mixed)")
    scored = evaluate_models(data, runs, Path(args.cache), args.max_queries)
    best_spec, _, best_encoder = max(scored, key=lambda s: s[1])

    _say(f"\n# 3. Search: the global test pool indexed with {best_spec}")
    directory = MBEIRDirectory(data)
    retriever = Retriever.build(best_encoder, directory.global_pool("test"), runs / "demo" / "index",
                                encoder_spec=best_spec, image_root=directory.root,
                                instructions_path=directory.instructions_path, cache_dir=args.cache,
                                show_progress=sys.stderr.isatty())
    show_examples(retriever, directory)
    _say(f"\nDone in {time.perf_counter() - started:.0f} s. Search it yourself:")
    _say(f"  .venv/bin/mmembed search {runs / 'demo' / 'index'} --list-tasks")
    _say(f"  .venv/bin/mmembed search {runs / 'demo' / 'index'} --task 'emoji:text->image' --text 'smiling cat'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
