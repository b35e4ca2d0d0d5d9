"""Evaluating a recipe's models: M-BEIR (and a BEIR text set), reusing results of the same settings."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from mmembed.config import load_config

logger = logging.getLogger(__name__)


@dataclass
class ModelEvaluation:
    """One evaluated model: M-BEIR results (``EvalResults.to_dict()``) and the text-set result."""

    label: str
    spec: str
    mbeir: dict
    beir: dict | None = None
    seconds: float = 0.0


def evaluate_models(models: dict[str, str], data_dir: str, eval_config: dict, out_dir: Path, *,
                    beir: str | None = None, beir_split: str = "test", show_progress: bool = True,
                    on_model: Callable[[ModelEvaluation], None] | None = None) -> list[ModelEvaluation]:
    """Evaluate every ``{label: encoder spec}`` on ``data_dir`` (and ``beir``), reusing valid results."""
    from mmembed.encoders.registry import load_encoder
    from mmembed.eval.mbeir_runner import EvalConfig

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
    from mmembed.eval.mbeir_runner import run_evaluation

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
