"""InfoNCE over a query's positive, every in-batch candidate and its hard negatives.

The loss is a pure function of embeddings, so it is tested against hand-computed values and any
encoder can be trained with it. In-batch false negatives — a query's positive that shows up in the
batch as another query's candidate — are masked out by candidate id, not counted as negatives.

Temperature: MM-Embed does not publish its value; 0.02–0.05 is the usual range for this family of
models. The default, 0.05, is the gentle end of that range: with the small batches and LoRA
updates of a reproduction it gives smoother gradients than 0.02. It is an option everywhere.

Example::

    q = F.normalize(torch.randn(4, 8), dim=-1)          # 4 queries
    c = F.normalize(torch.randn(12, 8), dim=-1)         # 4 positives, then 8 hard negatives
    target = torch.arange(4)                            # query i's positive is candidate i
    loss = info_nce(q, c, target, temperature=0.05)
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmembed.errors import ArgumentError
from mmembed.hashing import stable_hash
from mmembed.losses.distributed import gather_keys, gather_with_grad, global_sum, world

#: See the module docstring for why.
DEFAULT_TEMPERATURE = 0.05
#: Key value that pads a row of :func:`pack_key_sets`; :func:`hash_ids` never returns it.
PAD_KEY = 0


def info_nce(q: Tensor, c: Tensor, target: Tensor, mask: Tensor | None = None,
             temperature: float = DEFAULT_TEMPERATURE, *, normalize: bool = True,
             reduction: str = "mean") -> Tensor:
    """Cross-entropy of each query's target candidate against all ``N`` candidates.

    Args:
        q: ``[B, d]`` query embeddings.
        c: ``[N, d]`` candidate embeddings (positives, in-batch and hard negatives, in any order).
        target: ``[B]`` index into ``c`` of each query's positive.
        mask: ``[B, N]``, True where a candidate must not count for that query (an in-batch
            false negative); masking a query's own target is an error.
        temperature: similarities are divided by it before the softmax.
        normalize: L2-normalise both sides first, so the score is the cosine similarity the
            encoders are evaluated with (idempotent for already normalised rows).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` as in :func:`torch.nn.functional.cross_entropy`.

    Logits are computed in float32 whatever the embedding dtype: bf16 logits divided by 0.05
    lose the differences the loss is about.
    """
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ArgumentError(f"q and c: expected q [B, d] and c [N, d], got {tuple(q.shape)} and {tuple(c.shape)}")
    if temperature <= 0:
        raise ArgumentError(f"temperature must be positive, got {temperature}")
    target = target.to(device=q.device, dtype=torch.long)
    q, c = q.float(), c.float()
    if normalize:
        q, c = F.normalize(q, dim=-1), F.normalize(c, dim=-1)
    logits = q @ c.T / temperature
    if mask is not None:
        mask = mask.to(device=logits.device, dtype=torch.bool)
        if mask.shape != logits.shape:
            raise ArgumentError(f"mask: shape {tuple(mask.shape)} does not match the logits {tuple(logits.shape)}")
        if len(target) and mask.gather(1, target[:, None]).any():
            raise ArgumentError("mask: the mask hides a query's own target candidate")
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, target, reduction=reduction)


def hash_ids(ids: Sequence[str]) -> Tensor:
    """Stable 63-bit integer keys of string ids (never :data:`PAD_KEY`).

    Masks are built from keys rather than strings so that they can be gathered across processes
    as tensors; a collision needs two ids among the ~10^3 of a batch to share 63 bits.
    """
    keys = []
    for item_id in ids:
        value = stable_hash(item_id) >> 1
        keys.append(value or 1)
    return torch.tensor(keys, dtype=torch.long)


def pack_key_sets(id_sets: Sequence[Collection[str]]) -> Tensor:
    """``[B, P]`` keys of each query's positive ids, right-padded with :data:`PAD_KEY`."""
    width = max((len(s) for s in id_sets), default=0)
    out = torch.full((len(id_sets), max(width, 1)), PAD_KEY, dtype=torch.long)
    for row, ids in enumerate(id_sets):
        if ids:
            out[row, :len(ids)] = hash_ids(sorted(ids))
    return out


def false_negative_mask(positive_keys: Tensor, candidate_keys: Tensor, target: Tensor) -> Tensor:
    """``[B, N]`` True where candidate ``j`` is one of query ``i``'s positives but not its target.

    Args:
        positive_keys: ``[B, P]`` keys of every positive of each query (:func:`pack_key_sets`).
        candidate_keys: ``[N]`` key of each candidate (:func:`hash_ids`).
        target: ``[B]`` index of each query's own positive slot, which stays unmasked.
    """
    target = target.to(device=candidate_keys.device, dtype=torch.long)
    positive_keys = positive_keys.to(candidate_keys.device)
    hits = (positive_keys[:, :, None] == candidate_keys[None, None, :]) & (positive_keys[:, :, None] != PAD_KEY)
    mask = hits.any(dim=1)
    if len(target):
        mask[torch.arange(len(target), device=mask.device), target] = False
    return mask


def targets_and_mask(positive_ids: Sequence[Collection[str]], candidate_ids: Sequence[str],
                     target: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
    """``(target, mask)`` for :func:`info_nce` from string ids, for callers that have them all."""
    target_t = torch.as_tensor(target, dtype=torch.long)
    mask = false_negative_mask(pack_key_sets(positive_ids), hash_ids(candidate_ids), target_t)
    return target_t, mask


class InfoNCELoss:
    """InfoNCE on one process's share of a batch, with negatives from every process.

    Call with this process's queries ``q [b, d]`` and candidates ``c [n, d]``, ``target [b]``
    indexing into the *local* candidates, and optionally the keys that mask in-batch false
    negatives (``positive_keys [b, P]``, ``candidate_keys [n]``, as the training collator makes
    them). With ``gather=True`` and an initialised process group of W > 1 ranks, the candidates
    (and their keys) of all ranks are gathered with a differentiable all-gather, so every query
    sees the whole global batch of candidates.

    Scaling: the returned value is ``W / B_global * sum of this rank's per-query losses``.
    The gather's backward sums the gradients of all ranks' losses onto each rank's candidates, and
    DDP / DeepSpeed / FSDP average parameter gradients over ranks, so after the backward every rank
    holds exactly the gradient of the mean loss over the global batch computed by ONE process
    (also when ranks hold unequal numbers of queries). The mean over ranks of the returned values
    is that global mean loss (what to log).
    """

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, *, normalize: bool = True, gather: bool = True):
        if temperature <= 0:
            raise ArgumentError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.normalize = normalize
        self.gather = gather

    def __call__(self, q: Tensor, c: Tensor, target: Tensor, positive_keys: Tensor | None = None,
                 candidate_keys: Tensor | None = None) -> Tensor:
        if (positive_keys is None) != (candidate_keys is None):
            raise ArgumentError("give both positive_keys and candidate_keys, or neither")
        rank, world_size = world()
        target = target.to(device=q.device, dtype=torch.long)
        if not self.gather or world_size == 1:
            mask = None if positive_keys is None else false_negative_mask(positive_keys, candidate_keys.to(q.device),
                                                                         target)
            return info_nce(q, c, target, mask, self.temperature, normalize=self.normalize)
        c_all, sizes = gather_with_grad(c)
        target = target + sum(sizes[:rank])
        mask = None
        if positive_keys is not None:
            keys_all = gather_keys(candidate_keys.to(c.device))
            mask = false_negative_mask(positive_keys, keys_all, target)
        total = info_nce(q, c_all, target, mask, self.temperature, normalize=self.normalize, reduction="sum")
        global_batch = global_sum(len(q), q.device)
        return total * (world_size / max(global_batch, 1))
