"""The recipe report: Markdown tables per stage and PNG plots, written from results on disk.

``report.md`` holds a summary (per model: local and global average, global modality error@k,
text nDCG@10), the per-task tables (local pool, global pool, modality error), the mining
statistics and the training runs; ``plots/`` holds per-task scores by stage, modality error by
stage and the loss curves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from mmembed.eval.tables import markdown_table
from mmembed.fileio import atomic_open, write_text
from mmembed.recipe.config import RecipeConfig

logger = logging.getLogger(__name__)


def _pct(value: float | None) -> str:
    """A share (scores and modality errors are stored in [0, 1]) as a percentage."""
    return "-" if value is None else f"{100 * value:.1f}"


def _mode(evaluation) -> str:
    modes = evaluation.mbeir["config"].get("instruction_modes") or ["random"]
    return modes[0]


def _rows(evaluation, pool: str) -> dict[str, dict]:
    mode = _mode(evaluation)
    return {r["task"]: r for r in evaluation.mbeir["results"] if r["pool"] == pool and r["instructions"] == mode}


def _average(rows: dict[str, dict], key: str = "score") -> float | None:
    values = [r[key] for r in rows.values() if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def global_average(evaluation) -> float | None:
    """The global-pool average of the headline metric (the recipe's measure of a model), in [0, 1]."""
    return _average(_rows(evaluation, "global"))


def modality_error(evaluation) -> float | None:
    """The global-pool average modality error@k, in [0, 1]."""
    return _average(_rows(evaluation, "global"), "modality_error")


def summary_table(evaluations: Sequence, final: str | None = None) -> str:
    """Per model: local / global average of the headline metric, global modality error, text nDCG@10.

    ``final`` (a label) is marked as the model chosen on validation data.
    """
    rows = []
    for ev in evaluations:
        text = ev.beir["scores"].get("ndcg@10") if ev.beir else None
        label = f"**{ev.label}** (final)" if ev.label == final else ev.label
        rows.append([label, _pct(_average(_rows(ev, "local"))), _pct(global_average(ev)), _pct(modality_error(ev)),
                     _pct(text)])
    k = evaluations[0].mbeir["config"].get("modality_error_k", 5) if evaluations else 5
    return markdown_table(["model", "local avg", "global avg", f"global mod.err@{k} (%)", "text nDCG@10"], rows)


def task_table(evaluations: Sequence, pool: str, key: str = "score") -> str:
    """Tasks as rows, models as columns: the headline metric (or the modality error) in one pool."""
    tasks: dict[str, dict] = {}
    for ev in evaluations:
        for name, row in _rows(ev, pool).items():
            tasks.setdefault(name, row)
    body = []
    for name, first in tasks.items():
        cells = []
        for ev in evaluations:
            row = _rows(ev, pool).get(name)
            value = None if row is None else row.get(key)
            cells.append(_pct(value))
        body.append([name, first["arrow"], first["metric"] if key == "score" else "mod.err", *cells])
    averages = []
    for ev in evaluations:
        averages.append(_pct(_average(_rows(ev, pool), key)))
    body.append(["average", "", "", *averages])
    return markdown_table(["task", "q->c", "metric", *[ev.label for ev in evaluations]], body)


def mining_notes(mining_dirs: dict[str, Path]) -> list[str]:
    """Each mining step's low type-1 yield sentence (none when the yield is fine)."""
    from mmembed.mining.jobs import MiningStats, type1_yield_note

    notes = []
    for name, directory in mining_dirs.items():
        path = directory / "mining.json"
        if not path.is_file():
            continue
        manifest = json.loads(path.read_text(encoding="utf-8"))
        total = MiningStats()
        for s in manifest["stats"].values():
            total.add(MiningStats.from_dict(s))
        if note := type1_yield_note(total, manifest.get("config", {})):
            notes.append(f"**{name}**: {note}")
    return notes


def mining_table(mining_dirs: dict[str, Path]) -> str | None:
    """Per mining step and task: the stored sample by type, the typed candidate sets, fallbacks and
    the modality error of the miner's top k (the evaluation's definition, on the training queries)."""
    from mmembed.mining.jobs import MiningStats
    from mmembed.mining.miner import STATS_HEADER, stats_cells

    rows, ks = [], set()
    for name, directory in mining_dirs.items():
        path = directory / "mining.json"
        if not path.is_file():
            continue
        manifest = json.loads(path.read_text(encoding="utf-8"))
        ks.add(manifest.get("config", {}).get("modality_error_k", 5))
        label = f"{name} (cross-fit {manifest['cross_fit']['folds']})" if manifest.get("cross_fit") else name
        for unit, s in manifest["stats"].items():
            rows.append([label, unit, *stats_cells(MiningStats.from_dict(s))])
    if not rows:
        return None
    header = [f"mod.err@{next(iter(ks))}" if h == "mod.err@k" and len(ks) == 1 else h for h in STATS_HEADER]
    return markdown_table(["step", "task", *header], rows)


def read_losses(run_dir: Path) -> list[tuple[int, float]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def training_table(training_dirs: dict[str, Path]) -> str | None:
    rows = []
    for name, directory in training_dirs.items():
        losses = read_losses(directory)
        meta_path = directory / "final" / "training.json"
        if not losses or not meta_path.is_file():
            continue
        rows.append([name, str(losses[-1][0]), f"{losses[0][1]:.3f}", f"{losses[-1][1]:.3f}"])
    return markdown_table(["run", "steps", "first loss", "last loss"], rows) if rows else None


def timings_table(out: Path) -> str | None:
    """Per step (and evaluation): wall-clock and CPU time, optimizer steps and time per step."""
    from mmembed.recipe.steps import TIMINGS_FILE

    path = out / TIMINGS_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    rows, wall, cpu = [], 0.0, 0.0
    for name, t in saved.get("steps", {}).items():
        steps = t.get("steps")
        per_step = f"{t['wall_s'] / steps:.2f}" if steps else "-"
        rows.append([name, f"{t['wall_s']:.0f}", f"{t['cpu_s']:.0f}", str(steps or "-"), per_step])
        wall, cpu = wall + t["wall_s"], cpu + t["cpu_s"]
    rows.append(["total", f"{wall:.0f}", f"{cpu:.0f}", "", ""])
    table = markdown_table(["step", "wall (s)", "CPU (s)", "optimizer steps", "wall per step (s)"], rows)
    return table + f"\n\nPeak resident memory of the last run: {saved.get('peak_rss_mb', 0):,.0f} MB. A skipped " \
                   "step keeps the time of the run that made its output."


def selection_text(selection) -> list[str]:
    """The "final model" section: which model is the result, on which split it was chosen, and why."""
    rows = [[label, _pct(score), _pct(selection.modality_errors.get(label))]
            for label, score in selection.scores.items()]
    return [f"**Final model: {selection.chosen}** (`final` links to `{selection.spec}`), chosen on the "
            f"`{selection.split}` split: {selection.reason}.", "",
            markdown_table(["candidate", f"global avg on {selection.split}", "global mod.err (%)"], rows), ""]


def write_plots(out: Path, evaluations: Sequence, training_dirs: dict[str, Path]) -> list[Path]:
    """PNG plots (matplotlib, headless); none when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: the report has no plots (pip install matplotlib)")
        return []
    written = []
    for key, name, ylabel in (("score", "scores_by_stage.png", "global pool, headline metric (%)"),
                              ("modality_error", "modality_error_by_stage.png", "global pool, modality error (%)")):
        tasks = list(_rows(evaluations[0], "global"))
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(tasks)), 4))
        width = 0.8 / max(len(evaluations), 1)
        for i, ev in enumerate(evaluations):
            rows = _rows(ev, "global")
            values = [100 * (rows[t].get(key) or 0.0) if t in rows else 0.0 for t in tasks]
            ax.bar([x + i * width for x in range(len(tasks))], values, width, label=ev.label)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(tasks))], tasks, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / "plots" / name))
        plt.close(fig)
    curves = {name: read_losses(d) for name, d in training_dirs.items()}
    if any(curves.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, points in curves.items():
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / "plots" / "loss_curves.png"))
        plt.close(fig)
    return written


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb", encoding=None) as f:
        fig.savefig(f, format="png", dpi=110)
    return path


def render(evaluations: Sequence, *, title: str, notes: Sequence[str] = (),
           training_dirs: dict[str, Path] | None = None, mining_dirs: dict[str, Path] | None = None,
           plots: Sequence[Path] = (), out: Path | None = None, selection=None) -> str:
    """The report's Markdown."""
    first = evaluations[0].mbeir
    k = first["config"].get("modality_error_k", 5)
    chosen = selection_text(selection) if selection is not None else []
    final = selection.chosen if selection is not None else None
    parts = [f"# {title}", "", *notes, "", *chosen, "## Summary", "", summary_table(evaluations, final), "",
             f"Data: `{first['config'].get('data_dir')}`, split `{first['config'].get('split')}`, instructions "
             f"`{_mode(evaluations[0])}`; headline metric hit@5 (M-BEIR's 'Recall@5'). Modality error@{k}: share of "
             f"the top {k} global-pool results whose modality is not the task's target modality.", ""]
    for pool in ("local", "global"):
        parts += [f"## {pool.capitalize()} pool, per task", "", task_table(evaluations, pool), ""]
    errors = task_table(evaluations, "global", "modality_error")
    parts += [f"## Modality error@{k} in the global pool (%)", "", errors, ""]
    if mining_dirs and (table := mining_table(mining_dirs)):
        parts += ["## Hard-negative mining", "", table, ""]
        for note in mining_notes(mining_dirs):
            parts += [note, ""]
    if training_dirs and (table := training_table(training_dirs)):
        parts += ["## Training runs", "", table, ""]
    if out is not None and (table := timings_table(out)):
        parts += ["## Time and memory", "", table, ""]
    for plot in plots:
        shown = plot.relative_to(out) if out is not None and plot.is_relative_to(out) else plot
        parts += [f"![{plot.stem}]({shown})", ""]
    return "\n".join(parts)


def write_report(out: Path, evaluations: Sequence, recipe: RecipeConfig | None = None, *,
                 title: str = "mmembed recipe report", notes: Sequence[str] = (), selection=None) -> Path:
    """``out/report.md`` and ``out/plots/*.png``; returns the Markdown file's path."""
    training_dirs = {s.name: out / s.name for s in recipe.steps if s.train is not None} if recipe else {}
    mining_dirs = {s.name: out / s.name for s in recipe.steps if s.mine is not None} if recipe else {}
    plots = write_plots(out, evaluations, training_dirs)
    text = render(evaluations, title=title, notes=notes, training_dirs=training_dirs, mining_dirs=mining_dirs,
                  plots=plots, out=out, selection=selection)
    write_text(out / "report.md", text)
    return out / "report.md"
