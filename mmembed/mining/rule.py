"""The hard-negative selection rules, as pure functions of one query's ranked list.

MM-Embed's modality-aware rule (paper section 4), for a query whose task targets modality ``m``:

- **type 1** (modality-wrong): candidates whose modality is not ``m`` and that rank above the
  query's first positive (all of the top k when no positive is retrieved); ``type1_depth: n``
  also takes those in the top ``n`` below the positive (an extension: the paper's rule is ``0``);
- **type 2** (modality-right, content-wrong): candidates of modality ``m`` that are not positives,
  from a rank window at the low end of the top k (default 46-50), below the near-duplicates and
  false negatives that crowd the very top;
- positives are never negatives; when a type has fewer candidates than asked for, random
  candidates fill the gap (type ``random``) if a fallback pool is given.

The text rule (BEIR-format data) is the type-2 window alone, without modalities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mmembed.errors import ConfigError
from mmembed.hashing import stable_hash

TYPE1, TYPE2, RANDOM = "type1", "type2", "random"
NEGATIVE_TYPES = (TYPE1, TYPE2, RANDOM)


@dataclass(frozen=True)
class NegativeRule:
    """How many negatives of each type one query gets, and where type 2 comes from."""

    #: Candidates retrieved per query (the paper's k = 50).
    k: int = 50
    #: 1-based inclusive rank window of type-2 negatives (the paper: 46-50).
    window: tuple[int, int] = (46, 50)
    num_type1: int = 1
    num_type2: int = 1
    #: Fill a type that has too few candidates with random ones (``False``: keep fewer).
    random_fallback: bool = True
    #: Type 1 also holds the wrong-modality candidates of the top ``type1_depth`` ranks that come
    #: below the first positive (0: the paper's rule, only those above it). A model that ranks the
    #: positive first yet fills the rest of its top 5 with the wrong modality then still learns from it.
    type1_depth: int = 0

    def validate(self) -> None:
        low, high = self.window
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if not 1 <= low <= high <= self.k:
            raise ConfigError(f"window {low}-{high} must lie within ranks 1-{self.k} (k = {self.k})")
        for key in ("num_type1", "num_type2"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.num_type1 + self.num_type2 == 0:
            raise ConfigError("num_type1 and num_type2 must not both be 0")
        if not 0 <= self.type1_depth <= self.k:
            raise ConfigError(f"type1_depth must lie within 0-{self.k} (k = {self.k}), got {self.type1_depth}")


def _pick(ids: Sequence[str], count: int, key: str) -> list[str]:
    """``count`` of ``ids`` in a seeded order that depends only on ``key`` (qid + seed + type)."""
    return sorted(ids, key=lambda did: stable_hash(key, did, sep="\0"))[:count]


def _fill(chosen: list[tuple[str, str]], wanted: int, fallback: Sequence[str], exclude: set[str],
          key: str) -> list[tuple[str, str]]:
    """Top up ``chosen`` to ``wanted`` entries with seeded random ids from ``fallback``."""
    missing = wanted - len(chosen)
    if missing <= 0 or not fallback:
        return chosen
    taken = exclude | {did for did, _ in chosen}
    # Draw a few extra candidates, then drop the excluded ones: the pool is large, exclusions are few.
    draws, attempt = [], 0
    while len(draws) < missing and attempt < 4:
        n = len(fallback)
        start = stable_hash(key, attempt, sep="\0")
        for j in range(min(n, 4 * missing + len(taken))):
            did = fallback[(start + j * 7919) % n]
            if did not in taken:
                draws.append(did)
                taken.add(did)
                if len(draws) == missing:
                    break
        attempt += 1
    return chosen + [(did, RANDOM) for did in draws]


def modality_aware_sets(ranked: Sequence[str], modalities: Sequence[str], positives: set[str], target: str,
                        rule: NegativeRule) -> dict[str, list[str]]:
    """Every candidate of each type for one query, best ranked first: ``{"type1": [...], "type2": [...]}``.

    Training may draw from these sets afresh each epoch; :func:`modality_aware_negatives` picks
    today's fixed sample from them.
    """
    top = list(zip(ranked[: rule.k], modalities[: rule.k]))
    first_positive = next((i for i, (did, _) in enumerate(top) if did in positives), len(top))
    reach = max(first_positive, rule.type1_depth)
    type1 = [did for did, m in top[:reach] if m != target and did not in positives]
    low, high = rule.window
    type2 = [did for did, m in top[low - 1: high] if m == target and did not in positives]
    return {TYPE1: type1, TYPE2: type2}


def modality_aware_negatives(ranked: Sequence[str], modalities: Sequence[str], positives: set[str],
                             target: str, rule: NegativeRule, *, key: str,
                             fallback: Sequence[str] = (),
                             sets: dict[str, list[str]] | None = None) -> list[tuple[str, str]]:
    """``[(candidate id, type)]`` for one query; ``ranked`` is best first, ``modalities`` parallel to it.

    ``key`` seeds the choice (e.g. ``f"{seed}:{qid}"``); ``fallback`` holds candidates of the target
    modality to draw random negatives from; ``sets`` are :func:`modality_aware_sets` when already known.
    """
    sets = sets if sets is not None else modality_aware_sets(ranked, modalities, positives, target, rule)
    chosen = [(did, TYPE1) for did in _pick(sets[TYPE1], rule.num_type1, f"{key}:1")]
    if rule.random_fallback:
        chosen = _fill(chosen, rule.num_type1, fallback, positives, f"{key}:r1")
    chosen += [(did, TYPE2) for did in _pick(sets[TYPE2], rule.num_type2, f"{key}:2") if did not in dict(chosen)]
    if rule.random_fallback:
        chosen = _fill(chosen, rule.num_type1 + rule.num_type2, fallback, positives, f"{key}:r2")
    return chosen


def window_set(ranked: Sequence[str], positives: set[str], rule: NegativeRule) -> list[str]:
    """Text mining: every non-positive of the rank window, best ranked first."""
    low, high = rule.window
    return [did for did in ranked[low - 1: high] if did not in positives]


def window_negatives(ranked: Sequence[str], positives: set[str], rule: NegativeRule, *, key: str,
                     fallback: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Text mining: ``num_type2`` non-positives from the rank window (no modality rule)."""
    chosen = [(did, TYPE2) for did in _pick(window_set(ranked, positives, rule), rule.num_type2, f"{key}:2")]
    if rule.random_fallback:
        chosen = _fill(chosen, rule.num_type2, fallback, positives, f"{key}:r2")
    return chosen
