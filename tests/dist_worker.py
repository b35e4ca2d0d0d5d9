"""A few training steps of a tiny linear encoder with DDP and cross-process negatives.

Launched by ``tests/test_distributed_loss.py`` as ``torchrun --nproc_per_node 2 dist_worker.py OUT``
(gloo, CPU); the test imports :func:`train` to run the one-process reference on the whole batch.
Each rank takes its contiguous slice of every global batch, as the batch sampler hands it out.
"""

from __future__ import annotations

import gc
import sys

import torch
from torch import nn

from mmembed.losses import InfoNCELoss, hash_ids, pack_key_sets
from mmembed.training.gradcache import GradCache

IN, OUT, NEG, STEPS, LR = 6, 4, 2, 3, 0.5
#: (mode, global batch size) pairs the worker runs; 7 does not split evenly over 2 ranks.
CASES = (("gather", 8), ("gather", 7), ("gradcache", 8), ("gradcache", 7), ("local", 8))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(IN, OUT)


def make_step(step: int, batch: int) -> dict:
    """Queries, positives and hard negatives of one global batch, with in-batch false negatives.

    Query 0 also counts query ``batch - 1``'s positive as relevant (they sit on different ranks),
    and a negative of the last query is query 1's positive id.
    """
    g = torch.Generator().manual_seed(1000 + step)
    pos_ids = [f"s{step}p{i}" for i in range(batch)]
    neg_ids = [[f"s{step}n{i}_{k}" for k in range(NEG)] for i in range(batch)]
    neg_ids[-1][0] = pos_ids[1]
    positives = [{pos_ids[i]} for i in range(batch)]
    positives[0].add(pos_ids[-1])
    return {"queries": torch.randn(batch, IN, generator=g), "positives": torch.randn(batch, IN, generator=g),
            "negatives": torch.randn(batch, NEG, IN, generator=g), "pos_ids": pos_ids, "neg_ids": neg_ids,
            "positive_sets": positives}


def local_share(data: dict, rank: int, world_size: int) -> tuple:
    """This rank's queries, its candidates (positives, then negatives) and the loss arguments."""
    batch = len(data["pos_ids"])
    base, extra = divmod(batch, world_size)
    sizes = [base + (r < extra) for r in range(world_size)]
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    candidates = torch.cat([data["positives"][lo:hi], data["negatives"][lo:hi].reshape(-1, IN)])
    ids = data["pos_ids"][lo:hi] + [d for row in data["neg_ids"][lo:hi] for d in row]
    kwargs = {"target": torch.arange(hi - lo), "positive_keys": pack_key_sets(data["positive_sets"][lo:hi]),
              "candidate_keys": hash_ids(ids)}
    return data["queries"][lo:hi], candidates, kwargs


def train(mode: str, batch: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """Weights after ``STEPS`` SGD steps; ``mode`` is gather, gradcache or local (no gather)."""
    model = make_model()
    wrapped = model
    if world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = InfoNCELoss(temperature=0.1, gather=mode != "local")
    for step in range(STEPS):
        queries, candidates, kwargs = local_share(make_step(step, batch), rank, world_size)
        optimizer.zero_grad()
        if mode == "gradcache":
            no_sync = wrapped.no_sync if world_size > 1 else None
            GradCache(wrapped, wrapped, loss_fn, 2, no_sync=no_sync).step(queries, candidates, **kwargs)
        else:
            emb = wrapped(torch.cat([queries, candidates]))
            loss_fn(emb[:len(queries)], emb[len(queries):], **kwargs).backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(out_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    results = {f"{mode}/{batch}": train(mode, batch, rank, world_size) for mode, batch in CASES}
    if rank == 0:
        torch.save(results, out_path)
    # The DDP wrappers sit in reference cycles; left to the collector they would be freed after the
    # process group is destroyed, and under load that aborted a rank at exit ("terminate called
    # without an active exception": 2 of 23 runs with three busy CPU hogs, 0 of 40 with this).
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
