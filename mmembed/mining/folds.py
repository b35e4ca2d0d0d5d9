"""Cross-fitting folds: which of K folds a training query belongs to, by a seeded hash of its id.

A miner trained on the queries it mines has fitted them: it ranks their positives first and finds
almost no candidate of the wrong modality above them (few type-1 negatives, many random fallbacks).
Cross-fitted mining trains fold ``i``'s miner on the other folds and mines fold ``i`` with it. The
fold of a query depends only on (seed, qid), so the training filter and the mining filter agree,
whatever the order or split of the files.
"""

from __future__ import annotations

from mmembed.errors import ConfigError
from mmembed.hashing import stable_hash


def fold_of(qid: str, folds: int, seed: int = 0) -> int:
    """The fold (``0 .. folds - 1``) of query ``qid``."""
    if folds < 1:
        raise ConfigError(f"folds must be >= 1, got {folds}")
    return stable_hash("fold", seed, qid) % folds


def check_fold(folds: int, fold: int) -> None:
    if folds < 1 or not 0 <= fold < folds:
        raise ConfigError(f"fold must be in 0..{folds - 1} for {folds} folds, got fold {fold}")
