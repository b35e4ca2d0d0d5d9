"""Monitoring a run: JSON-lines metrics, TensorBoard when installed, a progress bar and a loss plot.

Only the main process writes. ``metrics.jsonl`` holds one object per logged step (``step``,
``epoch``, ``loss``, ``lr``, ``grad_norm``, ``examples_per_s``, ``peak_mem_mb`` with
``mem_kind`` "rss" on CPU or "cuda_max_allocated" on GPU, ``elapsed_s``) and one per evaluation
(``eval/...`` keys). On resume, lines of steps after the checkpoint are dropped, so the file
describes one continuous run.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mmembed.fileio import atomic_open

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory so far: CUDA max allocated on a GPU, the process's peak RSS otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / (2**20 if sys.platform == "darwin" else 2**10), "rss"


def read_metrics(path: str | Path) -> list[dict]:
    """Every complete JSON line of a metrics file (a line cut by a crash is skipped)."""
    rows = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


class Monitor:
    """Writes metrics (main process only); a no-op on the other processes."""

    def __init__(self, output_dir: str | Path, *, enabled: bool, progress: bool, tensorboard: str,
                 total_steps: int, start_step: int = 0):
        self.enabled = enabled
        self.path = Path(output_dir) / METRICS_FILE
        self._bar = None
        self._tb = None
        if not enabled:
            return
        self._truncate(start_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="training", unit="step")
        if tensorboard != "off":
            self._tb = _tensorboard(Path(output_dir) / "tensorboard", required=tensorboard == "on")

    def _truncate(self, start_step: int) -> None:
        """Keep the lines of steps up to ``start_step`` (all of them when starting afresh: none)."""
        rows = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= start_step] if start_step else []
        with atomic_open(self.path) as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")

    def log(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(dict(row)) + "\n")
        self._file.flush()
        step = int(row.get("step", 0))
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def progress(self, steps: int, **postfix: float) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()


def _tensorboard(directory: Path, required: bool):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if required:
            from mmembed.errors import MissingDependencyError

            raise MissingDependencyError("logging.tensorboard is 'on' but tensorboard is not installed; "
                                         "install it with: pip install tensorboard") from None
        logger.info("tensorboard is not installed; metrics go to %s only", METRICS_FILE)
        return None
    return SummaryWriter(str(directory))


def plot_loss(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Loss (and learning rate) against step, plus evaluation scores when there are any (PNG)."""
    rows = read_metrics(metrics_path)
    train = [r for r in rows if "loss" in r]
    if not train:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed; no loss plot (pip install mmembed[train])")
        return None
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot([r["step"] for r in train], [r.get("lr", math.nan) for r in train], color="tab:orange", lw=0.8)
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    if evals:
        eval_ax = axes[0][1]
        for key in sorted({k for r in evals for k in r if k.startswith("eval/")}):
            points = [(r["step"], r[key]) for r in evals if key in r]
            eval_ax.plot(*zip(*points), marker="o", label=key.removeprefix("eval/"))
        eval_ax.set_xlabel("step")
        eval_ax.set_ylabel("validation score (mean over tasks)")
        eval_ax.legend(fontsize=8)
        eval_ax.grid(alpha=0.3)
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_open(out_path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out_path
