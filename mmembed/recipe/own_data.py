"""The recipe on one's own data: ``mmembed recipe run --data DIR [--beir TEXT_DIR]``.

From an M-BEIR-layout directory with a ``train`` split, this writes a recipe (``OUT/recipe.yaml``
and its training files under ``OUT/config/``) and runs it like any other:

    stage1 (from ``start``, in-batch negatives) -> mine (modality-aware negatives, stage-1 model)
    -> stage2 (see :class:`RecipeSettings`: from stage 1 by default, with the mined negatives)
    [-> mine-text -> stage3 with the BEIR-format text set] [-> fusion: the score-fusion baseline]
    -> every stage scored on the val split, the best named ``final`` -> the test split scored once
    -> OUT/report.md

Data without a val split gets one: a seeded share of the training queries is held out
(:mod:`mmembed.recipe.holdout`), and the report says so. The settings follow
:mod:`recipes.cpu-default <mmembed.recipe>` (LoRA r=16 on the language model plus the projector,
half single-task batches) with the sizes scaled to the data (:func:`scaled_settings`). The written
files are an ordinary recipe: edit and rerun ``mmembed recipe run OUT/recipe.yaml`` to change anything.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from mmembed.data.layout import MBEIRDirectory
from mmembed.data.mbeir import iter_candidates, read_queries
from mmembed.errors import ConfigError
from mmembed.fileio import write_text

logger = logging.getLogger(__name__)

#: The text sets' instruction, as the CPU default recipe uses it.
TEXT_INSTRUCTION = "Given a query, retrieve passages that answer or match it."
#: The score-fusion baseline trained beside the MLLM-style stages (the paper's comparison).
FUSION_START = "cpu-default-fusion"


#: The most steps a stage trains by default (see :func:`scaled_settings`).
MAX_STEPS = 150


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


@dataclass(frozen=True)
class RecipeSettings:
    """How the stages are trained (the defaults were chosen on the val splits of docs/recipes.md)."""

    #: Stage 2 starts from the stage-1 model (``stage1``) or, as the paper does at M-BEIR scale,
    #: from ``start`` again.
    stage2_from: Literal["stage1", "start"] = "stage1"
    #: Stage 2's steps as a share of stage 1's.
    stage2_steps: float = 1.0
    #: Stage 2's learning rate as a share of stage 1's.
    stage2_lr: float = 1.0
    #: Hard negatives per query in stage 2 (type 1 and type 2 quotas are split from these).
    num_negatives: int = 2
    #: Fill the negative slots of a query that has too few mined candidates with random candidates
    #: of the target modality (``False``: that query keeps its mined and in-batch negatives only).
    random_fill: bool = False
    #: Training threads (``None``: every core, up to 8). A fixed count gives repeatable weights.
    threads: int | None = None
    #: The score-fusion baseline (``None``: not trained).
    baseline: Literal["fusion"] | None = "fusion"
    #: The share of training queries held out as val when the data has no val split.
    val_share: float = 0.1


def scaled_settings(queries: int, pool: int, max_steps: int | None = None) -> Scale:
    """Batch, steps and mining sizes for ``queries`` training queries and a ``pool``-candidate pool.

    - batch: ``queries // 8`` and ``pool // 8`` within [2, 64] (64 is what the CPU default model
      trains with; a smaller set gets smaller batches so that an epoch still has several, and a
      small pool, whose candidates must not repeat within a batch, still fills them with a
      positive and two negatives per query);
    - steps: about three epochs, within [20, 150]: the whole recipe (stage 1, mining, stage 2, the
      fusion baseline, evaluation) then fits in 15 minutes on two CPU cores up to 10,000 training
      queries (``benchmarks/recipe_time.py``: 11.8 minutes for 10,000); ``max_steps`` overrides
      (more data trains better with more steps: about 1.3 s per stage-1 or stage-2 step of 64 on
      two cores);
    - mining: k = min(50, pool) and the type-2 window its last five ranks; chunks of
      ``queries // 8`` within [64, 2048] so that an interrupted run loses little.
    """
    if queries < 1:
        raise ConfigError("the train split holds no query")
    batch = max(2, min(64, queries // 8, pool // 8))
    steps = max_steps if max_steps is not None else max(20, min(MAX_STEPS, math.ceil(3 * queries / batch)))
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
                    eval_split_name: str | None = None, max_steps: int | None = None, cross_fit: int = 1,
                    settings: RecipeSettings = RecipeSettings()) -> Path:
    """Write ``out/recipe.yaml`` (and ``out/config/*.yaml``) for ``data``; returns the recipe's path."""
    directory = MBEIRDirectory(data)
    if not _has_split(directory, "train"):
        raise ConfigError(f"{data}: an M-BEIR directory with a train split (query/train/*.jsonl and the global "
                          "pool cand_pool/global/mbeir_union_train_cand_pool.jsonl) is needed")
    root, config_dir = Path(out), Path(out) / "config"
    notes = []
    if eval_split_name not in (None, "val"):
        eval_split(directory, eval_split_name)  # checked before anything is written
    if not _has_split(directory, "val"):
        from mmembed.recipe.holdout import hold_out_val

        notes.append(f"{data} has no val split: a seeded {settings.val_share:.0%} of its training queries was held "
                     f"out as val (in {root / 'data'}) to choose the final model")
        data = str(hold_out_val(data, root / "data", share=settings.val_share))
        directory = MBEIRDirectory(data)
    split = eval_split(directory, eval_split_name)
    queries = sum(len(read_queries(t.queries)) for t in directory.tasks("train"))
    pool = sum(1 for _ in iter_candidates(directory.global_pool("train")))
    scale = scaled_settings(queries, pool, max_steps)
    instructions = "random" if directory.instructions_path.is_file() else "none"
    threads = settings.threads or min(8, os.cpu_count() or 1)
    logger.info("%s: %d training queries, %d pool candidates -> batch %d, %d steps per stage, mining k=%d, "
                "%d threads", data, queries, pool, scale.batch_size, scale.max_steps, scale.k, threads)
    mined, cache = str(root / "mine"), str(root / "cache")  # pool vectors: mining's serve val, val's serve test
    stage1 = _train(data, start, scale, instructions, root / "stage1", threads)
    stage2_start = str(root / "stage1" / "final") if settings.stage2_from == "stage1" else start
    stage2 = _train(data, stage2_start, scale, instructions, root / "stage2", threads, negatives=mined,
                    num_negatives=settings.num_negatives, steps_share=settings.stage2_steps,
                    lr_share=settings.stage2_lr, random_fill=settings.random_fill)
    files = {"stage1": stage1, "stage2": stage2}
    quota = settings.num_negatives // 2
    mine = {"data": data, "encoder": "stage1", "cross_fit": cross_fit,
            "config": {"k": scale.k, "window": list(scale.window), "num_type1": settings.num_negatives - quota,
                       "num_type2": quota, "chunk_size": scale.chunk_size, "instruction_mode": instructions,
                       "cache_dir": cache, "random_fallback": settings.random_fill}}
    steps = [{"name": "stage1", "train": str(config_dir / "stage1.yaml")}, {"name": "mine", "mine": mine},
             {"name": "stage2", "train": str(config_dir / "stage2.yaml")}]
    models = {"start": start, "stage1": "stage1", "stage2": "stage2"}
    if beir:
        files["stage3"] = _stage3(data, beir, scale, instructions, root, mined, threads, settings.num_negatives,
                                  settings.random_fill)
        steps += [{"name": "mine-text", "mine": {"data": beir, "encoder": "stage2", "config": {
            "k": min(50, scale.k), "window": list(scale.window), "num_type1": 0, "num_type2": 2,
            "beir_instruction": TEXT_INSTRUCTION, "chunk_size": scale.chunk_size}}},
                  {"name": "stage3", "train": str(config_dir / "stage3.yaml")}]
        models["stage3"] = "stage3"
    among = [name for name in models if name != "start"]
    if settings.baseline == "fusion":
        files["fusion"] = _train(data, FUSION_START, scale, instructions, root / "fusion", threads)
        steps.append({"name": "fusion", "train": str(config_dir / "fusion.yaml")})
        models = {"start": start, "fusion": "fusion", **{k: v for k, v in models.items() if k != "start"}}
    evaluate: dict = {"models": models, "data": data, "select_split": "val", "select_among": among,
                      "config": {"split": split, "instruction_modes": [instructions], "cache_dir": cache}}
    if split == "val":
        notes.append("no test split: the report scores the val split, the split that chose the final model")
    if beir:
        if (text_split := _beir_split(Path(beir))) is not None:
            evaluate.update(beir=beir, beir_split=text_split)
        else:
            logger.warning("%s has no test/dev qrels: the report has no text score", beir)
    for name, config in files.items():
        _write_yaml(config_dir / f"{name}.yaml", config, f"{name} of the recipe for {data} (written by mmembed "
                    "recipe run --data; edit and run OUT/recipe.yaml to change it)")
    recipe = {"output_dir": str(root), "data": data, "build_bundled": False, "steps": steps, "evaluate": evaluate,
              "notes": notes}
    path = root / "recipe.yaml"
    _write_yaml(path, recipe, f"the recipe for {data}: {queries:,} training queries, {pool:,} pool candidates, "
                f"batch {scale.batch_size}, {scale.max_steps} steps per stage; final model chosen on val, "
                f"evaluated on split {split}")
    for note in notes:
        logger.warning("%s", note)
    return path


def _train(data: str, start: str, scale: Scale, instructions: str, out: Path, threads: int, *,
           negatives: str | None = None, num_negatives: int = 0, steps_share: float = 1.0,
           lr_share: float = 1.0, random_fill: bool = False) -> dict:
    """A stage-1/2 (or fusion) training configuration; ``negatives``: the mining step's output."""
    mbeir = {"root": data, "split": "train", "pool": "global", "group_per_task": True}
    data_settings: dict = {"mbeir": [mbeir], "instruction_mode": instructions, "task_homogeneous": 0.5}
    if negatives:
        mbeir["negatives"] = negatives
        data_settings["num_negatives"] = num_negatives
        data_settings["negative_padding"] = "random" if random_fill else "none"
    steps = max(1, round(scale.max_steps * steps_share))
    projector = r"^image_proj\." if start == FUSION_START else r"^projector\."
    return {"output_dir": str(out), "seed": 0,
            "model": {"encoder": start, "lora": {"enabled": True, "r": 16, "alpha": 32}, "train_projector": True,
                      "train_pooler": True, "dropout": False},
            "data": data_settings,
            "train": {"global_batch_size": scale.batch_size, "max_steps": steps, "temperature": 0.05,
                      "length_buckets": 4, "num_threads": threads},
            "optim": {"lr": 1.0e-3 * lr_share, "lr_overrides": {projector: 2.0e-3 * lr_share},
                      "warmup_steps": max(1, steps // 10), "scheduler": "linear", "max_grad_norm": 1.0},
            "checkpoint": {"every_steps": max(10, steps // 3), "keep_last": 1, "export_dtype": "float16"},
            "logging": {"every_steps": max(1, min(10, steps // 5))}}


def _stage3(data: str, beir: str, scale: Scale, instructions: str, root: Path, mined: str, threads: int,
            num_negatives: int, random_fill: bool) -> dict:
    """Continue from stage 2 on the multimodal data plus the text set, at a fifth of the learning rate."""
    if not (Path(beir) / "qrels" / "train.tsv").is_file():
        raise ConfigError(f"--beir {beir}: a BEIR-format directory with corpus.jsonl, queries.jsonl and "
                          "qrels/train.tsv is needed")
    config = _train(data, str(root / "stage2" / "final"), scale, instructions, root / "stage3", threads,
                    negatives=mined, num_negatives=num_negatives, random_fill=random_fill)
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
