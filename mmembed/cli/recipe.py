"""``mmembed recipe run RECIPE.yaml``: stage 1 -> mine -> stage 2 -> mine text -> stage 3 -> evaluate."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipe", help="run a training recipe (steps + evaluation + report)",
                       description="Run the steps of a recipe file in order (training runs, mining runs), each "
                                   "skipped when its output exists and is valid and resumed when interrupted; "
                                   "then evaluate the models it names and write OUTPUT_DIR/report.md with plots.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    run_p = actions.add_parser("run", help="run (or continue) a recipe")
    run_p.add_argument("recipe", help="recipe YAML, e.g. recipes/cpu-default/recipe.yaml")
    run_p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                       help="override one recipe key (repeatable), e.g. --set output_dir=runs/x")
    run_p.add_argument("--no-report", action="store_true", help="do not write the report")
    run_p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmembed.recipe import load_recipe, run_recipe
    from mmembed.recipe.report import summary_table

    recipe = load_recipe(args.recipe, args.set)
    result = run_recipe(recipe, show_progress=sys.stderr.isatty(), report=not args.no_report)
    for name, outcome in result.steps:
        print(f"{name}: {outcome}")
    print(summary_table(result.evaluations))
    if result.report is not None:
        print(f"report: {result.report}")
    return 0
