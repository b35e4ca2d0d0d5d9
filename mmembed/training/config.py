"""The typed configuration of a training run (``mmembed train CONFIG.yaml``).

Every field has a default, so a YAML file names only what differs; ``--set key.sub=value``
overrides one field. The resolved configuration is written to the output directory and into every
checkpoint, so a run can be repeated and a resume can refuse a changed configuration. See
``docs/training.md`` for the schema with examples, and ``recipes/`` for complete files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mmembed.config import load_config
from mmembed.errors import ConfigError
from mmembed.instructions import INSTRUCTION_MODES


@dataclass
class LoraSettings:
    """LoRA through peft on the language backbone (MM-Embed: r=8, alpha=64)."""

    enabled: bool = False
    r: int = 8
    alpha: int = 64
    dropout: float = 0.0
    #: Module-name suffixes to adapt; ``None`` means every linear layer of the language backbone.
    target_modules: list[str] | None = None


@dataclass
class ModelSettings:
    """Which encoder to train and which of its parameters move."""

    #: A named model (``cpu-default``), an mmembed checkpoint directory, or a transformers VLM directory.
    encoder: str = "cpu-default"
    #: Constructor / ``from_pretrained`` overrides, e.g. ``{pooling: latent_attention, max_length: 128}``.
    settings: dict = field(default_factory=dict)
    trust_remote_code: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    train_projector: bool = True
    train_pooler: bool = True
    #: Train the vision tower too (impossible for the towers models, whose features are cached).
    train_vision: bool = False
    #: Regular expressions over parameter names (as ``encoder_parameters`` lists them) to train as well,
    #: e.g. ``'^text\.model\.encoder\.layer\.[45]\.'`` for the top two MiniLM layers.
    train_patterns: list[str] = field(default_factory=list)
    gradient_checkpointing: bool = False
    #: ``False`` zeroes every dropout probability: training then does not depend on how a batch is
    #: split over processes, so one and N processes give the same weights.
    dropout: bool = True


@dataclass
class MBEIRData:
    """Training queries of an M-BEIR-layout directory."""

    root: str = "data/bundled"
    split: str = "train"
    #: Task names (``emoji_task0`` ...) to train on; ``None`` means every task of the split.
    tasks: list[str] | None = None
    #: ``global``: one shared pool (the split's union pool); ``local``: each task's own pool file.
    pool: Literal["global", "local"] = "global"
    #: An explicit query file instead of the split's task files.
    queries: str | None = None
    #: A ``mmembed mine`` output directory: its per-task query files, whose ``neg_cand_list``
    #: holds mined hard negatives, replace the split's task files (set ``data.num_negatives``).
    negatives: str | None = None
    group: str = "mbeir"
    #: Make each task its own mixture group (named like the task), so ``data.weights`` can weigh tasks.
    group_per_task: bool = False


@dataclass
class BeirData:
    """A BEIR-format text set (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)."""

    root: str = ""
    name: str = ""
    split: str = "train"
    instructions: list[str] = field(default_factory=list)
    hard_negatives: str | None = None
    min_score: int = 1
    group: str | None = None


@dataclass
class DataSettings:
    mbeir: list[MBEIRData] = field(default_factory=list)
    beir: list[BeirData] = field(default_factory=list)
    num_negatives: int = 0
    negative_padding: Literal["random", "none"] = "random"
    instruction_mode: Literal["random", "fixed", "none"] = "random"
    #: ``{group: weight}`` mixing source groups (every group listed); ``None`` mixes in proportion to size.
    weights: dict | None = None
    examples_per_epoch: int | None = None
    #: Single-task batches: true, false, or the share of rows batched per task (the rest mixed).
    task_homogeneous: bool | float = False
    task_remainder: Literal["drop", "mix"] = "drop"
    num_workers: int = 0


@dataclass
class TrainSettings:
    epochs: int = 1
    #: Stop after this many optimizer steps (``None``: run the epochs).
    max_steps: int | None = None
    #: A wall-clock safety net (minutes, from start-up, data loading included): when spent, training
    #: stops after the current step and saves its final output. The learning-rate schedule still
    #: assumes the full run, and a stopped run depends on the machine's speed (not reproducible).
    max_minutes: float | None = None
    #: Queries per optimizer step over all processes (each brings its positive and negatives).
    global_batch_size: int = 32
    #: GradCache chunk (rows per forward pass); ``None`` embeds each side of the batch in one pass.
    chunk_size: int | None = None
    #: Embed each side (or GradCache chunk) in this many passes over length-sorted items: less
    #: compute spent on padding when short and long items share a batch; results are unchanged.
    length_buckets: int = 1
    temperature: float = 0.05
    #: Every process's candidates are negatives for every query (a differentiable all-gather).
    gather: bool = True
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    #: torch intra-op threads per process (``None``: torch's default). On a CPU shared with other
    #: jobs, 1 avoids OpenMP threads spinning while they wait for a busy core.
    num_threads: int | None = None
    #: Matryoshka (MRL): the loss is also computed on these prefixes of the embedding (weighted mean,
    #: the full dimension always included; mmembed.losses.matryoshka) and the saved model records
    #: them, so ``dimensions=`` accepts them. Left out of saved configs while unset.
    matryoshka_dims: list[int] | None = field(default=None, metadata={"omit_if_default": True})
    #: One weight per ``matryoshka_dims`` entry (default: all 1).
    matryoshka_weights: list[float] | None = field(default=None, metadata={"omit_if_default": True})


@dataclass
class OptimSettings:
    lr: float = 1e-4
    #: ``{regex over parameter names: lr}``; the first matching pattern wins, others use ``lr``.
    lr_overrides: dict = field(default_factory=dict)
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = 0
    #: Used when ``warmup_steps`` is 0: a share of the total steps.
    warmup_ratio: float = 0.0
    #: Clip the global gradient norm to this (``None`` or 0: no clipping).
    max_grad_norm: float | None = 1.0


@dataclass
class CheckpointSettings:
    #: Save every N optimizer steps (0: only the final output).
    every_steps: int = 0
    keep_last: int = 2
    #: Precision of the exported model's stored weights (towers models): ``null`` keeps the
    #: model's own; ``float16`` halves the file (the CPU recipe ships its checkpoints so).
    export_dtype: Literal["float16", "bfloat16", "float32"] | None = None


@dataclass
class LoggingSettings:
    every_steps: int = 1
    progress: bool = True
    #: ``auto`` uses TensorBoard when it is installed.
    tensorboard: Literal["auto", "on", "off"] = "auto"
    plot: bool = True


@dataclass
class EvalSettings:
    """Periodic evaluation on a validation split through :func:`mmembed.eval.mbeir_runner.run_evaluation`."""

    every_steps: int = 0
    at_end: bool = False
    #: Defaults to the first M-BEIR training root.
    data_dir: str | None = None
    split: str = "val"
    tasks: list[str] | None = None
    pools: list[str] = field(default_factory=lambda: ["local"])
    instruction_modes: list[str] = field(default_factory=lambda: ["random"])
    max_queries: int | None = 100
    batch_size: int = 64


@dataclass
class DistributedSettings:
    """Passed to :class:`accelerate.Accelerator`; ``accelerate launch`` configs work as well."""

    #: DDP's search for parameters a step did not use. Not needed: every trainable parameter takes
    #: part in every forward pass (see ``EmbeddingModule``), so it only costs a graph traversal.
    find_unused_parameters: bool = False
    #: A DeepSpeed config (a JSON file path or the mapping), e.g. ``{zero_optimization: {stage: 2}}``.
    deepspeed: Any = None
    #: Keyword arguments of :class:`accelerate.FullyShardedDataParallelPlugin`.
    fsdp: dict | None = None
    #: Train on CPU even when a GPU is present.
    cpu: bool = False


@dataclass
class TrainConfig:
    """A whole run: model, data, engine, checkpoints, logging and evaluation."""

    output_dir: str = "runs/train"
    seed: int = 0
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    distributed: DistributedSettings = field(default_factory=DistributedSettings)

    def validate(self) -> None:
        """Refuse settings that cannot work, before any model is loaded: one line naming the key."""
        if not self.data.mbeir and not self.data.beir:
            raise ConfigError("data: give at least one source under data.mbeir or data.beir")
        _at_least("seed", self.seed, 0)
        if self.seed >= 2**32:
            raise ConfigError(f"seed must be below 2**32 (NumPy's limit), got {self.seed}")
        if not self.output_dir:
            raise ConfigError("output_dir must not be empty")
        _check_model(self.model)
        _check_data(self.data)
        _check_train(self.train, self.distributed)
        _check_optim(self.optim)
        _at_least("checkpoint.every_steps", self.checkpoint.every_steps, 0)
        _at_least("checkpoint.keep_last", self.checkpoint.keep_last, 1)
        _at_least("logging.every_steps", self.logging.every_steps, 1)
        _check_eval(self.eval)
        _check_distributed(self.distributed)

    @property
    def eval_data_dir(self) -> str | None:
        if self.eval.data_dir:
            return self.eval.data_dir
        return self.data.mbeir[0].root if self.data.mbeir else None


# ----------------------------------------------------------------------------- checks, one section each


def _at_least(key: str, value: int | float | None, low: int | float, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value < low:
        raise ConfigError(f"{key} must be >= {low}{' or null' if optional else ''}, got {value!r}")


def _positive(key: str, value: float | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or not value > 0:
        raise ConfigError(f"{key} must be > 0{' or null' if optional else ''}, got {value!r}")


def _unit_interval(key: str, value: float) -> None:
    """``value`` in [0, 1): a probability that must leave something (dropout, betas, warmup share)."""
    if not 0 <= value < 1:
        raise ConfigError(f"{key} must be in [0, 1), got {value!r}")


def _regex(key: str, pattern: object) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{key}: expected a non-empty regular expression, got {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{key}: {pattern!r} is not a valid regular expression ({e})") from None


def _number(key: str, value: object) -> float:
    """A finite number given in a free-form mapping (YAML reads ``1e-3`` as a string)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if isinstance(value, bool) or number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return number


def _check_model(model: ModelSettings) -> None:
    if not model.encoder:
        raise ConfigError("model.encoder must name a model")
    if not all(isinstance(k, str) for k in model.settings):
        raise ConfigError(f"model.settings: keys must be strings, got {list(model.settings)}")
    lora = model.lora
    _at_least("model.lora.r", lora.r, 1)
    _at_least("model.lora.alpha", lora.alpha, 1)
    _unit_interval("model.lora.dropout", lora.dropout)
    for n, name in enumerate(lora.target_modules or []):
        if not name:
            raise ConfigError(f"model.lora.target_modules[{n}] must not be empty")
    _check_lora_used(lora)
    for n, pattern in enumerate(model.train_patterns):
        _regex(f"model.train_patterns[{n}]", pattern)


def _check_lora_used(lora: LoraSettings) -> None:
    """LoRA settings given while LoRA is off would be silently ignored: refuse them, naming them."""
    if lora.enabled:
        return
    default = LoraSettings()
    ignored = [f"model.lora.{k}" for k in ("r", "alpha", "dropout", "target_modules")
               if getattr(lora, k) != getattr(default, k)]
    if ignored:
        raise ConfigError(f"{', '.join(ignored)} set but model.lora.enabled is false: they would be ignored "
                          "(set model.lora.enabled: true, or remove them)")


def _check_data(data: DataSettings) -> None:
    for n, spec in enumerate(data.mbeir):
        for name in ("root", "split", "group"):
            if not getattr(spec, name):
                raise ConfigError(f"data.mbeir[{n}].{name} must not be empty")
    for n, beir in enumerate(data.beir):
        if not beir.root or not beir.name:
            raise ConfigError(f"data.beir[{n}]: every BEIR source needs root and name")
    _at_least("data.num_negatives", data.num_negatives, 0)
    _at_least("data.examples_per_epoch", data.examples_per_epoch, 1, optional=True)
    _at_least("data.num_workers", data.num_workers, 0)
    share = data.task_homogeneous
    if not isinstance(share, bool) and not 0 <= share <= 1:
        raise ConfigError(f"data.task_homogeneous must be true, false or a share in [0, 1], got {share!r}")
    if data.weights is not None:
        _check_weights(data.weights)


def _check_weights(weights: Mapping) -> None:
    if not weights:
        raise ConfigError("data.weights must name every group (or be null)")
    for group, weight in weights.items():
        if _number(f"data.weights.{group}", weight) < 0:
            raise ConfigError(f"data.weights.{group} must be >= 0, got {weight!r}")
    if not any(float(w) > 0 for w in weights.values()):
        raise ConfigError("data.weights: at least one group needs a weight > 0")


def _check_train(train: TrainSettings, distributed: DistributedSettings) -> None:
    _at_least("train.epochs", train.epochs, 1)
    _at_least("train.max_steps", train.max_steps, 1, optional=True)
    _positive("train.max_minutes", train.max_minutes, optional=True)
    _at_least("train.global_batch_size", train.global_batch_size, 1)
    _at_least("train.chunk_size", train.chunk_size, 1, optional=True)
    _at_least("train.length_buckets", train.length_buckets, 1)
    _positive("train.temperature", train.temperature)
    _at_least("train.num_threads", train.num_threads, 1, optional=True)
    if train.matryoshka_dims is not None:
        from mmembed.losses.matryoshka import check_dims

        try:
            check_dims(train.matryoshka_dims, train.matryoshka_weights)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif train.matryoshka_weights is not None:
        raise ConfigError("train.matryoshka_weights needs train.matryoshka_dims")
    if train.chunk_size and train.mixed_precision == "fp16":
        raise ConfigError("train.chunk_size (GradCache) works with mixed_precision 'no' or 'bf16', not 'fp16' "
                          "(its loss scaler is not applied to the cached-gradient backward)")
    if train.chunk_size and distributed.deepspeed is not None:
        raise ConfigError("train.chunk_size (GradCache) does not work under DeepSpeed, whose engine must run "
                          "every backward; use a larger per-GPU batch or gradient checkpointing instead")


def _check_optim(optim: OptimSettings) -> None:
    _positive("optim.lr", optim.lr)
    for pattern, lr in optim.lr_overrides.items():
        _regex("optim.lr_overrides", pattern)
        if not _number(f"optim.lr_overrides[{pattern!r}]", lr) > 0:
            raise ConfigError(f"optim.lr_overrides[{pattern!r}] must be > 0, got {lr!r}")
    _at_least("optim.weight_decay", optim.weight_decay, 0)
    if len(optim.betas) != 2:
        raise ConfigError(f"optim.betas must be two numbers, got {optim.betas}")
    for n, beta in enumerate(optim.betas):
        _unit_interval(f"optim.betas[{n}]", beta)
    _positive("optim.eps", optim.eps)
    _at_least("optim.warmup_steps", optim.warmup_steps, 0)
    _unit_interval("optim.warmup_ratio", optim.warmup_ratio)
    _at_least("optim.max_grad_norm", optim.max_grad_norm, 0, optional=True)


def _check_eval(ev: EvalSettings) -> None:
    _at_least("eval.every_steps", ev.every_steps, 0)
    _at_least("eval.max_queries", ev.max_queries, 1, optional=True)
    _at_least("eval.batch_size", ev.batch_size, 1)
    if not ev.split:
        raise ConfigError("eval.split must not be empty")
    for pool in ev.pools:
        if pool not in ("local", "global"):
            raise ConfigError(f"eval.pools: unknown pool {pool!r}; expected local or global")
    for mode in ev.instruction_modes:
        if mode not in INSTRUCTION_MODES:
            raise ConfigError(f"eval.instruction_modes: unknown mode {mode!r}; expected one of "
                              f"{', '.join(INSTRUCTION_MODES)}")


def _check_distributed(distributed: DistributedSettings) -> None:
    ds = distributed.deepspeed
    if ds is not None and not isinstance(ds, (str, dict)):
        raise ConfigError(f"distributed.deepspeed: expected a JSON file path or a mapping, got {ds!r}")
    if isinstance(ds, str) and not os.path.isfile(ds):
        raise ConfigError(f"distributed.deepspeed: file {ds!r} not found")


def load_train_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read and check a training YAML file (``overrides`` are ``key.sub=value`` strings)."""
    return load_config(TrainConfig, path, overrides)  # load_config runs TrainConfig.validate
