"""Cross-process gathers for contrastive losses: every rank's candidates become everyone's negatives.

:func:`gather_with_grad` uses :func:`torch.distributed.nn.functional.all_gather`, whose backward
*sums* the gradients that all ranks' losses send to a rank's rows (a reduce-scatter). Ranks may
hold different numbers of rows (a global batch that does not divide evenly): rows are padded to
the largest count for the collective and the padding is cut off again, which is invisible to
autograd. Without an initialised process group (or with one rank) every function is the identity,
so single-process code needs no special case.
"""

from __future__ import annotations

import torch
from torch import Tensor


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sizes(n: int, device: torch.device) -> list[int]:
    import torch.distributed as dist

    local = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(local) for _ in range(world()[1])]
    dist.all_gather(out, local)
    return [int(t.item()) for t in out]


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    if x.shape[0] == rows:
        return x
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))])


def gather_with_grad(x: Tensor) -> tuple[Tensor, list[int]]:
    """All ranks' rows of ``x`` concatenated in rank order, differentiably, and each rank's count.

    Every rank must call this (it is a collective); trailing dimensions must agree.
    """
    _, world_size = world()
    if world_size == 1:
        return x, [x.shape[0]]
    from torch.distributed.nn.functional import all_gather

    sizes = _sizes(x.shape[0], x.device)
    parts = all_gather(_pad_rows(x, max(sizes)).contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), sizes


def gather_keys(x: Tensor) -> Tensor:
    """All ranks' rows of an integer tensor (ids, keys) concatenated in rank order; no gradient."""
    _, world_size = world()
    if world_size == 1:
        return x
    import torch.distributed as dist

    sizes = _sizes(x.shape[0], x.device)
    padded = _pad_rows(x, max(sizes)).contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def global_sum(n: int, device: torch.device | str = "cpu") -> int:
    """The sum of ``n`` over all ranks (e.g. the global number of queries in a batch)."""
    _, world_size = world()
    if world_size == 1:
        return n
    import torch.distributed as dist

    total = torch.tensor([n], dtype=torch.long, device=device)
    dist.all_reduce(total)
    return int(total.item())
