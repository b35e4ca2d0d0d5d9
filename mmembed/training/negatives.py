"""The negatives a training row gets in an epoch: drawn from its mined typed sets, padded at random.

Every draw comes from a :class:`~mmembed.hashing.HashStream` keyed by (seed, epoch, query), so an
epoch's negatives are the same in every process and after a resume, and change from epoch to epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmembed.hashing import HashStream

#: One type of a row's typed negatives: (type, every candidate id of that type, how many to draw).
TypedSet = tuple[str, tuple[str, ...], int]


def sample(population: Sequence[str], k: int, draws: HashStream) -> list[str]:
    """``k`` distinct elements in random order (a partial Fisher-Yates shuffle)."""
    pool = list(population)
    for i in range(k):
        j = i + draws.below(len(pool) - i)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]


def draw_typed(sets: Sequence[TypedSet], draws: HashStream) -> list[str]:
    """This epoch's typed negatives: each type's quota drawn without replacement from its full set
    (a short set gives what it has; random padding fills the rest, as mining's fallback does)."""
    out: list[str] = []
    for _, ids, quota in sets:
        fresh = [d for d in ids if d not in out]  # an id in two sets is drawn once
        out += sample(fresh, quota, draws) if len(fresh) > quota else fresh
    return out


def padding(group: list[str], exclude: set[str], k: int, draws: HashStream) -> list[str]:
    """Up to ``k`` random ids of ``group`` outside ``exclude`` (fewer when the group is too small)."""
    out: list[str] = []
    for _ in range(20 * k):  # rejection sampling
        if len(out) == k:
            break
        did = group[draws.below(len(group))]
        if did not in exclude:
            exclude.add(did)
            out.append(did)
    return out
