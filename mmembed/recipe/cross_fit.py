"""Cross-fitted mining, a recipe mining step with ``cross_fit: K``.

A miner that was trained on the queries it mines has fitted them: their positives come first, so it
finds few candidates of the wrong modality above them (type 1) and falls back to random negatives.
With ``cross_fit: K`` the step

1. splits the training queries into K folds by a seeded hash of the qid
   (:func:`mmembed.mining.folds.fold_of`, seed = the mining ``seed``);
2. trains the configuration of the step named by ``encoder`` K times, run ``i`` on the queries
   outside fold ``i`` (filtered copies of the query files under ``<step>/folds/fold-i/queries``;
   same settings otherwise), into ``<step>/folds/fold-i/model``;
3. mines fold ``i``'s queries with model ``i`` into ``<step>/folds/fold-i/mine``;
4. merges the K outputs into ``<step>/`` (each task file in the original query order, then
   ``mining.json`` with the summed statistics and the per-fold ones).

Every part is skipped when done and resumed when interrupted, like any recipe step. Under a
launcher every process trains and mines its shards; the first process merges.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

from mmembed.data.layout import MBEIRDirectory
from mmembed.data.mbeir import query_to_dict, read_queries, write_queries
from mmembed.fileio import atomic_open, write_json
from mmembed.mining.folds import fold_of
from mmembed.mining.jobs import FORMAT_VERSION, MANIFEST, MiningStats, default_shard
from mmembed.recipe.config import RecipeConfig, Step
from mmembed.recipe.steps import FINAL, mining_config, step_train_config, train_unless_done, wait_for
from mmembed.version import __version__

logger = logging.getLogger(__name__)


def run_cross_fit(recipe: RecipeConfig, step: Step, show_progress: bool) -> str:
    """Train the fold models, mine each held-out fold, merge; returns ``ran`` or ``skipped``."""
    from mmembed.encoders.registry import load_encoder
    from mmembed.mining import mine_mbeir

    assert step.mine is not None
    folds = step.mine.cross_fit
    config = mining_config(step)
    base = step_train_config(recipe, next(s for s in recipe.steps if s.name == step.mine.encoder))
    target = Path(recipe.output_dir) / step.name
    manifests = []
    for fold in range(folds):
        root = target / "folds" / f"fold-{fold}"
        label = f"{step.name} fold {fold}/{folds}"
        outcome = train_unless_done(fold_train_config(base, root, folds, fold, config.seed), label)
        logger.info("%s: training %s", label, outcome)
        encoder = load_encoder(str(root / "model" / FINAL))
        fold_config = replace(config, folds=folds, fold=fold)
        mined = mine_mbeir(encoder, step.mine.data, root / "mine", fold_config, show_progress=show_progress)
        if not mined.complete:
            wait_for(root / "mine" / MANIFEST, f"the other processes' mining shards of {label}")
        manifests.append(json.loads((root / "mine" / MANIFEST).read_text(encoding="utf-8")))
    identity = {"folds": folds, "seed": config.seed, "config": asdict(config), "format_version": FORMAT_VERSION,
                "fold_runs": [{k: m.get(k) for k in ("encoder_id", "inputs", "config")} for m in manifests]}
    if default_shard()[0] != 0:
        wait_for(target / MANIFEST, f"the merged cross-fitted mining of step {step.name}")
        return "ran"
    if _merged(target, identity):
        return "skipped"
    merge_folds(target, step.mine.data, config, manifests, identity)
    return "ran"


def fold_train_config(base, root: Path, folds: int, fold: int, seed: int):
    """``base`` (a ``TrainConfig``) trained on the M-BEIR queries outside ``fold``, into ``root/model``.

    Each task's query file (or a mined one, or the explicit ``queries`` file) is copied without the
    fold's queries; BEIR text sets are kept whole (they are not what M-BEIR mining mines).
    """
    config = copy.deepcopy(base)
    config.output_dir = str(root / "model")
    entries, kept_groups, all_groups = [], set(), set()
    for n, spec in enumerate(base.data.mbeir):
        prefix = f"{n}:" if len(base.data.mbeir) > 1 else ""  # the group names assembly gives them
        for name, source, group in _query_files(spec, prefix):
            all_groups.add(group)
            kept = [q for q in read_queries(source) if fold_of(q.qid, folds, seed) != fold]
            if not kept:  # a task too small to have queries outside this fold
                logger.warning("cross-fit fold %d: no training query of %s outside the fold; left out", fold, name)
                continue
            path = root / "queries" / f"{n}-{name}.jsonl"
            _write_if_changed(path, kept)
            entries.append(replace(spec, queries=str(path), tasks=None, negatives=None, group=group,
                                   group_per_task=False))
            kept_groups.add(group)
    config.data.mbeir = entries
    if config.data.weights is not None:  # a left-out task's weight would name a group that is gone
        gone = all_groups - kept_groups
        config.data.weights = {g: w for g, w in config.data.weights.items() if g not in gone}
    return config


def _query_files(spec, prefix: str) -> list[tuple[str, Path, str]]:
    """``(name, query file, mixture group)`` of each task an ``MBEIRData`` entry trains on."""
    if spec.queries:
        return [(Path(spec.queries).stem, Path(spec.queries), spec.group)]
    directory = MBEIRDirectory(spec.root)
    out = []
    for task in directory.select_tasks(spec.split, spec.tasks):
        source = Path(spec.negatives) / f"{task.name}.jsonl" if spec.negatives else task.queries
        out.append((task.name, source, prefix + task.name if spec.group_per_task else spec.group))
    return out


def _write_if_changed(path: Path, queries: list) -> None:
    """Rewrite a fold's query file only when its content changes (a rerun leaves it untouched)."""
    text = "".join(json.dumps(query_to_dict(q), ensure_ascii=False) + "\n" for q in queries)  # as write_jsonl
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    write_queries(path, queries)


def _merged(target: Path, identity: dict) -> bool:
    path = target / MANIFEST
    if not path.is_file():
        return False
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    same = saved.get("cross_fit") == json.loads(json.dumps(identity))  # tuples in identity become lists
    if same:
        logger.info("reusing the merged cross-fitted mining at %s", target)
    return same


def merge_folds(target: Path, data_dir: str, config, manifests: list[dict], identity: dict) -> None:
    """Each task file in the original query order from the fold outputs, then ``mining.json`` (last)."""
    directory = MBEIRDirectory(data_dir)
    (target / MANIFEST).unlink(missing_ok=True)  # between the writes, no reader takes this for finished
    stats: dict[str, MiningStats] = {}
    outputs = []
    for task in directory.select_tasks(config.split, config.tasks):
        rows: dict[str, str] = {}
        for fold in range(identity["folds"]):
            part = target / "folds" / f"fold-{fold}" / "mine" / f"{task.name}.jsonl"
            for line in part.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rows[json.loads(line)["qid"]] = line
        with atomic_open(target / f"{task.name}.jsonl", "w") as f:
            for query in read_queries(task.queries):
                f.write(rows[query.qid] + "\n")
        outputs.append(f"{task.name}.jsonl")
        stats[task.name] = MiningStats()
        for manifest in manifests:
            stats[task.name].add(MiningStats.from_dict(manifest["stats"][task.name]))
    write_json(target / MANIFEST, {
        "config": asdict(config), "encoder_id": "cross-fit:" + ",".join(m["encoder_id"] for m in manifests),
        "format_version": FORMAT_VERSION, "data_dir": str(data_dir), "mmembed_version": __version__,
        "outputs": outputs, "stats": {k: asdict(v) for k, v in stats.items()},
        "fold_stats": [m["stats"] for m in manifests], "cross_fit": identity})
