"""Choosing a recipe's final model on validation data (``evaluate.select_split``).

Every candidate model (``evaluate.select_among``, by default each model a training step produced)
is scored on the validation split; the one with the best global-pool average of the headline
metric becomes the result: ``OUTPUT_DIR/final`` links to it and ``OUTPUT_DIR/final.json`` records
the choice, every candidate's validation score and the reason. A tie keeps the earlier candidate
(the cheaper stage), so a later stage is chosen only when it is better on validation data; the
test split is then scored once, for the report, and never decides anything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mmembed.errors import ConfigError
from mmembed.fileio import write_json
from mmembed.recipe.config import RecipeConfig
from mmembed.recipe.evaluation import ModelEvaluation, evaluate_models
from mmembed.recipe.report import global_average, modality_error

logger = logging.getLogger(__name__)

FINAL_LINK = "final"
SELECTION_FILE = "final.json"


@dataclass
class Selection:
    split: str
    #: The chosen model's label and encoder spec.
    chosen: str
    spec: str
    #: Every candidate's global-pool average of the headline metric on ``split`` (in [0, 1]).
    scores: dict[str, float | None]
    #: Every candidate's global-pool modality error on ``split`` (in [0, 1]).
    modality_errors: dict[str, float | None]
    reason: str


def select_final(recipe: RecipeConfig, models: dict[str, str], out: Path, *,
                 show_progress: bool = True) -> Selection:
    """Score the candidates on the validation split, link the best as ``out/final``, record why."""
    spec = recipe.evaluate
    assert spec.select_split is not None
    trained = {s.name for s in recipe.training_steps()}
    among = spec.select_among or [label for label, name in spec.models.items() if str(name) in trained]
    if not among:
        raise ConfigError("evaluate.select_split: no model to choose from (name them in evaluate.select_among)")
    config = {**spec.config, "split": spec.select_split}
    evaluations = evaluate_models({label: models[label] for label in among}, spec.data or recipe.data, config,
                                  out / "eval" / spec.select_split, show_progress=show_progress)
    selection = choose(evaluations, spec.select_split)
    _link_final(out, Path(selection.spec))
    write_json(out / SELECTION_FILE, asdict(selection))
    logger.info("final model: %s", selection.reason)
    return selection


def choose(evaluations: Sequence[ModelEvaluation], split: str) -> Selection:
    """The evaluation with the best global average (the first of equals); a missing score never wins."""
    scores = {ev.label: global_average(ev) for ev in evaluations}
    best = evaluations[0]
    for ev in evaluations[1:]:
        if _ranked(scores[ev.label]) > _ranked(scores[best.label]):
            best = ev
    others = ", ".join(f"{label} {_pct(score)}" for label, score in scores.items() if label != best.label)
    reason = (f"{best.label} has the best global-pool average on the {split} split: {_pct(scores[best.label])}"
              + (f" (vs {others})" if others else ""))
    return Selection(split, best.label, best.spec, scores, {ev.label: modality_error(ev) for ev in evaluations},
                     reason)


def _ranked(score: float | None) -> float:
    return float("-inf") if score is None else score


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _link_final(out: Path, model: Path) -> None:
    """``out/final`` -> the chosen model directory (relative when it lies under ``out``), replaced atomically."""
    link = out / FINAL_LINK
    if not model.is_dir():  # a named model: final.json names it, nothing to link
        link.unlink(missing_ok=True)
        return
    target = os.path.relpath(model.resolve(), out.resolve())
    staging = out / f".{FINAL_LINK}.staging"
    staging.unlink(missing_ok=True)
    os.symlink(target, staging, target_is_directory=True)
    os.replace(staging, link)
