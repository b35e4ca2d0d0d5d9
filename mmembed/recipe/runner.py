"""Running a recipe: each step in order, skipped when its output is there and valid, then evaluation.

- a training step is skipped when ``<step>/final`` holds a model trained with the same resolved
  configuration, resumed from its last checkpoint when it was interrupted, and refused when its
  directory holds a run of another configuration (delete it to retrain);
- a mining step is skipped when its ``mining.json`` records the same settings and encoder (an
  encoder retrained since then means mining again), and resumes its finished chunks otherwise;
- an evaluation is skipped when ``eval/<label>/`` holds results of the same encoder and settings.

The report (:mod:`mmembed.recipe.report`) is written at the end, from what is on disk.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmembed.config import load_config
from mmembed.errors import ConfigError, MMEmbedError
from mmembed.mining.jobs import MANIFEST as MINING_MANIFEST
from mmembed.mining.jobs import default_shard
from mmembed.recipe.config import RecipeConfig, Step

logger = logging.getLogger(__name__)

FINAL = "final"


@dataclass
class ModelEvaluation:
    """One evaluated model: M-BEIR results (``EvalResults.to_dict()``) and the text-set result."""

    label: str
    spec: str
    mbeir: dict
    beir: dict | None = None
    seconds: float = 0.0


@dataclass
class RecipeResult:
    output_dir: Path
    #: ``(step name, what happened)``: ``ran``, ``resumed`` or ``skipped``.
    steps: list[tuple[str, str]] = field(default_factory=list)
    evaluations: list[ModelEvaluation] = field(default_factory=list)
    report: Path | None = None


def run_recipe(recipe: RecipeConfig, *, show_progress: bool = True, report: bool = True) -> RecipeResult:
    """Run every step of ``recipe`` that is not done yet, evaluate, and write the report."""
    out = Path(recipe.output_dir)
    result = RecipeResult(out)
    check_recipe(recipe)
    if recipe.build_bundled:
        from mmembed.data.bundled import build

        build(recipe.data)
    for step in recipe.steps:
        started = time.perf_counter()
        outcome = _run_train(recipe, step) if step.train is not None else _run_mine(recipe, step, show_progress)
        logger.info("recipe step %s: %s (%.0f s)", step.name, outcome, time.perf_counter() - started)
        result.steps.append((step.name, outcome))
    if default_shard()[0] != 0:  # under a launcher, one process evaluates and reports
        return result
    spec = recipe.evaluate
    models = {label: resolve_model(recipe, str(name)) for label, name in spec.models.items()}
    result.evaluations = evaluate_models(models, spec.data or recipe.data, spec.config, out / "eval",
                                         beir=spec.beir, beir_split=spec.beir_split, show_progress=show_progress)
    if report:
        from mmembed.recipe.report import write_report

        result.report = write_report(out, result.evaluations, recipe)
    return result


def resolve_model(recipe: RecipeConfig, name: str) -> str:
    """A training step's final model directory, or ``name`` itself (a directory or built-in name)."""
    if any(s.name == name and s.train is not None for s in recipe.steps):
        return str(Path(recipe.output_dir) / name / FINAL)
    return name


def step_train_config(recipe: RecipeConfig, step: Step):
    from mmembed.training.config import load_train_config

    assert step.train is not None
    return load_train_config(step.train, [*step.set, f"output_dir={Path(recipe.output_dir) / step.name}"])


def mining_config(step: Step):
    """A mining step's :class:`~mmembed.mining.MiningConfig` (checked)."""
    from mmembed.mining import MiningConfig

    assert step.mine is not None
    return load_config(MiningConfig, None, None, base=dict(step.mine.config))


def check_recipe(recipe: RecipeConfig) -> None:
    """Every step's configuration, before the first step runs: an error names the step and the key."""
    from mmembed.eval.runner import EvalConfig

    trained: set[str] = set()
    for step in recipe.steps:
        try:
            if step.train is not None:
                step_train_config(recipe, step)
                trained.add(step.name)
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
    except MMEmbedError as e:
        raise ConfigError(f"recipe evaluate: {e}") from None


def _check_model_spec(recipe: RecipeConfig, name: str, trained: set[str], key: str) -> None:
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


# ----------------------------------------------------------------------------- steps


def _run_train(recipe: RecipeConfig, step: Step) -> str:
    return train_config(step_train_config(recipe, step), step.name)


def train_config(config, label: str) -> str:
    """Train ``config`` unless its output directory already holds a model of that configuration."""
    import torch

    from mmembed.config import to_dict
    from mmembed.training import checkpoint as ckpt
    from mmembed.training.config import TrainConfig
    from mmembed.training.saving import TRAIN_CONFIG_FILE
    from mmembed.training.trainer import Trainer

    out = Path(config.output_dir)
    final = out / FINAL / TRAIN_CONFIG_FILE
    if final.is_file():
        done, wanted = to_dict(load_config(TrainConfig, final)), to_dict(config)
        if done == wanted:
            return "skipped"
        changed = sorted(k for k in set(done) | set(wanted) if done.get(k) != wanted.get(k))
        raise ConfigError(f"recipe step {label}: {out} holds a model trained with another configuration "
                          f"(sections {', '.join(changed)} differ); delete {out} to train it again")
    resume = bool(ckpt.list_checkpoints(out))
    threads = torch.get_num_threads()
    try:
        Trainer(config).train(resume=resume)
    finally:  # train.num_threads is for training; mining and evaluation get the machine back
        torch.set_num_threads(threads)
    return "resumed" if resume else "ran"


def _run_mine(recipe: RecipeConfig, step: Step, show_progress: bool) -> str:
    from mmembed.encoders.registry import load_encoder
    from mmembed.mining import mine_beir, mine_mbeir, stats_table

    assert step.mine is not None
    if step.mine.cross_fit > 1:
        from mmembed.recipe.cross_fit import run_cross_fit

        return run_cross_fit(recipe, step, show_progress)
    config = mining_config(step)
    encoder = load_encoder(resolve_model(recipe, step.mine.encoder))
    mine = mine_beir if (Path(step.mine.data) / "corpus.jsonl").is_file() else mine_mbeir
    target = Path(recipe.output_dir) / step.name
    mined = mine(encoder, step.mine.data, target, config, show_progress=show_progress)
    if not mined.complete:  # launched in several processes: each mined its shard; wait for the last one
        wait_for(target / MINING_MANIFEST, f"the other processes' mining shards of step {step.name}")
        return "ran"
    logger.info("mining statistics of %s:\n%s", step.name, stats_table(mined))
    return "skipped" if mined.reused else "ran"


def wait_for(path: Path, what: str, poll_s: float = 10.0) -> None:
    logger.info("waiting for %s (%s)", what, path)
    while not path.is_file():
        time.sleep(poll_s)


# ----------------------------------------------------------------------------- evaluation


def evaluate_models(models: dict[str, str], data_dir: str, eval_config: dict, out_dir: Path, *,
                    beir: str | None = None, beir_split: str = "test", show_progress: bool = True,
                    on_model: Callable[[ModelEvaluation], None] | None = None) -> list[ModelEvaluation]:
    """Evaluate every ``{label: encoder spec}`` on ``data_dir`` (and ``beir``), reusing valid results."""
    from mmembed.encoders.registry import load_encoder
    from mmembed.eval.runner import EvalConfig

    evaluations = []
    for label, spec in models.items():
        started = time.perf_counter()
        encoder = load_encoder(spec)
        config = load_config(EvalConfig, None, None, base={**eval_config, "show_progress": show_progress})
        target = out_dir / label
        mbeir = _mbeir_results(encoder, data_dir, config, target)
        text = _beir_result(encoder, beir, beir_split, config, target) if beir else None
        evaluation = ModelEvaluation(label, spec, mbeir, text, time.perf_counter() - started)
        evaluations.append(evaluation)
        if on_model is not None:
            on_model(evaluation)
    return evaluations


def _comparable(config: dict) -> dict:
    """The settings that decide a result, as JSON has them (tuples become lists)."""
    kept = {k: v for k, v in config.items() if k not in ("show_progress", "mmembed_version")}
    return json.loads(json.dumps(kept))


def _mbeir_results(encoder, data_dir: str, config, target: Path) -> dict:
    from mmembed.eval.runner import run_evaluation

    path = target / "results.json"
    wanted = _comparable({**asdict(config), "data_dir": str(data_dir), "encoder_id": encoder.encoder_id})
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if _comparable(saved["config"]) == wanted:
            logger.info("reusing the evaluation in %s", target)
            return saved
    return run_evaluation(encoder, data_dir, config, target).to_dict()


def _beir_result(encoder, root: str, split: str, config, target: Path) -> dict:
    from mmembed.eval.beir_runner import run_beir_evaluation

    path = target / f"beir-{Path(root).name}-{split}.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("config", {}).get("encoder_id") == encoder.encoder_id:
            return saved
    result = run_beir_evaluation(encoder, root, split=split, batch_size=config.batch_size,
                                 show_progress=config.show_progress, output_dir=target)
    return dict(result.__dict__)
