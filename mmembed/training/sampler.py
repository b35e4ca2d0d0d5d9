"""The seeded batch sampler of contrastive training: mixing, task batches, no in-batch duplicates.

Each epoch's plan — the list of *global* batches — is a pure function of (seed, epoch, data), so:

- every process computes the same plan and takes its own contiguous slice of each global batch;
  the global batch is the same for any number of processes (a run may resume on another count);
- the state to save is just (epoch, position): :meth:`ContrastiveBatchSampler.state_dict`.

Planning an epoch:

1. Mixture: each source *group* gets a share of the epoch's ``examples_per_epoch`` (default: all
   rows) proportional to its weight (default: to its size, i.e. the plain union); within a group,
   sources share in proportion to their sizes. A source whose share exceeds its size is cycled
   through fresh permutations (up-sampling); a smaller share takes a random subset.
2. The selected rows are shuffled; with ``task_homogeneous=True`` they are split by task key and
   each batch is drawn from one task (per-task remainders are dropped, or with
   ``task_remainder="mix"`` batched together), then the batch order is shuffled. A share between 0
   and 1 (``task_homogeneous=0.5``) puts that share of the rows into single-task batches and the
   rest (with the per-task remainders) into mixed ones: single-task batches bring hard same-task
   negatives, mixed ones the other modalities a model must learn to rank below the right one.
3. Batches are filled greedily in stream order, skipping (and retrying in the next batch) a row
   that would put the same candidate twice in the batch: two queries sharing a positive, one's
   positive among another's negatives, a shared negative, the same query twice. When no compatible
   row is found after skipping ``lookahead`` rows, the batch is completed anyway (logged; the loss still
   masks such in-batch false negatives by id). The rows that cannot fill a last conflict-free batch
   are left over (logged) and drawn again in later epochs' fresh permutations.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Literal

import numpy as np

from mmembed.errors import ConfigError
from mmembed.training.data import ContrastiveDataset, ExampleKey

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
#: Above this share of forced rows per epoch the sampler warns instead of logging at INFO.
FORCED_WARNING_SHARE = 0.05
TaskRemainder = Literal["drop", "mix"]


class _BatchState:
    """The ids already in a batch under construction, to test a new row against."""

    def __init__(self):
        self.rows: list[int] = []
        self.qids: set[str] = set()
        self.candidates: set[str] = set()
        self.positives: set[str] = set()

    def compatible(self, qid: str, candidates: frozenset[str], positives: frozenset[str]) -> bool:
        return (qid not in self.qids and self.candidates.isdisjoint(candidates)
                and self.positives.isdisjoint(candidates) and self.candidates.isdisjoint(positives))

    def add(self, row: int, qid: str, candidates: frozenset[str], positives: frozenset[str]) -> None:
        self.rows.append(row)
        self.qids.add(qid)
        self.candidates |= candidates
        self.positives |= positives


class ContrastiveBatchSampler:
    """Yields this process's share of each global batch as a list of :class:`ExampleKey`.

    Args:
        dataset: the rows to sample (their ids are checked for in-batch duplicates).
        global_batch_size: queries per optimizer step over all processes.
        seed: seeds every epoch's plan.
        weights: ``{group: weight}`` mixing the source groups (every group must be listed; 0
            leaves one out); ``None`` mixes in proportion to size.
        examples_per_epoch: rows drawn per epoch (default: every row once).
        task_homogeneous: every batch from one task key (``True``), or the share of the rows that
            go into single-task batches (a number in [0, 1]; the others are mixed);
            ``task_remainder`` says what happens to the rows of a task that do not fill a last
            single-task batch when every batch is single-task (with a share below 1 they are mixed).
        avoid_conflicts: keep a candidate (or query) from appearing twice in a batch.
        lookahead: how many incompatible rows a batch may skip before it is completed anyway
            (default: 8 global batches).
        num_replicas, rank: the process layout; rank ``r`` gets the r-th contiguous slice.
    """

    def __init__(self, dataset: ContrastiveDataset, global_batch_size: int, *, seed: int = 0,
                 weights: Mapping[str, float] | None = None, examples_per_epoch: int | None = None,
                 task_homogeneous: bool | float = False, task_remainder: TaskRemainder = "drop",
                 avoid_conflicts: bool = True, lookahead: int | None = None, num_replicas: int = 1, rank: int = 0):
        if global_batch_size < 1:
            raise ConfigError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if not 0 <= rank < num_replicas or num_replicas > global_batch_size:
            raise ConfigError(f"rank {rank} of {num_replicas} processes is not valid for a global batch of "
                              f"{global_batch_size}")
        if task_remainder not in ("drop", "mix"):
            raise ConfigError(f"unknown task_remainder {task_remainder!r}; expected 'drop' or 'mix'")
        if not 0 <= float(task_homogeneous) <= 1:
            raise ConfigError(f"task_homogeneous must be true, false or a share in [0, 1], got {task_homogeneous}")
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.weights = self._check_weights(weights)
        self.examples_per_epoch = examples_per_epoch or len(dataset)
        self.task_homogeneous = float(task_homogeneous)
        self.task_remainder = task_remainder
        self.avoid_conflicts = avoid_conflicts
        self.lookahead = lookahead or 8 * global_batch_size
        base, extra = divmod(global_batch_size, num_replicas)
        sizes = [base + (r < extra) for r in range(num_replicas)]
        self._slice = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
        self.epoch = 0
        self.position = 0
        self._plan: tuple[int, np.ndarray] | None = None

    def _check_weights(self, weights: Mapping[str, float] | None) -> dict[str, float]:
        groups = list(dict.fromkeys(s.group for s in self.dataset.sources))
        if weights is None:
            return {g: float(sum(len(s.rows) for s in self.dataset.sources if s.group == g)) for g in groups}
        if set(weights) != set(groups) or any(w < 0 for w in weights.values()) or not sum(weights.values()):
            raise ConfigError(f"weights must give a non-negative weight to every source group {groups} "
                              f"(not all zero), got {dict(weights)}")
        return {g: float(weights[g]) for g in groups}

    # --- iteration and state --------------------------------------------------------------------

    def __iter__(self) -> Iterator[list[ExampleKey]]:
        """The rest of the current epoch from ``position``; then the epoch counter moves on."""
        epoch, plan = self.epoch, self.plan(self.epoch)
        while self.position < len(plan):
            step = self.position
            self.position += 1
            yield [ExampleKey(int(row), epoch, step) for row in plan[step, self._slice]]
        self.epoch, self.position = epoch + 1, 0

    def __len__(self) -> int:
        """Global batches in the current epoch (the same on every process)."""
        return len(self.plan(self.epoch))

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (kept as is when it is the current epoch: resuming)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self, next_batch: tuple[int, int] | None = None) -> dict:
        """What resumes sampling exactly: epoch, position, seed and the data it was planned on.

        A DataLoader fetches batches ahead of training, so the sampler's own position may be ahead
        of the last batch trained on; pass ``next_batch=(epoch, step + 1)`` of that batch (its
        :class:`ExampleKey` or collated ``epoch``/``step``) to save where training really is.
        """
        epoch, position = next_batch if next_batch is not None else (self.epoch, self.position)
        return {"format": STATE_FORMAT, "epoch": int(epoch), "position": int(position), "seed": self.seed,
                "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"sampler state format {state.get('format')!r} is not {STATE_FORMAT}")
        mine, theirs = self.fingerprint(), state.get("fingerprint", {})
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ or state.get("seed") != self.seed:
            raise ConfigError(f"sampler state was saved for different data or settings ({', '.join(differ) or 'seed'} "
                              "differ); resuming would not reproduce the run")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def fingerprint(self) -> dict:
        return {"dataset": self.dataset.fingerprint(), "global_batch_size": self.global_batch_size,
                "weights": dict(self.weights), "examples_per_epoch": self.examples_per_epoch,
                "task_homogeneous": self.task_homogeneous, "task_remainder": self.task_remainder,
                "avoid_conflicts": self.avoid_conflicts, "lookahead": self.lookahead}

    # --- planning -------------------------------------------------------------------------------

    def plan(self, epoch: int) -> np.ndarray:
        """``[num_batches, global_batch_size]`` dataset rows of every global batch of ``epoch``."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        rng = np.random.default_rng([self.seed, epoch])
        stream = rng.permutation(self._select(rng))
        batches, leftovers = self._batches(stream, epoch)
        order = rng.permutation(len(batches)) if self.task_homogeneous else np.arange(len(batches))
        plan = np.asarray([batches[i] for i in order], dtype=np.int64).reshape(-1, self.global_batch_size)
        if not len(plan):
            raise ConfigError(f"epoch {epoch} has no full batch: {self.examples_per_epoch} examples per epoch, "
                              f"global batch size {self.global_batch_size}")
        logger.info("epoch %d: %d global batches of %d; %d rows left over", epoch, len(plan),
                    self.global_batch_size, leftovers)
        self._plan = (epoch, plan)
        return plan

    def _quotas(self) -> list[int]:
        """Rows drawn from each source, by largest remainder so that they add up exactly."""
        sources = self.dataset.sources
        total_w = sum(self.weights.values())
        group_rows = {g: sum(len(s.rows) for s in sources if s.group == g) for g in self.weights}
        exact = []
        for s in sources:
            share = self.weights[s.group] / total_w * (len(s.rows) / group_rows[s.group] if group_rows[s.group] else 0)
            exact.append(share * self.examples_per_epoch)
        quotas = [int(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: (quotas[i] - exact[i], i))
        for i in by_remainder[:round(sum(exact)) - sum(quotas)]:
            quotas[i] += 1
        return quotas

    def _select(self, rng: np.random.Generator) -> np.ndarray:
        parts = []
        for rows, quota in zip(self.dataset.source_ranges, self._quotas()):
            if quota and not len(rows):
                raise ConfigError("a source with no rows has a non-zero share of the mixture")
            cycles = [rng.permutation(len(rows)) for _ in range(-(-quota // len(rows)) if quota else 0)]
            parts.append(rows.start + np.concatenate(cycles)[:quota] if cycles else np.zeros(0, dtype=np.int64))
        return np.concatenate(parts)

    def _batches(self, stream: np.ndarray, epoch: int) -> tuple[list[list[int]], int]:
        """Single-task batches from the first ``task_homogeneous`` share of the stream, mixed
        batches from the rest; returns the batches and how many rows are left over."""
        cut = round(self.task_homogeneous * len(stream))
        by_task: dict[str, list[int]] = {}
        for row in stream[:cut].tolist():
            by_task.setdefault(self.dataset.task_key(row), []).append(row)
        batches, rest = [], []
        for task in sorted(by_task):
            task_batches, leftover = self._fill(np.asarray(by_task[task]), epoch)
            batches += task_batches
            rest += leftover
        if cut == len(stream) and self.task_remainder == "drop":
            return batches, len(rest)
        # The remainders go first, grouped by task: a few of the mixed batches are mostly one task.
        mixed, unfilled = self._fill(np.concatenate([np.asarray(rest, dtype=np.int64), stream[cut:]]), epoch)
        return batches + mixed, len(unfilled)

    def _fill(self, stream: np.ndarray, epoch: int) -> tuple[list[list[int]], list[int]]:
        """Greedy conflict-free batches in stream order; returns batches and the rows left over."""
        size, resolved = self.global_batch_size, {}

        def ids(row: int) -> tuple[str, frozenset[str], frozenset[str]]:
            if row not in resolved:
                r = self.dataset.resolve(row, epoch)
                resolved[row] = (r.qid, frozenset(r.candidates), r.positives)
            return resolved[row]

        pending, batches, forced = deque(stream.tolist()), [], 0
        while len(pending) >= size:
            batch, skipped = _BatchState(), []
            while pending and len(batch.rows) < size and len(skipped) < self.lookahead:
                row = pending.popleft()
                if not self.avoid_conflicts or batch.compatible(*ids(row)):
                    batch.add(row, *ids(row))
                else:
                    skipped.append(row)
            if len(batch.rows) < size and len(skipped) < self.lookahead:  # the epoch's tail: left over
                pending.extendleft(reversed(batch.rows + skipped))
                break
            while len(batch.rows) < size:  # nothing compatible within the lookahead: complete the batch
                row = skipped.pop(0) if skipped else pending.popleft()
                batch.add(row, *ids(row))
                forced += 1
            pending.extendleft(reversed(skipped))
            batches.append(batch.rows)
        if forced:
            share = forced / max(len(stream), 1)
            # A few forced rows are harmless (the loss masks the shared ids); many mean the data has
            # too few distinct positives for this batch size, and those rows get fewer negatives.
            level = logging.WARNING if share > FORCED_WARNING_SHARE else logging.INFO
            logger.log(level, "epoch %d: %d of %d rows (%.0f %%) placed in a batch that already held one of their "
                       "candidates (lookahead %d exhausted); the loss masks those in-batch duplicates, but the rows "
                       "get fewer negatives: many queries share positives, so a smaller batch or a longer lookahead "
                       "helps", epoch, forced, len(stream), 100 * share, self.lookahead)
        return batches, list(pending)
