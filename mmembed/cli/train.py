"""``mmembed train CONFIG.yaml``: contrastive training, in one process or under torchrun / accelerate launch."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an encoder contrastively (LoRA + projector, InfoNCE)",
                       description="Train an encoder with InfoNCE on M-BEIR / BEIR data as the YAML configuration "
                                   "says (schema: docs/training.md; examples: recipes/). Runs as is in one process, "
                                   "and under 'torchrun --nproc_per_node N -m mmembed.cli.main train ...' or "
                                   "'accelerate launch' for DDP, DeepSpeed or FSDP. Writes metrics.jsonl, "
                                   "checkpoints/, final/ (loadable with --encoder) and loss.png under output_dir.")
    p.add_argument("config", metavar="CONFIG.yaml", help="training configuration")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override one configuration key (repeatable), e.g. --set train.max_steps=100")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                   help="continue from the newest checkpoint under output_dir (or from CHECKPOINT); "
                        "starts afresh when there is none")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmembed.training.config import load_train_config
    from mmembed.training.trainer import Trainer

    overrides = list(args.set) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    config = load_train_config(args.config, overrides)
    trainer = Trainer(config)
    resume = True if args.resume == "latest" else (args.resume or False)
    result = trainer.train(resume=resume)
    if trainer.accelerator.is_main_process:
        loss = f"{result.last_loss:.4f}" if result.last_loss is not None else "n/a"
        early = " (stopped early: train.max_minutes)" if result.stopped_early else ""
        print(f"trained {result.steps} steps{early} (resumed from {result.resumed_from}) in {result.wall_s:.1f} s; "
              f"last loss {loss}; model: {result.final_dir}")
    return 0
