"""The contrastive trainer: the training components driven by Accelerate.

One optimizer step takes one global batch from :class:`ContrastiveBatchSampler` (each process its
slice), embeds queries and candidates — in one forward pass per side, or in chunks through
:class:`GradCache` when ``train.chunk_size`` is set — computes :class:`InfoNCELoss` with every
process's candidates as negatives, clips the gradient norm, and steps AdamW and the schedule.

Example::

    from mmembed.training.config import load_train_config
    from mmembed.training.trainer import Trainer

    result = Trainer(load_train_config("recipes/cpu-default/stage1.yaml")).train()
    encoder = load_encoder(result.final_dir)

Resuming (``train(resume=True)`` or a checkpoint path) restores trainable weights, optimizer,
schedule, sampler position and every process's RNG, so the run continues on the loss curve it
would have followed without the interruption.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mmembed.config import save_config
from mmembed.data.layout import MBEIRDirectory
from mmembed.errors import ConfigError, ModelError
from mmembed.losses import InfoNCELoss
from mmembed.training import checkpoint as ckpt
from mmembed.training.accelerator import build_accelerator, build_optimizer, build_scheduler
from mmembed.training.assembly import build_dataset, load_training_encoder
from mmembed.training.config import DataSettings, ModelSettings, TrainConfig
from mmembed.training.data import ContrastiveBatch, collate_examples
from mmembed.training.embedding_module import INNER, EmbeddingModule
from mmembed.training.gradcache import GradCache
from mmembed.training.image_check import check_images
from mmembed.training.monitor import PLOT_FILE, Monitor, peak_memory_mb, plot_loss
from mmembed.training.sampler import ContrastiveBatchSampler
from mmembed.training.saving import export_encoder, full_parameters, write_checkpoint
from mmembed.training.trainable import configure_trainable, disable_dropout, enable_gradient_checkpointing

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
#: Configuration sections a resumed run must share with the checkpoint.
RESUME_SECTIONS = ("seed", "model", "data", "optim")
RESUME_TRAIN_KEYS = ("global_batch_size", "chunk_size", "temperature", "gather", "mixed_precision")


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    steps: int
    resumed_from: int
    last_loss: float | None
    wall_s: float
    checkpoints: list[Path] = field(default_factory=list)
    #: ``train.max_minutes`` ended the run before ``total_steps``.
    stopped_early: bool = False


class Trainer:
    """Builds everything a run needs from its configuration; :meth:`train` runs it."""

    def __init__(self, config: TrainConfig):
        self._created = time.perf_counter()
        # once per step otherwise, from the cross-process gather of the loss
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
        config.validate()
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.accelerator = build_accelerator(config)
        from accelerate.utils import set_seed

        if config.train.num_threads:
            torch.set_num_threads(config.train.num_threads)
        self._build_data()  # data first: its problems are found before a model is loaded
        set_seed(config.seed)  # the same initial model (LoRA, pooler) in every process
        self._build_model()
        self.loss_fn = InfoNCELoss(config.train.temperature, gather=config.train.gather)
        if config.train.matryoshka_dims:
            from mmembed.losses.matryoshka import MatryoshkaLoss

            self.loss_fn = MatryoshkaLoss(self.loss_fn, config.train.matryoshka_dims, config.train.matryoshka_weights)
            self.loss_fn.prefixes(self.encoder.dim)  # dimensions beyond the model's are refused before training
        optimizer = build_optimizer(self.model, config.optim)
        scheduler = build_scheduler(optimizer, config.optim, self.total_steps)
        self.wrapped, self.optimizer, self.scheduler = self.accelerator.prepare(self.model, optimizer, scheduler)
        self.sharded = self.accelerator.distributed_type.value in ("DEEPSPEED", "FSDP")
        set_seed(config.seed + self.accelerator.process_index)  # dropout masks differ across processes
        self.step = self.resumed_from = 0
        self.next_batch: tuple[int, int] = (0, 0)
        self.stopped_early = False

    def _build_model(self) -> None:
        settings = self.config.model
        self.encoder = _load_encoder(settings)
        self.model = EmbeddingModule(self.encoder, anchor=self.config.distributed.fsdp is None,
                                    length_buckets=self.config.train.length_buckets)
        self.trainable_names = configure_trainable(self.encoder, self.model, settings)
        if not settings.dropout:
            disable_dropout(self.model)
        if settings.gradient_checkpointing:
            enable_gradient_checkpointing(self.encoder.trainable_parts())

    def _build_data(self) -> None:
        cfg, acc = self.config, self.accelerator
        check_instruction_files(cfg.data)
        self.dataset = build_dataset(cfg.data, cfg.seed)
        logger.info("checked %d training images", check_images(self.dataset))
        self.sampler = ContrastiveBatchSampler(
            self.dataset, cfg.train.global_batch_size, seed=cfg.seed, weights=cfg.data.weights,
            examples_per_epoch=cfg.data.examples_per_epoch, task_homogeneous=cfg.data.task_homogeneous,
            task_remainder=cfg.data.task_remainder, num_replicas=acc.num_processes, rank=acc.process_index)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=collate_examples, num_workers=cfg.data.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed))  # never draws from the global RNG
        self.total_steps = cfg.train.max_steps or sum(len(self.sampler.plan(e)) for e in range(cfg.train.epochs))

    # ------------------------------------------------------------------ running

    def train(self, resume: bool | str | Path = False) -> TrainResult:
        """Run to ``total_steps``; ``resume=True`` continues from the newest checkpoint (if any)."""
        start = time.perf_counter()
        if resume:
            rank = self.accelerator.process_index
            loaded = ckpt.newest_readable_checkpoint(self.output_dir, rank, self.sharded) if resume is True \
                else ckpt.read_checkpoint(resume, rank, self.sharded)
            if loaded is not None:
                self._restore(loaded)
            else:
                logger.info("no checkpoint under %s: starting from scratch", self.output_dir)
        elif ckpt.list_checkpoints(self.output_dir):
            raise ConfigError(f"{self.output_dir} holds checkpoints of an earlier run: pass --resume to continue "
                              "it, or choose another output_dir (a new run would mix its checkpoints with them)")
        acc, cfg = self.accelerator, self.config
        # where training is, whatever iterated the loader or sampler before (e.g. batch_at)
        self.sampler.load_state_dict(self.sampler.state_dict(next_batch=self.next_batch))
        if acc.is_main_process:
            save_config(cfg, self.output_dir / "config.yaml")
        monitor = Monitor(self.output_dir, enabled=acc.is_main_process, progress=cfg.logging.progress,
                          tensorboard=cfg.logging.tensorboard, total_steps=self.total_steps, start_step=self.step)
        last_loss, window = None, _Window()
        try:
            while self.step < self.total_steps and not self.stopped_early:
                for batch in self.loader:
                    last_loss = self._run_step(batch, window, monitor)
                    if self.step >= self.total_steps or self.stopped_early:
                        break
            evaluated_now = cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0
            if cfg.eval.at_end and not evaluated_now:
                self.evaluate(monitor)
            final = self.output_dir / FINAL_DIR
            with full_parameters(self):
                if acc.is_main_process:
                    export_encoder(self.encoder, final, cfg, self.step)
            if acc.is_main_process and cfg.logging.plot:
                plot_loss(monitor.path, self.output_dir / PLOT_FILE)
            acc.wait_for_everyone()
        finally:
            monitor.close()
        checkpoints = [p for _, p in ckpt.list_checkpoints(self.output_dir)]
        return TrainResult(self.output_dir, final, self.step, self.resumed_from, last_loss,
                           time.perf_counter() - start, checkpoints, self.stopped_early)

    def _out_of_time(self) -> bool:
        """Whether ``train.max_minutes`` (counted from the trainer's creation) is spent, on every process."""
        limit = self.config.train.max_minutes
        if not limit:
            return False
        over = torch.tensor([float(time.perf_counter() - self._created > 60 * limit)])
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast

            over = broadcast(over.to(self.accelerator.device), from_process=0).cpu()
        if over.item() and not self.stopped_early:
            self.stopped_early = True
            logger.warning("train.max_minutes (%.1f) spent: stopping at step %d of %d", limit, self.step,
                           self.total_steps)
        return self.stopped_early

    def _run_step(self, batch: ContrastiveBatch, window: _Window, monitor: Monitor) -> float:
        cfg = self.config
        lr = max(group["lr"] for group in self.optimizer.param_groups)
        loss, grad_norm = self.train_step(batch)
        self.step += 1
        self.next_batch = (batch.epoch, batch.step + 1)
        window.add(loss, cfg.train.global_batch_size)
        monitor.progress(1, loss=loss, lr=lr)
        last = self.step == self.total_steps or self._out_of_time()
        if self.step % cfg.logging.every_steps == 0 or last:
            peak, kind = peak_memory_mb(self.accelerator.device)
            monitor.log({"step": self.step, "epoch": batch.epoch, "loss": loss, "loss_avg": window.mean_loss,
                         "lr": lr, "grad_norm": grad_norm, "examples_per_s": window.rate,
                         "peak_mem_mb": round(peak, 1), "mem_kind": kind, "elapsed_s": round(window.elapsed, 3)})
            window.reset()
        if cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0:
            self.evaluate(monitor)
        if cfg.checkpoint.every_steps and (self.step % cfg.checkpoint.every_steps == 0 or self.stopped_early):
            self.save_checkpoint()  # on an early stop too: --resume can finish the schedule later
        return loss

    def train_step(self, batch: ContrastiveBatch) -> tuple[float, float | None]:
        """One optimizer step on this process's share of a global batch; (global mean loss, grad norm)."""
        acc, cfg = self.accelerator, self.config
        loss = self.forward_backward(batch)
        # every process gets the same mean, so all of them stop together when it is not finite
        mean_loss = float(acc.reduce(loss.detach().float(), reduction="mean"))
        if not math.isfinite(mean_loss):
            self._diverged(f"the loss is {mean_loss}")
        grad_norm = None
        if cfg.optim.max_grad_norm:
            norm = acc.clip_grad_norm_(self.wrapped.parameters(), cfg.optim.max_grad_norm)
            grad_norm = float(norm) if norm is not None else None
            # under fp16 an infinite norm is an overflow the loss scaler skips, not a divergence
            if grad_norm is not None and not math.isfinite(grad_norm) and cfg.train.mixed_precision != "fp16":
                self._diverged(f"the gradient norm is {grad_norm}")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, grad_norm

    def _diverged(self, what: str) -> None:
        """Stop before a non-finite update reaches the weights: nothing of this step is applied or saved."""
        self.optimizer.zero_grad(set_to_none=True)
        last = ckpt.latest_checkpoint(self.output_dir)
        kept = f"the last good checkpoint is {last}" if last else \
            "there is no checkpoint (set checkpoint.every_steps to keep some)"
        raise TrainingDivergedError(
            f"training diverged at step {self.step + 1}: {what} (optim.lr {self.config.optim.lr:g}, "
            f"train.temperature {self.config.train.temperature:g}); the weights were not updated and {kept}")

    def forward_backward(self, batch: ContrastiveBatch) -> torch.Tensor:
        """Embed a batch, compute the loss and accumulate its gradients (no optimizer step).

        With ``train.chunk_size`` the batch goes through :class:`GradCache`; otherwise the backward
        runs in two stages: from the loss into the embeddings, then from the embeddings into the
        model. The gradients are those of ``loss.backward()``, but the loss's collectives (the
        backward of the candidate all-gather) all finish before DDP / DeepSpeed start reducing
        gradients in their hooks; in one backward pass the two could be issued in a different order
        on different processes (a parameter used only by one rank's queries is ready early), which
        deadlocks.
        """
        acc, cfg = self.accelerator, self.config
        self.wrapped.train()
        loss_kwargs = {"target": batch.target, "positive_keys": batch.positive_keys,
                       "candidate_keys": batch.candidate_keys}
        if cfg.train.chunk_size:
            no_sync = functools.partial(acc.no_sync, self.wrapped) if acc.num_processes > 1 else None
            cache = GradCache(lambda chunk: self.wrapped(queries=chunk["items"], instructions=chunk["instructions"])[0],
                              lambda chunk: self.wrapped(candidates=chunk)[1], self.loss_fn, cfg.train.chunk_size,
                              no_sync=no_sync)
            return cache.step({"items": batch.queries, "instructions": batch.instructions}, batch.candidates,
                              **loss_kwargs)
        q, c = self.wrapped(queries=batch.queries, instructions=batch.instructions, candidates=batch.candidates)
        q_leaf, c_leaf = q.detach().requires_grad_(), c.detach().requires_grad_()
        loss = self.loss_fn(q_leaf, c_leaf, **loss_kwargs)
        loss.backward()
        surrogate = (q * q_leaf.grad.to(q.dtype)).sum() + (c * c_leaf.grad.to(c.dtype)).sum()
        acc.backward(surrogate)
        return loss.detach()

    def batch_at(self, epoch: int = 0, step: int = 0) -> ContrastiveBatch:
        """This process's share of global batch ``step`` of ``epoch`` (the sampler is left where it was)."""
        saved = self.sampler.state_dict()
        self.sampler.load_state_dict({**saved, "epoch": epoch, "position": step})
        try:
            keys = next(iter(self.sampler))
        finally:
            self.sampler.load_state_dict(saved)
        return collate_examples([self.dataset[key] for key in keys])

    @torch.no_grad()
    def batch_loss(self, batch: ContrastiveBatch) -> float:
        """The loss of a batch without training (eval mode: no dropout)."""
        self.wrapped.eval()
        q, c = self.wrapped(queries=batch.queries, instructions=batch.instructions, candidates=batch.candidates)
        loss = self.loss_fn(q, c, batch.target, batch.positive_keys, batch.candidate_keys)
        return float(self.accelerator.reduce(loss.float(), reduction="mean"))

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, monitor: Monitor | None = None) -> dict[str, float] | None:
        """Score the current weights on the validation split (main process; others wait)."""
        cfg, acc = self.config, self.accelerator
        data_dir = cfg.eval_data_dir
        if data_dir is None or self.sharded:
            logger.warning("skipping evaluation: %s", "no M-BEIR data_dir" if data_dir is None else
                           "parameters are sharded (FSDP/DeepSpeed); evaluate the saved checkpoints instead")
            return None
        averages = None
        if acc.is_main_process:
            from mmembed.eval.mbeir_runner import EvalConfig, run_evaluation

            ev = cfg.eval
            config = EvalConfig(split=ev.split, pools=ev.pools, instruction_modes=ev.instruction_modes, seed=cfg.seed,
                                tasks=ev.tasks, batch_size=ev.batch_size, max_queries=ev.max_queries,
                                show_progress=False)
            self.wrapped.eval()
            with torch.random.fork_rng(devices=[]):  # evaluation must not shift the training RNG
                results = run_evaluation(self.encoder, data_dir, config,
                                         self.output_dir / "eval" / f"step-{self.step:08d}")
            averages = {f"eval/{k}": v for k, v in results.to_dict()["averages"].items() if v is not None}
            logger.info("step %d validation: %s", self.step, ", ".join(f"{k}={v:.4f}" for k, v in averages.items()))
            if monitor is not None:
                monitor.log({"step": self.step, **averages})
        acc.wait_for_everyone()
        return averages

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current step (every process must call this)."""
        path = ckpt.checkpoint_path(self.output_dir, self.step)
        state = {"step": self.step, "next_batch": list(self.next_batch),
                 "sampler": self.sampler.state_dict(next_batch=self.next_batch),
                 "world_size": self.accelerator.num_processes, "trainable": self.trainable_names}
        write_checkpoint(self, path, state)
        if self.accelerator.is_main_process:
            ckpt.prune_checkpoints(self.output_dir, self.config.checkpoint.keep_last)
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (every process must call this)."""
        self._restore(ckpt.read_checkpoint(path, self.accelerator.process_index, self.sharded))

    def _restore(self, loaded: ckpt.LoadedCheckpoint) -> None:
        """Apply a checkpoint read whole beforehand (a damaged file then changes nothing)."""
        path, state = loaded.path, loaded.state
        self._check_resume_config(path, loaded.config)
        if self.sharded:
            self.accelerator.load_state(str(path / "engine"))
        else:
            assert loaded.trainable is not None and loaded.optimizer is not None
            self._load_trainable(path, loaded.trainable)
            self.optimizer.load_state_dict(loaded.optimizer)
        self.scheduler.load_state_dict(loaded.scheduler)
        self.sampler.load_state_dict(state["sampler"])
        rng = loaded.rng
        if rng is not None:
            ckpt.restore_rng(*rng)
        else:
            from accelerate.utils import set_seed

            logger.warning("%s has no RNG state for process %d; seeding it afresh", path,
                           self.accelerator.process_index)
            set_seed(self.config.seed + self.accelerator.process_index + 7919 * state["step"])
        self.step = self.resumed_from = int(state["step"])
        self.next_batch = tuple(state["next_batch"])
        logger.info("resumed from %s at step %d", path, self.step)

    def _load_trainable(self, path: Path, saved: dict[str, torch.Tensor]) -> None:
        params = {n.removeprefix(INNER): p for n, p in self.model.named_parameters() if p.requires_grad}
        if set(saved) != set(params):
            missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
            raise ConfigError(f"{path}: trainable tensors do not match this run (missing {missing[:3]}, "
                              f"unexpected {extra[:3]})")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name].to(p.dtype))

    def _check_resume_config(self, path: Path, saved: dict) -> None:
        current = asdict(self.config)
        differ = ckpt.config_differences(saved, current, RESUME_SECTIONS)
        differ += [f"train.{k}" for k in RESUME_TRAIN_KEYS
                   if (saved.get("train") or {}).get(k) != current["train"][k]]
        if differ:
            raise ConfigError(f"{path}: the checkpoint was written with a different configuration "
                              f"({', '.join(differ)}); resuming would not continue the same run")


def check_instruction_files(data: DataSettings) -> None:
    """Training with instructions needs every M-BEIR root's ``query_instructions.tsv`` (as evaluation does).

    Without it a run would silently train without instructions and then be evaluated with them.
    """
    if data.instruction_mode == "none":
        return
    for n, spec in enumerate(data.mbeir):
        path = MBEIRDirectory(spec.root).instructions_path
        if not path.is_file():
            raise ConfigError(f"data.mbeir[{n}].root: {path} not found; data.instruction_mode "
                              f"{data.instruction_mode!r} needs it (set data.instruction_mode: none to train "
                              "without instructions)")


_UNKNOWN_KEYWORD = re.compile(r"unexpected keyword argument '([^']+)'")


def _load_encoder(settings: ModelSettings):
    """The encoder to train; an unknown ``model.settings`` key is a configuration error naming it."""
    try:
        return load_training_encoder(settings)
    except TypeError as e:
        unknown = _UNKNOWN_KEYWORD.search(str(e))
        if unknown is None or unknown.group(1) not in settings.settings:
            raise
        raise ConfigError(f"model.settings.{unknown.group(1)}: not a setting of {settings.encoder!r} ({e})") from None


class TrainingDivergedError(ModelError):
    """The loss or the gradient became NaN or infinite: training stopped before applying it."""


class _Window:
    """Loss and throughput since the last log line."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.losses: list[float] = []
        self.examples = 0

    def add(self, loss: float, examples: int) -> None:
        self.losses.append(loss)
        self.examples += examples

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def rate(self) -> float:
        return round(self.examples / max(self.elapsed, 1e-9), 2)

    @property
    def mean_loss(self) -> float | None:
        return sum(self.losses) / len(self.losses) if self.losses else None
