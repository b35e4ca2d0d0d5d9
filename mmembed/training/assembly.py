"""Turning a :class:`~mmembed.training.config.TrainConfig` into an encoder and a dataset.

- :func:`load_training_encoder`: a named model or any folder that
  :func:`~mmembed.encoders.registry.load_encoder` reads (an mmembed checkpoint, a transformers VLM,
  the released MM-Embed); it must implement :class:`~mmembed.encoders.base.TrainableEncoder`.
  When LoRA or ``train_patterns`` will change its language backbone, the encoder's
  ``for_language_training()`` is trained instead (the towers models then save BERT's changes).
- :func:`build_sources` / :func:`build_dataset`: M-BEIR task files (each task a source, sharing one
  candidate pool per pool file) and BEIR text sets.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmembed.data.layout import MBEIRDirectory
from mmembed.encoders.base import TrainableEncoder
from mmembed.errors import ConfigError
from mmembed.training.config import DataSettings, ModelSettings
from mmembed.training.data import CandidatePool, ContrastiveDataset, TrainingSource, beir_source, mbeir_source
from mmembed.training.trainable import language_will_train

logger = logging.getLogger(__name__)


def load_training_encoder(settings: ModelSettings) -> TrainableEncoder:
    """The encoder a run starts from (see the module docstring)."""
    from mmembed.encoders.registry import load_encoder

    overrides = dict(settings.settings)
    if settings.trust_remote_code:
        overrides["trust_remote_code"] = True
    encoder = load_encoder(settings.encoder, **overrides)
    if not isinstance(encoder, TrainableEncoder):
        raise ConfigError(f"model.encoder: {settings.encoder!r} loads as a {type(encoder).__name__}, which cannot "
                          "be trained (trainable: the towers models and transformers VLMs)")
    if language_will_train(encoder, settings):
        encoder = encoder.for_language_training()
    return encoder


def build_sources(data: DataSettings, instruction_mode: str) -> list[TrainingSource]:
    """Every training source of the configuration, in configuration order."""
    sources: list[TrainingSource] = []
    pools: dict[str, CandidatePool] = {}

    def pool_for(path: Path) -> CandidatePool:
        key = str(path.resolve())
        if key not in pools:
            pools[key] = CandidatePool.from_mbeir(path)
        return pools[key]

    for n, spec in enumerate(data.mbeir):
        directory = MBEIRDirectory(spec.root)
        registry = None
        if instruction_mode != "none" and directory.instructions_path.is_file():
            registry = directory.instructions()
        prefix = f"{n}:" if len(data.mbeir) > 1 else ""
        if spec.queries:
            pool = pool_for(directory.global_pool(spec.split))
            sources.append(mbeir_source(spec.queries, pool, directory.images, registry,
                                        name=prefix + Path(spec.queries).stem, group=spec.group))
            continue
        for task in directory.select_tasks(spec.split, spec.tasks):
            pool_path = directory.global_pool(spec.split) if spec.pool == "global" else task.local_pool
            logger.info("training source %s: pool %s", task.name, pool_path)
            group = prefix + task.name if spec.group_per_task else spec.group
            queries = mined_queries(spec.negatives, task.name) if spec.negatives else task.queries
            sources.append(mbeir_source(queries, pool_for(pool_path), directory.images, registry,
                                        name=prefix + task.name, group=group, task_files=task))
    for spec in data.beir:
        sources.append(beir_source(spec.root, spec.name, split=spec.split, instructions=spec.instructions,
                                   hard_negatives=spec.hard_negatives, min_score=spec.min_score, group=spec.group))
    return sources


def mined_queries(directory: str, task: str) -> Path:
    """A task's query file in a finished ``mmembed mine`` output directory."""
    from mmembed.mining.jobs import MANIFEST

    path = Path(directory) / f"{task}.jsonl"
    if not (Path(directory) / MANIFEST).is_file():
        raise ConfigError(f"data.mbeir.negatives: {directory} is not a finished mining run (no {MANIFEST}); "
                          "run or resume 'mmembed mine' first")
    if not path.is_file():
        raise ConfigError(f"data.mbeir.negatives: {directory} has no mined queries for task {task} ({path.name})")
    return path


def build_dataset(data: DataSettings, seed: int) -> ContrastiveDataset:
    sources = build_sources(data, data.instruction_mode)
    dataset = ContrastiveDataset(sources, num_negatives=data.num_negatives, negative_padding=data.negative_padding,
                                 instruction_mode=data.instruction_mode, seed=seed)
    logger.info("training data: %d queries from %d sources", len(dataset), len(sources))
    return dataset
