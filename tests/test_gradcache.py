"""GradCache gives the gradients of the plain computation, dropout included, for any chunk size."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from mmembed.losses import InfoNCELoss, hash_ids, pack_key_sets
from mmembed.training.gradcache import GradCache, RandomState, split_inputs

B, NEG, DIM = 6, 2, 5


def make_model(dropout: float = 0.3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 8))


def make_batch():
    g = torch.Generator().manual_seed(1)
    queries = torch.randn(B, DIM, generator=g)
    candidates = torch.randn(B * (1 + NEG), DIM, generator=g)
    # Query 1 shares query 0's positive id, so the masking path runs too.
    positive_ids = [{"p0", "p1"}, {"p1"}, *({f"p{i}"} for i in range(2, B))]
    candidate_ids = [f"p{i}" for i in range(B)] + [f"n{i}" for i in range(B * NEG)]
    loss_kwargs = {"target": torch.arange(B), "positive_keys": pack_key_sets(positive_ids),
                   "candidate_keys": hash_ids(candidate_ids)}
    return queries, candidates, loss_kwargs


LOSS = InfoNCELoss(temperature=0.1)


def plain_step(model: nn.Module, queries, candidates, loss_kwargs, chunk: int | None = None) -> torch.Tensor:
    """The reference: embeddings with graphs (in the same chunks, so dropout draws the same masks)."""
    def embed(x):
        return torch.cat([model(part) for part in x.split(chunk)]) if chunk else model(x)
    loss = LOSS(embed(queries), embed(candidates), **loss_kwargs)
    loss.backward()
    return loss.detach()


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def cached_step(model, queries, candidates, loss_kwargs, chunk, **kwargs) -> torch.Tensor:
    return GradCache(model, model, LOSS, chunk, **kwargs).step(queries, candidates, **loss_kwargs)


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_gradients_equal_the_plain_computation_with_dropout(chunk):
    queries, candidates, kw = make_batch()
    model = make_model()
    torch.manual_seed(123)
    expected_loss = plain_step(model, queries, candidates, kw, chunk)
    expected, rng_after_plain = grads(model), torch.get_rng_state()

    model = make_model()
    torch.manual_seed(123)
    loss = cached_step(model, queries, candidates, kw, chunk)
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-6)
    for got, want in zip(grads(model), expected):
        assert torch.allclose(got, want, atol=1e-5)
    # The generator continues as if the chunks had run once: later steps draw the same numbers.
    assert torch.equal(torch.get_rng_state(), rng_after_plain)


def test_dropout_is_replayed_not_redrawn(monkeypatch):
    """Without the saved RNG states the re-run draws new dropout masks and the gradients are wrong."""
    queries, candidates, kw = make_batch()
    model = make_model()
    torch.manual_seed(5)
    plain_step(model, queries, candidates, kw, 3)
    expected = grads(model)

    monkeypatch.setattr(RandomState, "replay", lambda self: contextlib.nullcontext())
    model = make_model()
    torch.manual_seed(5)
    cached_step(model, queries, candidates, kw, 3)
    assert not all(torch.allclose(g, e, atol=1e-5) for g, e in zip(grads(model), expected))


def test_chunk_sizes_give_the_same_gradients_as_the_whole_batch():
    queries, candidates, kw = make_batch()
    model = make_model().eval()  # deterministic: chunking cannot change anything
    plain_step(model, queries, candidates, kw)
    expected = grads(model)
    for q_chunk, c_chunk in ((1, 1), (2, 5), (4, 18), (100, 100)):
        model = make_model().eval()
        cached_step(model, queries, candidates, kw, None, query_chunk_size=q_chunk, candidate_chunk_size=c_chunk)
        for got, want in zip(grads(model), expected):
            assert torch.allclose(got, want, atol=1e-5)


def test_no_sync_wraps_every_chunk_but_the_last_and_loss_scale_scales():
    queries, candidates, kw = make_batch()
    entered = []

    @contextlib.contextmanager
    def no_sync():
        entered.append(1)
        yield

    model = make_model().eval()
    cached_step(model, queries, candidates, kw, 4, no_sync=no_sync, loss_scale=0.5)
    # ceil(6 / 4) + ceil(18 / 4) = 2 + 5 chunks; the last one synchronises.
    assert len(entered) == 6
    half = grads(model)
    model = make_model().eval()
    cached_step(model, queries, candidates, kw, 4)
    for got, full in zip(half, grads(model)):
        assert torch.allclose(got, full / 2, atol=1e-6)


def test_split_inputs_handles_tensors_lists_and_mappings():
    batch = {"items": ["a", "b", "c"], "pixels": torch.zeros(3, 2), "instruction_mode": "random"}
    chunks = split_inputs(batch, 2)
    assert [c["items"] for c in chunks] == [["a", "b"], ["c"]]
    assert [c["pixels"].shape[0] for c in chunks] == [2, 1]
    assert all(c["instruction_mode"] == "random" for c in chunks)
    assert [len(c) for c in split_inputs(torch.zeros(5, 1), 2)] == [2, 2, 1]
    with pytest.raises(ValueError, match="differ"):
        split_inputs({"a": [1, 2], "b": [1]}, 1)


def test_mapping_inputs_reach_the_embed_function_per_chunk():
    model = make_model().eval()
    queries, candidates, kw = make_batch()
    seen = []

    def embed(chunk):
        seen.append(len(chunk["x"]))
        return model(chunk["x"])

    GradCache(embed, embed, LOSS, 4).step({"x": queries}, {"x": candidates}, **kw)
    assert seen == [4, 2, 4, 4, 4, 4, 2] * 2  # first pass, then the re-run


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_dropout_is_replayed():
    queries, candidates, kw = make_batch()
    queries, candidates = queries.cuda(), candidates.cuda()
    kw = {k: v.cuda() for k, v in kw.items()}
    model = make_model().cuda()
    torch.manual_seed(11)
    plain_step(model, queries, candidates, kw, 3)
    expected = grads(model)
    model = make_model().cuda()
    torch.manual_seed(11)
    cached_step(model, queries, candidates, kw, 3)
    for got, want in zip(grads(model), expected):
        assert torch.allclose(got, want, atol=1e-5)
