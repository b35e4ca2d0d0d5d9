"""The engine under the trainer: an :class:`accelerate.Accelerator`, AdamW and the learning-rate schedule.

Accelerate runs the same code in one process, under ``torchrun --nproc_per_node N`` (DDP; gloo on
CPU, NCCL on GPU), multi-node torchrun or ``accelerate launch``, and with DeepSpeed or FSDP when
the configuration (or an ``accelerate launch`` config file) asks for them. The batch sampler is
*not* handed to Accelerate: it already gives each process its slice of every global batch.

The scheduler is stepped once per optimizer step (``step_scheduler_with_optimizer=False``):
Accelerate would otherwise step it once per process, which is right only when the global batch
grows with the number of processes — here the global batch is fixed by the configuration.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmembed.dependencies import require_module
from mmembed.errors import ConfigError
from mmembed.training.config import OptimSettings, TrainConfig
from mmembed.training.embedding_module import INNER

#: Parameters that get no weight decay (biases and normalisation weights), by name.
NO_DECAY = re.compile(r"(^|\.)(bias|LayerNorm\.weight|layer_norm\.weight|norm\.weight|ln_\w+\.weight)$")


def build_accelerator(config: TrainConfig):
    """The :class:`accelerate.Accelerator` for a run (DDP, DeepSpeed or FSDP per configuration)."""
    accelerate = require_module("accelerate", extra="train", what="accelerate (the training engine)")
    from accelerate.utils import DistributedDataParallelKwargs

    dist = config.distributed
    # Without a GPU, Accelerate needs cpu=True to see a torchrun launch as multi-process (MULTI_CPU).
    kwargs: dict[str, Any] = {
        "cpu": dist.cpu or not torch.cuda.is_available(), "mixed_precision": config.train.mixed_precision,
        "step_scheduler_with_optimizer": False,
        "kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=dist.find_unused_parameters)]}
    if dist.deepspeed is not None:
        kwargs["deepspeed_plugin"] = accelerate.DeepSpeedPlugin(hf_ds_config=_deepspeed_config(config))
    if dist.fsdp is not None:
        kwargs["fsdp_plugin"] = accelerate.FullyShardedDataParallelPlugin(**dist.fsdp)
    return accelerate.Accelerator(**kwargs)


def _deepspeed_config(config: TrainConfig) -> dict:
    """The DeepSpeed config with the values the trainer owns filled in (batch sizes, clipping, bf16)."""
    raw = config.distributed.deepspeed
    if isinstance(raw, str):
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"distributed.deepspeed: {raw} is not a file")
        raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ConfigError("distributed.deepspeed must be a JSON file path or a mapping")
    ds = dict(raw)
    from accelerate import PartialState

    world = PartialState().num_processes
    ds["train_batch_size"] = config.train.global_batch_size
    ds["train_micro_batch_size_per_gpu"] = max(config.train.global_batch_size // world, 1)
    ds["gradient_accumulation_steps"] = 1
    if config.optim.max_grad_norm:
        ds["gradient_clipping"] = config.optim.max_grad_norm
    if config.train.mixed_precision == "bf16":
        ds.setdefault("bf16", {"enabled": True})
    return ds


def build_optimizer(model: nn.Module, optim: OptimSettings) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; groups by learning rate and by weight decay."""
    overrides = [(re.compile(p), float(lr)) for p, lr in optim.lr_overrides.items()]
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        short = name.removeprefix(INNER)
        lr = next((lr for regex, lr in overrides if regex.search(short)), optim.lr)
        decay = 0.0 if NO_DECAY.search(short) or p.ndim < 2 else optim.weight_decay
        groups.setdefault((lr, decay), []).append(p)
    param_groups = [{"params": params, "lr": lr, "weight_decay": decay}
                    for (lr, decay), params in sorted(groups.items())]
    return torch.optim.AdamW(param_groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base learning rate at ``step``: linear warmup, then linear/cosine/constant.

    Not ``transformers.get_scheduler``: after the warmup its ``linear``, ``cosine`` and
    ``constant_with_warmup`` give these same values (tested), but its warmup starts at 0 (the first
    step ``0 / warmup``, an optimizer step that moves nothing) where this one starts at
    ``1 / warmup``. Switching would change every run with a warmup, the shipped checkpoints'
    recipes included, so the ten lines stay.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimSettings, total_steps: int):
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` (its state is just the step count)."""
    warmup = optim.warmup_steps or int(optim.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup, optim.scheduler)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
