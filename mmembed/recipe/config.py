"""The typed form of a recipe file (``mmembed recipe run RECIPE.yaml``).

A recipe names its steps in order — training runs (a ``mmembed train`` YAML each) and mining runs
(``mmembed mine`` settings) — and then which models to evaluate. Every step writes under
``output_dir/<step name>``; a mining step's encoder and an evaluated model may name an earlier
training step, meaning its final model. See ``recipes/cpu-default/recipe.yaml``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from mmembed.config import load_config
from mmembed.errors import ConfigError

STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class MineSpec:
    #: An M-BEIR directory (modality-aware negatives) or a BEIR directory (window negatives).
    data: str = ""
    #: A training step's name (its final model), an encoder directory, or a built-in name.
    encoder: str = ""
    #: ``mmembed.mining.MiningConfig`` keys.
    config: dict = field(default_factory=dict)
    #: Cross-fitted mining with K folds (1: off). ``encoder`` must then name a training step: its
    #: configuration is trained K more times, each on the training queries outside one fold (folds
    #: by a hash of (``config.seed``, qid)), and each fold is mined by the model that did not see it;
    #: the merged output reads like any mining output. Costs K extra training runs. M-BEIR data only.
    cross_fit: int = 1


@dataclass
class Step:
    name: str = ""
    #: A training YAML (``mmembed train``); its ``output_dir`` is set to ``output_dir/<name>``.
    train: str | None = None
    #: ``key=value`` overrides of the training YAML.
    set: list[str] = field(default_factory=list)
    mine: MineSpec | None = None


@dataclass
class EvaluateSpec:
    #: ``{label: training step name or encoder spec}``, in the order of the report's columns.
    models: dict = field(default_factory=dict)
    #: The M-BEIR directory evaluated (defaults to the recipe's ``data``).
    data: str | None = None
    #: ``mmembed.eval.mbeir_runner.EvalConfig`` keys.
    config: dict = field(default_factory=dict)
    #: A BEIR-format text set scored by nDCG@10 (``None``: no text evaluation).
    beir: str | None = None
    beir_split: str = "test"
    #: Choose the final model on this split (``val``): every model of ``select_among`` is scored there,
    #: the best global-pool average is linked as ``OUTPUT_DIR/final`` and named in the report, and
    #: ``config.split`` (the test split) is scored once for the table. ``None``: no choice is made.
    select_split: str | None = None
    #: Labels of ``models`` that may be chosen (empty: every model that a training step produced).
    select_among: list[str] = field(default_factory=list)


@dataclass
class RecipeConfig:
    output_dir: str = "runs/recipe"
    #: The M-BEIR directory the recipe trains and evaluates on.
    data: str = "data/bundled"
    #: Build the bundled benchmark into ``data`` when it is not there (or is out of date).
    build_bundled: bool = False
    steps: list[Step] = field(default_factory=list)
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)
    #: Lines the report shows under its title (e.g. how a validation split was made).
    notes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        seen: set[str] = set()
        for step in self.steps:
            if not STEP_NAME.match(step.name or ""):
                raise ConfigError(f"recipe step name {step.name!r}: use letters, digits, '-', '_' and '.'")
            if step.name in seen or step.name == "eval":
                raise ConfigError(f"recipe step name {step.name!r} is used twice or reserved")
            if (step.train is None) == (step.mine is None):
                raise ConfigError(f"recipe step {step.name!r}: give exactly one of 'train' or 'mine'")
            if step.mine is not None and not (step.mine.data and step.mine.encoder):
                raise ConfigError(f"recipe step {step.name!r}: 'mine' needs 'data' and 'encoder'")
            if step.mine is not None and not (isinstance(step.mine.cross_fit, int) and step.mine.cross_fit >= 1):
                raise ConfigError(f"recipe step {step.name!r}: mine.cross_fit must be an integer >= 1 (1: off), "
                                  f"got {step.mine.cross_fit!r}")
            if step.mine is not None and step.mine.cross_fit > 1 and not any(
                    s.name == step.mine.encoder and s.train is not None for s in self.steps):
                raise ConfigError(f"recipe step {step.name!r}: cross_fit needs 'encoder' to name a training step "
                                  "of the recipe (its configuration trains the fold models)")
            seen.add(step.name)
        if not self.evaluate.models:
            raise ConfigError("recipe: 'evaluate.models' must name at least one model")

    def training_steps(self) -> list[Step]:
        return [s for s in self.steps if s.train is not None]


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> RecipeConfig:
    return load_config(RecipeConfig, path, overrides)  # load_config runs RecipeConfig.validate
