"""Running a recipe: each step in order (:mod:`mmembed.recipe.steps`), the final model chosen on
validation data (:mod:`mmembed.recipe.selection`), then evaluation and the report.

- an evaluation is skipped when ``eval/<label>/`` holds results of the same encoder and settings;
- the report (:mod:`mmembed.recipe.report`) is written at the end, from what is on disk.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmembed.config import load_config
from mmembed.errors import ConfigError, MMEmbedError
from mmembed.mining.jobs import default_shard
from mmembed.recipe.config import RecipeConfig
from mmembed.recipe.cross_fit import run_cross_fit
from mmembed.recipe.evaluation import ModelEvaluation, evaluate_models
from mmembed.recipe.selection import Selection, select_final
from mmembed.recipe.steps import (
    FINAL,
    Timings,
    mining_config,
    resolve_model,
    run_mine_step,
    step_train_config,
    train_unless_done,
)

logger = logging.getLogger(__name__)

__all__ = ["FINAL", "ModelEvaluation", "RecipeResult", "check_recipe", "evaluate_models", "run_recipe"]


@dataclass
class RecipeResult:
    output_dir: Path
    #: ``(step name, what happened)``: ``ran``, ``resumed`` or ``skipped``.
    steps: list[tuple[str, str]] = field(default_factory=list)
    evaluations: list[ModelEvaluation] = field(default_factory=list)
    #: The final model chosen on validation data (``evaluate.select_split``), else ``None``.
    selection: Selection | None = None
    report: Path | None = None


def run_recipe(recipe: RecipeConfig, *, show_progress: bool = True, report: bool = True) -> RecipeResult:
    """Run every step of ``recipe`` that is not done yet, choose the final model, evaluate, report."""
    out = Path(recipe.output_dir)
    result = RecipeResult(out)
    train_configs = check_recipe(recipe)
    if recipe.build_bundled:
        from mmembed.data.bundled import build

        build(recipe.data)
    timings = Timings(out)
    for step in recipe.steps:
        with timings.measure(step.name) as measured:
            if step.train is not None:
                outcome = train_unless_done(train_configs[step.name], step.name)
                measured.steps = _trained_steps(out / step.name)
            elif step.mine is not None and step.mine.cross_fit > 1:
                outcome = run_cross_fit(recipe, step, show_progress)
            else:
                outcome = run_mine_step(recipe, step, show_progress)
            measured.skipped = outcome == "skipped"
        logger.info("recipe step %s: %s (%.0f s)", step.name, outcome, time.perf_counter() - measured.wall)
        result.steps.append((step.name, outcome))
    if default_shard()[0] != 0:  # under a launcher, one process evaluates and reports
        return result
    spec = recipe.evaluate
    data = spec.data or recipe.data
    models = {label: resolve_model(recipe, str(name)) for label, name in spec.models.items()}
    if spec.select_split:
        with timings.measure(f"select on {spec.select_split}"):
            result.selection = select_final(recipe, models, out, show_progress=show_progress)
    with timings.measure("evaluate"):
        result.evaluations = evaluate_models(models, data, spec.config, out / "eval", beir=spec.beir,
                                             beir_split=spec.beir_split, show_progress=show_progress)
    if report:
        from mmembed.recipe.report import write_report

        result.report = write_report(out, result.evaluations, recipe, notes=recipe.notes,
                                     selection=result.selection)
    return result


def _trained_steps(run_dir: Path) -> int | None:
    """The optimizer steps of the model a training step exported (its ``training.json``)."""
    from mmembed.training.saving import TRAINING_META_FILE

    try:
        return int(json.loads((run_dir / FINAL / TRAINING_META_FILE).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_recipe(recipe: RecipeConfig) -> dict:
    """Every step's configuration, before the first step runs: an error names the step and the key.

    Returns each training step's resolved ``TrainConfig`` by step name (parsed once, here).
    """
    from mmembed.eval.mbeir_runner import EvalConfig

    trained: dict = {}
    for step in recipe.steps:
        try:
            if step.train is not None:
                trained[step.name] = step_train_config(recipe, step)
            else:
                assert step.mine is not None
                mining_config(step)
                _check_model_spec(recipe, step.mine.encoder, trained, "mine.encoder")
                _check_input_dir(recipe, step.mine.data, "mine.data")
                if step.mine.cross_fit > 1 and (Path(step.mine.data) / "corpus.jsonl").is_file():
                    raise ConfigError("mine.cross_fit applies to M-BEIR data, not to a BEIR text set")
        except MMEmbedError as e:
            raise ConfigError(f"recipe step {step.name}: {e}") from None
    try:
        load_config(EvalConfig, None, None, base=dict(recipe.evaluate.config))
        for label, name in recipe.evaluate.models.items():
            _check_model_spec(recipe, str(name), trained, f"evaluate.models.{label}")
        _check_input_dir(recipe, recipe.evaluate.data or recipe.data, "evaluate.data")
        _check_selection(recipe)
    except MMEmbedError as e:
        raise ConfigError(f"recipe evaluate: {e}") from None
    return trained


def _check_selection(recipe: RecipeConfig) -> None:
    spec = recipe.evaluate
    if spec.select_split is None:
        return
    unknown = [label for label in spec.select_among if label not in spec.models]
    if unknown:
        raise ConfigError(f"select_among: {', '.join(map(repr, unknown))} not in evaluate.models "
                          f"({', '.join(spec.models)})")


def _check_model_spec(recipe: RecipeConfig, name: str, trained, key: str) -> None:
    """A model is an earlier training step, an existing directory or a named model."""
    from mmembed.encoders.registry import named_models

    if name in trained or Path(name).is_dir() or name in named_models():
        return
    later = any(s.name == name for s in recipe.steps)
    reason = "a step that does not come before this one" if later else "neither a training step of the recipe, " \
        f"a directory nor a named model ({', '.join(named_models())})"
    raise ConfigError(f"{key}: {name!r} is {reason}")


def _check_input_dir(recipe: RecipeConfig, data: str, key: str) -> None:
    built_here = recipe.build_bundled and Path(data) == Path(recipe.data)
    if not built_here and not Path(data).is_dir():
        raise ConfigError(f"{key}: directory {data!r} not found")
