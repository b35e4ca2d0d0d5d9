"""Training: id-based contrastive data, the seeded batch sampler, and GradCache.

The trainer that drives these (a thin layer over an existing engine) builds on:

- :class:`~mmembed.training.data.ContrastiveDataset` (rows of M-BEIR / BEIR sources -> examples),
- :class:`~mmembed.training.sampler.ContrastiveBatchSampler` (global batches, sharded, resumable),
- :func:`~mmembed.training.data.collate_examples` (examples -> :class:`ContrastiveBatch`),
- :class:`~mmembed.training.gradcache.GradCache` (big batches in small chunks),
- :class:`mmembed.losses.InfoNCELoss` (the loss, with cross-process negatives).
"""

from mmembed.training.data import (
    CandidatePool,
    ContrastiveBatch,
    ContrastiveDataset,
    ExampleKey,
    ResolvedIds,
    TrainingExample,
    TrainingSource,
    beir_source,
    collate_examples,
    mbeir_source,
    read_hard_negatives,
)
from mmembed.training.gradcache import GradCache, RandomState, split_inputs
from mmembed.training.sampler import ContrastiveBatchSampler

__all__ = [
    "CandidatePool",
    "ContrastiveBatch",
    "ContrastiveBatchSampler",
    "ContrastiveDataset",
    "ExampleKey",
    "GradCache",
    "RandomState",
    "ResolvedIds",
    "TrainingExample",
    "TrainingSource",
    "beir_source",
    "collate_examples",
    "mbeir_source",
    "read_hard_negatives",
    "split_inputs",
]
