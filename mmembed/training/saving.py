"""Writing checkpoints and the final model of a run (the layout is described in :mod:`.checkpoint`).

Every process takes part (RNG states are gathered; DeepSpeed/FSDP save their shards), the main
process writes into a staging directory that replaces the checkpoint path as a whole.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from mmembed.config import save_config
from mmembed.encoders.base import TrainableEncoder
from mmembed.fileio import atomic_directory, write_json
from mmembed.training import checkpoint as ckpt
from mmembed.training.config import TrainConfig

logger = logging.getLogger(__name__)

TRAIN_CONFIG_FILE = "train_config.yaml"
TRAINING_META_FILE = "training.json"


def export_encoder(encoder: TrainableEncoder, directory: str | Path, config: TrainConfig, step: int) -> Path:
    """The encoder in ``save_pretrained`` format (loads with ``load_encoder``), with the run's config.

    How LoRA is stored is the encoder's choice: a towers model stores the adapters' low-rank
    factors, merged into BERT on loading; a VLM keeps its peft adapter directory.
    ``checkpoint.export_dtype`` sets the stored precision where the encoder supports it (the
    towers models: float16 halves a shipped checkpoint).
    """
    directory = Path(directory)
    dtype = getattr(torch, config.checkpoint.export_dtype) if config.checkpoint.export_dtype else None
    encoder.save_pretrained(directory, dtype=dtype)
    save_config(config, directory / TRAIN_CONFIG_FILE)
    if config.train.matryoshka_dims:
        from mmembed.encoders.matryoshka import write_trained_dims

        write_trained_dims(directory, config.train.matryoshka_dims, config.train.matryoshka_weights)
    write_json(directory / TRAINING_META_FILE, {"step": step, **ckpt.run_metadata()})
    return directory


def full_parameters(trainer: Any) -> contextlib.AbstractContextManager:
    """Under FSDP, gather the full parameters on every process for the block (collective); else nothing.

    DeepSpeed ZeRO-2 keeps full parameters on every process (it shards gradients and optimizer
    state), so the encoder can be saved as it is. *Not exercised on the project's CPU machines.*
    """
    if trainer.accelerator.distributed_type.value != "FSDP":
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(trainer.wrapped, writeback=False)


def write_checkpoint(trainer: Any, path: Path, state: dict) -> None:
    """Write ``trainer``'s full training state to ``path`` (collective: every process calls it)."""
    from accelerate.utils import broadcast_object_list, gather_object

    acc = trainer.accelerator
    rng_states = gather_object([ckpt.capture_rng()])
    with contextlib.ExitStack() as stack:
        staging = stack.enter_context(atomic_directory(path)) if acc.is_main_process else None
        if trainer.sharded:
            shared = [staging]
            broadcast_object_list(shared)
            acc.save_state(str(Path(shared[0]) / "engine"))
            acc.wait_for_everyone()
        if acc.is_main_process:
            assert staging is not None
            if not trainer.sharded:
                ckpt.save_tensors(staging / "trainable.safetensors", trainer.model.trainable_state())
                ckpt.save_state_dict(staging / "optimizer.pt", trainer.optimizer.state_dict())
            ckpt.save_state_dict(staging / "scheduler.pt", trainer.scheduler.state_dict())
            ckpt.write_rng(staging, rng_states)
            save_config(trainer.config, staging / "config.yaml")
            write_json(staging / "meta.json", ckpt.run_metadata())
        with full_parameters(trainer):
            if acc.is_main_process:
                export_encoder(trainer.encoder, staging / "model", trainer.config, trainer.step)
        if acc.is_main_process:
            write_json(staging / ckpt.STATE_FILE, state)  # last: its presence marks a complete checkpoint
