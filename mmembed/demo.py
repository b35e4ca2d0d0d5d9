"""The main job (``make demo``): benchmark, the CPU default model against its baselines, a report, search.

1. build the bundled emoji/WordNet benchmark in M-BEIR layout — by default its *demo size* (the
   subset build: 12 % of the emoji concepts, 10 % of the WordNet synsets, same code and splits,
   8.5k-candidate global pool), so that everything runs in minutes on a laptop CPU; ``--full``
   uses the full build (65k-candidate global pool; about 4 CPU-minutes per model);
2. evaluate the untrained CPU default model and the trained checkpoints shipped with the package
   (score-fusion baseline, stage 1, stage 2, stage 3 of ``recipes/cpu-default/recipe.yaml``) on
   the test split — local and global pools, random instructions, modality error, and text
   retrieval nDCG@10 on the BEIR-format WordNet set — print the comparison and write
   ``runs/demo/report.md`` with plots;
3. index the global test pool with the stage-3 model and, for every task, answer a seeded random
   sample of its test queries (with the instruction the evaluation drew for each), mark the true
   answers and give the hit rate over a larger seeded sample — whatever it is; say how to open
   the web page.

Everything reuses what an earlier run left on disk (the benchmark build, embeddings, results).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mmembed.data.bundled import build, stats_table
from mmembed.data.layout import MBEIRDirectory
from mmembed.data.mbeir import read_queries
from mmembed.encoders.base import Item
from mmembed.encoders.registry import load_encoder, named_models
from mmembed.recipe.report import summary_table, task_table, write_report
from mmembed.recipe.run import ModelEvaluation, evaluate_models
from mmembed.retrieval import Retriever

logger = logging.getLogger("mmembed.demo")

#: Report label -> named model (the trained ones ship in mmembed/assets/cpu-default/).
MODELS = {"untrained": "cpu-default", "fusion": "cpu-default-fusion-stage1", "stage1": "cpu-default-stage1",
          "stage2": "cpu-default-stage2", "stage3": "cpu-default-stage3"}
SEARCH_MODEL = "stage3"
#: Per task: queries shown with their top results, and queries over which the hit rate is given.
SHOWN, SAMPLED, TOP_K, SEED = 2, 50, 5, 0


def _say(text: str = "") -> None:
    print(text, flush=True)


def available_models() -> dict[str, str]:
    known = set(named_models())
    missing = [name for name in MODELS.values() if name not in known]
    if missing:
        _say(f"(not shipped in this checkout, skipped: {', '.join(missing)}; "
             "train them with: mmembed recipe run recipes/cpu-default/recipe.yaml)")
    return {label: name for label, name in MODELS.items() if name in known}


def show_evaluation(evaluation: ModelEvaluation) -> None:
    _say(f"  {evaluation.label:<10} {evaluation.spec:<28} evaluated in {evaluation.seconds:.0f} s")


def show_examples(retriever: Retriever, data: MBEIRDirectory, seed: int = SEED) -> None:
    """Per task: a seeded random sample of test queries, top results marked, and the sample's hit rate."""
    registry = data.instructions()
    for task in data.tasks("test"):
        queries = read_queries(task.queries)
        sample = random.Random(f"{seed}:{task.name}").sample(queries, min(SAMPLED, len(queries)))
        instructions = [registry.choose(q, task.task.cand_modality, "random", seed) for q in sample]
        items = [Item(q.qid, q.text, data.images.ref(q.image, q.qid) if q.image else None) for q in sample]
        results = retriever.search_items(items, instructions, k=TOP_K)
        hits = sum(any(h.id in q.pos for h in found) for q, found in zip(sample, results))
        _say(f"\n### {task.name} ({task.task.arrow}): hit@{TOP_K} on {len(sample)} random test queries: "
             f"{hits}/{len(sample)}")
        for query, instruction, found in list(zip(sample, instructions, results))[:SHOWN]:
            _say(f"query {query.qid}: text={query.text!r} image={query.image!r}")
            _say(f"  instruction: {instruction}")
            for hit in found:
                mark = "*" if hit.id in query.pos else " "
                c = hit.candidate
                shown = (f"[{c.image}] " if c.image else "") + (c.text or "")
                _say(f"  {mark} {hit.rank}. {hit.score:.3f} {c.modality.value:<10} {shown[:80]}")
    _say("\n(* marks a correct answer; the queries are drawn at random with a fixed seed, not chosen)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmembed.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="use the full bundled benchmark (slower)")
    parser.add_argument("--data", help="where the benchmark is built (default data/bundled-demo, "
                                       "or data/bundled with --full)")
    parser.add_argument("--out", default="runs/demo", help="results, report, plots and the search index")
    parser.add_argument("--cache", default=".cache/embeddings", help="pool embedding cache")
    parser.add_argument("--max-queries", type=int, default=None, help="test queries per task (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    data = Path(args.data or ("data/bundled" if args.full else "data/bundled-demo"))
    out = Path(args.out)
    progress = sys.stderr.isatty()

    size = "full" if args.full else "demo-size (subset)"
    _say(f"# 1. The bundled benchmark, {size} build (emoji images + CLDR names + WordNet senses, M-BEIR layout)")
    result = build(data, subset=not args.full)
    _say(f"{'reused' if result.reused else 'built'} {data} in {result.seconds:.0f} s")
    _say(stats_table(data))

    _say("\n# 2. The CPU default model against its baselines (test split, random instructions)")
    models = available_models()
    config = {"instruction_modes": ["random"], "cache_dir": args.cache, "max_queries": args.max_queries}
    evaluations = evaluate_models(models, str(data), config, out / "eval", beir=str(data / "beir" / "wordnet"),
                                  show_progress=progress, on_model=show_evaluation)
    _say("\n" + summary_table(evaluations))
    _say("\nGlobal pool (every task's candidates mixed), hit@5 per task:\n" + task_table(evaluations, "global"))
    notes = [f"`make demo` on the {size} bundled benchmark at `{data}`. Models: "
             + ", ".join(f"{label} = `{spec}`" for label, spec in models.items()) + ".",
             "The full-size comparison is produced by `mmembed recipe run recipes/cpu-default/recipe.yaml` "
             "(runs/cpu-default/report.md) or `python -m mmembed.demo --full`."]
    report = write_report(out, evaluations, title="mmembed demo: the CPU default model and its baselines",
                          notes=notes)
    _say(f"\nreport with per-task tables and plots: {report}")

    label = SEARCH_MODEL if SEARCH_MODEL in models else next(iter(models))
    _say(f"\n# 3. Search: the global test pool indexed with {models[label]}")
    directory = MBEIRDirectory(data)
    retriever = Retriever.build(load_encoder(models[label]), directory.global_pool("test"), out / "index",
                                encoder_spec=models[label], image_root=directory.root,
                                instructions_path=directory.instructions_path, cache_dir=args.cache,
                                show_progress=progress)
    show_examples(retriever, directory)
    _say(f"\nDone in {time.perf_counter() - started:.0f} s. Search it yourself:")
    _say(f"  .venv/bin/mmembed search {out / 'index'} --task 'emoji:text->image' --text 'smiling cat'")
    _say(f"  .venv/bin/mmembed serve {out / 'index'}     # then open http://127.0.0.1:8000/ in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
