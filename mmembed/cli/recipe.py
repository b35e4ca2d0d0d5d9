"""``mmembed recipe run RECIPE.yaml``: stage 1 -> mine -> stage 2 -> mine text -> stage 3 -> evaluate.

``mmembed recipe run --data DIR`` writes and runs a recipe for one's own M-BEIR-layout data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmembed.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipe", help="run a training recipe (steps + evaluation + report)",
                       description="Run the steps of a recipe file in order (training runs, mining runs), each "
                                   "skipped when its output exists and is valid and resumed when interrupted; "
                                   "then evaluate the models it names and write OUTPUT_DIR/report.md with plots.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    run_p = actions.add_parser("run", help="run (or continue) a recipe, or the recipe on your own data (--data)",
                               description="Run RECIPE.yaml, or with --data DIR write a recipe for that M-BEIR-"
                                           "layout directory (stage 1 -> mine -> stage 2 from stage 1 [-> mine text -> "
                                           "stage 3 with --beir], the fusion baseline -> the best stage on val "
                                           "linked as OUT/final -> test; sizes scaled to the data) into OUT and "
                                           "run it.")
    run_p.add_argument("recipe", nargs="?", help="recipe YAML, e.g. recipes/cpu-default/recipe.yaml")
    run_p.add_argument("--data", metavar="DIR", help="your M-BEIR-layout directory with a train split")
    run_p.add_argument("--beir", metavar="DIR", help="with --data: a BEIR-format text set (train qrels) for stage 3")
    run_p.add_argument("--start", default="cpu-default",
                       help="with --data: the model to start from (a named model or a directory; default cpu-default)")
    run_p.add_argument("--out", metavar="DIR", help="with --data: output directory (default runs/<data dir name>)")
    run_p.add_argument("--eval-split", metavar="SPLIT", help="with --data: the split to evaluate (default test, "
                                                             "else val)")
    run_p.add_argument("--max-steps", type=int, metavar="N", help="with --data: training steps per stage (default "
                                                                  "about three epochs, 20-150)")
    run_p.add_argument("--cross-fit", type=int, default=1, metavar="K",
                       help="with --data: cross-fitted mining with K folds (K extra stage-1 runs; default 1: off)")
    run_p.add_argument("--baseline", choices=["fusion", "none"], default="fusion",
                       help="with --data: train the score-fusion baseline beside the stages for the report's "
                            "comparison (default fusion; none skips it)")
    run_p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                       help="override one recipe key (repeatable), e.g. --set output_dir=runs/x")
    run_p.add_argument("--no-report", action="store_true", help="do not write the report")
    run_p.set_defaults(func=run)


def recipe_path(args: argparse.Namespace) -> str:
    """The recipe to run: the file given, or the one written for ``--data``."""
    if (args.recipe is None) == (args.data is None):
        raise ConfigError("give either a recipe file or --data DIR (not both)")
    if args.data is None:
        if args.beir or args.out or args.eval_split or args.max_steps is not None or args.cross_fit != 1 or \
                args.start != "cpu-default" or args.baseline != "fusion":
            raise ConfigError("--beir, --start, --out, --eval-split, --max-steps, --cross-fit and --baseline go "
                              "with --data")
        return args.recipe
    from mmembed.recipe.own_data import RecipeSettings, own_data_recipe

    out = args.out or str(Path("runs") / Path(args.data).resolve().name)
    path = own_data_recipe(args.data, out, start=args.start, beir=args.beir, eval_split_name=args.eval_split,
                           max_steps=args.max_steps, cross_fit=args.cross_fit,
                           settings=RecipeSettings(baseline=None if args.baseline == "none" else "fusion"))
    print(f"recipe: {path}")
    return str(path)


def run(args: argparse.Namespace) -> int:
    from mmembed.recipe import load_recipe, run_recipe
    from mmembed.recipe.report import summary_table

    recipe = load_recipe(recipe_path(args), args.set)
    result = run_recipe(recipe, show_progress=sys.stderr.isatty(), report=not args.no_report)
    for name, outcome in result.steps:
        print(f"{name}: {outcome}")
    final = result.selection.chosen if result.selection is not None else None
    print(summary_table(result.evaluations, final))
    if result.selection is not None:
        print(f"final: {result.output_dir / 'final'} ({result.selection.reason})")
    if result.report is not None:
        print(f"report: {result.report}")
    return 0
