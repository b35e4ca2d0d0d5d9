"""GradCache: contrastive batches larger than memory, with the gradients of the whole batch.

A contrastive loss couples every query to every candidate, so the batch cannot simply be split
into accumulation steps. GradCache (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch
Size under Memory Limited Setup") splits it in two passes instead:

1. embed the inputs chunk by chunk *without* autograd graphs (memory of one chunk at a time);
2. compute the loss on the full batch of embeddings and backpropagate into the embeddings only;
3. re-embed each chunk *with* a graph and backpropagate the cached embedding gradients
   (``(emb * cached_grad).sum().backward()``), freeing the graph after each chunk.

Parameter gradients equal those of the plain computation because the loss's gradient w.r.t. the
parameters factors through the embeddings. Randomness (dropout) is replayed exactly: the RNG
state of every chunk is saved in pass 1 and restored for its re-run in pass 3; afterwards the RNG
continues from where pass 1 left it, as if no re-run had happened.

It composes with the cross-process gather (make ``loss_fn`` an :class:`~mmembed.losses.InfoNCELoss`
with ``gather=True``: its backward in step 2 is collective, and the cached gradients then already
hold every rank's contribution) and with DDP (pass ``no_sync=model.no_sync``: gradients are
all-reduced once, in the last chunk's backward).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmembed.errors import ArgumentError, ModelError

logger = logging.getLogger(__name__)

EmbedFn = Callable[[Any], Tensor]
SplitFn = Callable[[Any, int], list[Any]]


def split_inputs(inputs: Any, chunk_size: int) -> list[Any]:
    """Split a batch along its first dimension into chunks of at most ``chunk_size`` rows.

    Handles tensors, sequences (e.g. lists of :class:`~mmembed.encoders.base.Item`) and mappings
    of those (e.g. ``{"items": [...], "instructions": [...]}`` or tokenizer output); other mapping
    values are passed to every chunk unchanged. Inputs whose rows are not aligned on the first
    dimension (e.g. Qwen2-VL's flattened image patches) need a custom ``split_fn`` — or, simpler,
    let the embed function do the processing and pass it raw items.
    """
    if chunk_size <= 0:
        raise ArgumentError(f"chunk_size must be positive, got {chunk_size}")
    n = _num_rows(inputs)
    return [_slice(inputs, start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def _num_rows(inputs: Any) -> int:
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    if isinstance(inputs, Mapping):
        sizes = {_num_rows(v) for v in inputs.values() if _is_rows(v)}
        if len(sizes) != 1:
            raise ArgumentError(f"inputs: a mapping whose row counts differ or are absent: {sorted(sizes)}")
        return sizes.pop()
    if isinstance(inputs, Sequence) and not isinstance(inputs, str | bytes):
        return len(inputs)
    raise ArgumentError(f"inputs: cannot split inputs of type {type(inputs).__name__}; pass a split_fn")


def _is_rows(value: Any) -> bool:
    return isinstance(value, Tensor | Mapping) or (isinstance(value, Sequence) and not isinstance(value, str | bytes))


def _slice(inputs: Any, start: int, stop: int) -> Any:
    if isinstance(inputs, Mapping):  # chunks of a mapping (tokenizer output included) are plain dicts
        return {k: _slice(v, start, stop) if _is_rows(v) else v for k, v in inputs.items()}
    return inputs[start:stop]


@dataclass
class RandomState:
    """The CPU and CUDA generator states at one moment, to replay a chunk's dropout exactly."""

    cpu: Tensor
    cuda: list[Tensor]

    @classmethod
    def capture(cls) -> RandomState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        return cls(torch.get_rng_state(), cuda)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state; the generators are left as they were before the block."""
        devices = list(range(len(self.cuda)))
        with torch.random.fork_rng(devices=devices, enabled=True):
            torch.set_rng_state(self.cpu)
            if self.cuda:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def _grad_of(x: Tensor) -> Tensor:
    return x.grad if x.grad is not None else torch.zeros_like(x)


class GradCache:
    """One contrastive training step over a batch embedded in chunks.

    Args:
        embed_query: maps a chunk of query inputs to ``[b, d]`` embeddings (the model's forward).
        embed_candidate: the same for candidates (often the same model).
        loss_fn: ``loss_fn(q [B, d], c [N, d], **loss_kwargs) -> scalar`` on the full batch.
        chunk_size: rows per forward pass; ``query_chunk_size`` / ``candidate_chunk_size`` override
            it per side (candidates, e.g. 512-token passages, often need smaller chunks).
        no_sync: a context-manager factory such as ``ddp_model.no_sync`` or
            ``functools.partial(accelerator.no_sync, model)``; every chunk but the last runs inside
            it, so gradients are all-reduced once per step.
        split_fn: ``split_fn(inputs, chunk_size) -> list of chunks``; default :func:`split_inputs`.
        loss_scale: multiplies the loss before its backward (e.g. ``1 / accumulation_steps``).

    Example::

        cache = GradCache(model.embed_queries, model.embed_candidates, InfoNCELoss(), chunk_size=16)
        loss = cache.step(query_items, candidate_items, target=target)   # .grad now populated
        optimizer.step(); optimizer.zero_grad()
    """

    def __init__(self, embed_query: EmbedFn, embed_candidate: EmbedFn, loss_fn: Callable[..., Tensor],
                 chunk_size: int | None = None, *, query_chunk_size: int | None = None,
                 candidate_chunk_size: int | None = None, no_sync: Callable[[], AbstractContextManager] | None = None,
                 split_fn: SplitFn = split_inputs, loss_scale: float = 1.0):
        self.embed_query = embed_query
        self.embed_candidate = embed_candidate
        self.loss_fn = loss_fn
        self.query_chunk_size = query_chunk_size or chunk_size
        self.candidate_chunk_size = candidate_chunk_size or chunk_size
        if not self.query_chunk_size or not self.candidate_chunk_size:
            raise ArgumentError("give chunk_size, or both query_chunk_size and candidate_chunk_size")
        self.no_sync = no_sync
        self.split_fn = split_fn
        self.loss_scale = loss_scale

    def step(self, query_inputs: Any, candidate_inputs: Any, **loss_kwargs: Any) -> Tensor:
        """Embed, compute the loss, backpropagate into the parameters; returns the (detached) loss."""
        sides = [(self.embed_query, self.split_fn(query_inputs, self.query_chunk_size)),
                 (self.embed_candidate, self.split_fn(candidate_inputs, self.candidate_chunk_size))]
        embeddings, states = [], []
        for embed, chunks in sides:
            side_embeddings, side_states = self._embed_without_graph(embed, chunks)
            embeddings.append(side_embeddings)
            states.append(side_states)
        q, c = (torch.cat(e).requires_grad_() for e in embeddings)
        loss = self.loss_fn(q, c, **loss_kwargs)
        (loss * self.loss_scale).backward()
        grads = [_grad_of(x).split([e.shape[0] for e in side]) for x, side in zip((q, c), embeddings)]
        self._replay_with_graph(sides, states, grads)
        return loss.detach()

    @staticmethod
    def _embed_without_graph(embed: EmbedFn, chunks: list[Any]) -> tuple[list[Tensor], list[RandomState]]:
        outputs, states = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(RandomState.capture())
                outputs.append(embed(chunk).detach())
        return outputs, states

    def _replay_with_graph(self, sides: list, states: list[list[RandomState]], grads: list[Sequence[Tensor]]) -> None:
        jobs = [(embed, chunk, state, grad)
                for (embed, chunks), side_states, side_grads in zip(sides, states, grads)
                for chunk, state, grad in zip(chunks, side_states, side_grads)]
        for n, (embed, chunk, state, grad) in enumerate(jobs):
            last = n == len(jobs) - 1
            sync = contextlib.nullcontext() if last or self.no_sync is None else self.no_sync()
            with sync, state.replay():
                out = embed(chunk)
                if out.shape != grad.shape:
                    raise ModelError(f"GradCache: the chunk re-run gave embeddings of shape {tuple(out.shape)}, "
                                       f"the first pass {tuple(grad.shape)}; is the embed function deterministic?")
                torch.sum(out * grad.to(out.dtype)).backward()
