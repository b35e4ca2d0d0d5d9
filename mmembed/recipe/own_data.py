"""The recipe on one's own data: ``mmembed recipe run --data DIR [--beir TEXT_DIR]``.

From an M-BEIR-layout directory with a ``train`` split, this writes a recipe (``OUT/recipe.yaml``
and its training files under ``OUT/config/``) and runs it like any other:

    stage1 (from ``start``, in-batch negatives) -> mine (modality-aware negatives, stage-1 model)
    -> stage2 (from ``start`` again, with the mined negatives) [-> mine-text -> stage3 with the
    BEIR-format text set] -> evaluate start / stage1 / stage2 [/ stage3] -> OUT/report.md

The settings follow :mod:`recipes.cpu-default <mmembed.recipe>` (LoRA r=16 on the language model
plus the projector, half single-task batches, one CPU thread for repeatable weights) with the
sizes scaled to the data (:func:`scaled_settings`). The written files are an ordinary recipe:
edit and rerun ``mmembed recipe run OUT/recipe.yaml`` to change anything.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmembed.data.layout import MBEIRDirectory
from mmembed.data.mbeir import iter_candidates, read_queries
from mmembed.errors import ConfigError
from mmembed.fileio import write_text

logger = logging.getLogger(__name__)

#: The text sets' instruction, as the CPU default recipe uses it.
TEXT_INSTRUCTION = "Given a query, retrieve passages that answer or match it."


@dataclass(frozen=True)
class Scale:
    """Settings scaled to the data size (see :func:`scaled_settings`)."""

    queries: int
    pool: int
    batch_size: int
    max_steps: int
    k: int
    window: tuple[int, int]
    chunk_size: int


def scaled_settings(queries: int, pool: int, max_steps: int | None = None) -> Scale:
    """Batch, steps and mining sizes for ``queries`` training queries and a ``pool``-candidate pool.

    - batch: ``queries // 8`` and ``pool // 8`` within [2, 64] (64 is what the CPU default model
      trains with; a smaller set gets smaller batches so that an epoch still has several, and a
      small pool, whose candidates must not repeat within a batch, still fills them with a
      positive and two negatives per query);
    - steps: about three epochs, within [20, 600] (600 steps of 64 take about half an hour per
      stage on two CPU cores); ``max_steps`` overrides;
    - mining: k = min(50, pool) and the type-2 window its last five ranks; chunks of
      ``queries // 8`` within [64, 2048] so that an interrupted run loses little.
    """
    if queries < 1:
        raise ConfigError("the train split holds no query")
    batch = max(2, min(64, queries // 8, pool // 8))
    steps = max_steps if max_steps is not None else max(20, min(600, math.ceil(3 * queries / batch)))
    if steps < 1:
        raise ConfigError(f"max_steps must be >= 1, got {steps}")
    k = max(1, min(50, pool))
    return Scale(queries, pool, batch, steps, k, (max(1, k - 4), k), max(64, min(2048, queries // 8)))


def _has_split(directory: MBEIRDirectory, split: str) -> bool:
    return bool(directory.tasks(split)) and directory.global_pool(split).is_file()


def eval_split(directory: MBEIRDirectory, wanted: str | None) -> str:
    """``wanted``, else ``test``, else ``val``: the split the report scores."""
    for split in [wanted] if wanted else ["test", "val"]:
        if _has_split(directory, split):
            return split
    raise ConfigError(f"{directory.root}: no {wanted or 'test or val'} split with query files and a global pool to "
                      "evaluate on; give one with --eval-split (e.g. --eval-split train to score the training "
                      "queries, which says little about new ones)")


def _beir_split(root: Path) -> str | None:
    return next((s for s in ("test", "dev", "val") if (root / "qrels" / f"{s}.tsv").is_file()), None)


def own_data_recipe(data: str, out: str, *, start: str = "cpu-default", beir: str | None = None,
                    eval_split_name: str | None = None, max_steps: int | None = None, cross_fit: int = 1) -> Path:
    """Write ``out/recipe.yaml`` (and ``out/config/*.yaml``) for ``data``; returns the recipe's path."""
    directory = MBEIRDirectory(data)
    if not _has_split(directory, "train"):
        raise ConfigError(f"{data}: an M-BEIR directory with a train split (query/train/*.jsonl and the global "
                          "pool cand_pool/global/mbeir_union_train_cand_pool.jsonl) is needed")
    queries = sum(len(read_queries(t.queries)) for t in directory.tasks("train"))
    pool = sum(1 for _ in iter_candidates(directory.global_pool("train")))
    scale = scaled_settings(queries, pool, max_steps)
    split = eval_split(directory, eval_split_name)
    instructions = "random" if directory.instructions_path.is_file() else "none"
    logger.info("%s: %d training queries, %d pool candidates -> batch %d, %d steps per stage, mining k=%d",
                data, queries, pool, scale.batch_size, scale.max_steps, scale.k)
    root, config_dir = Path(out), Path(out) / "config"
    mined = str(root / "mine")
    stage1 = _train(data, start, scale, instructions, root / "stage1")
    stage2 = _train(data, start, scale, instructions, root / "stage2", negatives=mined)
    files = {"stage1": stage1, "stage2": stage2}
    mine = {"data": data, "encoder": "stage1", "cross_fit": cross_fit,
            "config": {"k": scale.k, "window": list(scale.window), "num_type1": 1, "num_type2": 1,
                       "chunk_size": scale.chunk_size, "instruction_mode": instructions}}
    steps = [{"name": "stage1", "train": str(config_dir / "stage1.yaml")}, {"name": "mine", "mine": mine},
             {"name": "stage2", "train": str(config_dir / "stage2.yaml")}]
    models = {"start": start, "stage1": "stage1", "stage2": "stage2"}
    evaluate: dict = {"models": models, "data": data, "config": {"split": split, "instruction_modes": [instructions]}}
    if beir:
        files["stage3"] = _stage3(data, beir, scale, instructions, root, mined)
        steps += [{"name": "mine-text", "mine": {"data": beir, "encoder": "stage2", "config": {
            "k": min(50, scale.k), "window": list(scale.window), "num_type1": 0, "num_type2": 2,
            "beir_instruction": TEXT_INSTRUCTION, "chunk_size": scale.chunk_size}}},
                  {"name": "stage3", "train": str(config_dir / "stage3.yaml")}]
        models["stage3"] = "stage3"
        if (text_split := _beir_split(Path(beir))) is not None:
            evaluate.update(beir=beir, beir_split=text_split)
        else:
            logger.warning("%s has no test/dev qrels: the report has no text score", beir)
    for name, config in files.items():
        _write_yaml(config_dir / f"{name}.yaml", config, f"{name} of the recipe for {data} (written by mmembed "
                    "recipe run --data; edit and run OUT/recipe.yaml to change it)")
    recipe = {"output_dir": str(root), "data": data, "build_bundled": False, "steps": steps, "evaluate": evaluate}
    path = root / "recipe.yaml"
    _write_yaml(path, recipe, f"the recipe for {data}: {queries:,} training queries, {pool:,} pool candidates, "
                f"batch {scale.batch_size}, {scale.max_steps} steps per stage; evaluated on split {split}")
    return path


def _train(data: str, start: str, scale: Scale, instructions: str, out: Path, *,
           negatives: str | None = None) -> dict:
    """A stage-1/2 training configuration (stage 2: ``negatives`` from the mining step, 2 per query)."""
    mbeir = {"root": data, "split": "train", "pool": "global", "group_per_task": True}
    data_settings: dict = {"mbeir": [mbeir], "instruction_mode": instructions, "task_homogeneous": 0.5}
    if negatives:
        mbeir["negatives"] = negatives
        data_settings["num_negatives"] = 2
    return {"output_dir": str(out), "seed": 0,
            "model": {"encoder": start, "lora": {"enabled": True, "r": 16, "alpha": 32}, "train_projector": True,
                      "train_pooler": True, "dropout": False},
            "data": data_settings,
            "train": {"global_batch_size": scale.batch_size, "max_steps": scale.max_steps, "temperature": 0.05,
                      "num_threads": 1},
            "optim": {"lr": 1.0e-3, "lr_overrides": {r"^projector\.": 2.0e-3},
                      "warmup_steps": max(1, scale.max_steps // 10), "scheduler": "linear", "max_grad_norm": 1.0},
            "checkpoint": {"every_steps": max(10, scale.max_steps // 3), "keep_last": 1, "export_dtype": "float16"},
            "logging": {"every_steps": max(1, min(10, scale.max_steps // 5))}}


def _stage3(data: str, beir: str, scale: Scale, instructions: str, root: Path, mined: str) -> dict:
    """Continue from stage 2 on the multimodal data plus the text set, at a fifth of the learning rate."""
    if not (Path(beir) / "qrels" / "train.tsv").is_file():
        raise ConfigError(f"--beir {beir}: a BEIR-format directory with corpus.jsonl, queries.jsonl and "
                          "qrels/train.tsv is needed")
    config = _train(data, str(root / "stage2" / "final"), scale, instructions, root / "stage3", negatives=mined)
    config["model"]["lora"] = {"enabled": True, "r": 8, "alpha": 16}
    config["data"]["mbeir"][0]["group_per_task"] = False  # two groups: the multimodal data and the text set
    config["data"]["weights"] = {"mbeir": 3, "text": 1}  # the text set a quarter of the examples, as cpu-default
    config["data"]["beir"] = [{"root": beir, "name": "text", "split": "train", "group": "text",
                               "hard_negatives": str(root / "mine-text" / "negatives.jsonl"),
                               "instructions": [TEXT_INSTRUCTION]}]
    config["train"]["max_steps"] = max(1, scale.max_steps // 2)
    config["optim"].update(lr=2.0e-4, lr_overrides={r"^projector\.": 4.0e-4},
                           warmup_steps=max(1, scale.max_steps // 20))
    return config


def _write_yaml(path: Path, obj: dict, comment: str) -> None:
    write_text(path, f"# {comment}\n" + yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))
