"""InfoNCE against hand-computed values, and the id-based masking of in-batch false negatives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmembed.losses import (
    DEFAULT_TEMPERATURE,
    PAD_KEY,
    InfoNCELoss,
    false_negative_mask,
    hash_ids,
    info_nce,
    pack_key_sets,
    targets_and_mask,
)


def test_zero_embeddings_give_log_of_the_number_of_candidates():
    for n in (1, 2, 7, 33):
        loss = info_nce(torch.zeros(3, 4), torch.zeros(n, 4), torch.zeros(3, dtype=torch.long))
        assert loss.item() == pytest.approx(math.log(n), abs=1e-6)


def test_hand_computed_value_with_temperature():
    q = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # cosine similarities 1, 0, -1 divided by 0.5 -> logits 2, 0, -2; target is the first.
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert info_nce(q, c, torch.tensor([0]), temperature=0.5).item() == pytest.approx(expected, rel=1e-6)
    # Target the orthogonal candidate instead.
    expected = -math.log(1 / (math.exp(2) + 1 + math.exp(-2)))
    assert info_nce(q, c, torch.tensor([1]), temperature=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_normalize_makes_the_score_a_cosine_and_can_be_switched_off():
    q = torch.tensor([[3.0, 0.0]])
    c = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    cosine = info_nce(q, c, torch.tensor([0]), temperature=1.0)
    assert cosine.item() == pytest.approx(-math.log(math.e / (math.e + 1)), rel=1e-6)
    raw = info_nce(q, c, torch.tensor([0]), temperature=1.0, normalize=False)  # logits 6, 0
    assert raw.item() == pytest.approx(-math.log(math.exp(6) / (math.exp(6) + 1)), abs=1e-6)


def test_masking_removes_exactly_one_term():
    torch.manual_seed(0)
    q, c = torch.randn(3, 8), torch.randn(7, 8)
    target = torch.tensor([0, 1, 2])
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[1, 5] = True
    per_query = info_nce(q, c, target, mask, reduction="none")
    without = info_nce(q[1:2], c[[0, 1, 2, 3, 4, 6]], torch.tensor([1]), reduction="none")
    assert per_query[1].item() == pytest.approx(without.item(), rel=1e-6)
    unmasked = info_nce(q, c, target, reduction="none")
    assert torch.equal(per_query[[0, 2]], unmasked[[0, 2]])
    assert per_query[1] < unmasked[1]


def test_masking_the_target_is_refused():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[1, 1] = True
    with pytest.raises(ValueError, match="own target"):
        info_nce(torch.randn(2, 4), torch.randn(3, 4), torch.tensor([0, 1]), mask)


def test_default_temperature_is_in_the_published_range():
    assert 0.02 <= DEFAULT_TEMPERATURE <= 0.05
    q, c = torch.randn(2, 4), torch.randn(5, 4)
    assert info_nce(q, c, torch.tensor([0, 1])) == info_nce(q, c, torch.tensor([0, 1]), temperature=0.05)


def test_logits_are_float32_for_half_precision_inputs():
    q, c = torch.randn(2, 4).bfloat16(), torch.randn(3, 4).bfloat16()
    assert info_nce(q, c, torch.tensor([0, 1])).dtype == torch.float32


def test_gradient_matches_softmax_minus_one_hot():
    q = F.normalize(torch.randn(1, 4), dim=-1).requires_grad_()
    c = F.normalize(torch.randn(3, 4), dim=-1)
    info_nce(q, c, torch.tensor([2]), temperature=0.1, normalize=False).backward()
    p = torch.softmax(q.detach() @ c.T / 0.1, dim=-1)
    expected = ((p - F.one_hot(torch.tensor([2]), 3)) @ c) / 0.1
    assert torch.allclose(q.grad, expected, atol=1e-6)


def test_hash_ids_is_stable_distinct_and_never_the_pad_key():
    keys = hash_ids(["9:1", "9:2", "msmarco:1", "9:1"])
    assert keys.dtype == torch.long and keys[0] == keys[3] and len(set(keys[:3].tolist())) == 3
    assert (keys != PAD_KEY).all() and (keys > 0).all()
    assert torch.equal(hash_ids(["9:1"]), hash_ids(["9:1"]))  # no per-process salt (unlike hash())


def test_masks_built_from_ids():
    # q0's positives are a and b; q1's are b. Candidates: a (q0's slot), b (q1's slot), c, a again.
    target, mask = targets_and_mask([{"a", "b"}, {"b"}], ["a", "b", "c", "a"], [0, 1])
    assert mask.tolist() == [[False, True, False, True],   # b is q0's positive too; the second a as well
                             [False, False, False, False]]
    assert target.tolist() == [0, 1]


def test_pack_key_sets_pads_ragged_sets():
    packed = pack_key_sets([{"a"}, {"a", "b", "c"}, set()])
    assert packed.shape == (3, 3)
    assert (packed[0, 1:] == PAD_KEY).all() and (packed[2] == PAD_KEY).all()
    mask = false_negative_mask(packed, hash_ids(["c", "a"]), torch.tensor([1, 0, 1]))
    # q1's target is slot 0 ("c"); its other positive "a" in slot 1 is masked.
    assert mask.tolist() == [[False, False], [False, True], [False, False]]


def test_module_loss_equals_the_function_in_one_process():
    torch.manual_seed(1)
    q, c = torch.randn(3, 8), torch.randn(6, 8)
    target = torch.tensor([0, 1, 2])
    pos = pack_key_sets([{"p0", "p1"}, {"p1"}, {"p2"}])
    cand = hash_ids(["p0", "p1", "p2", "n0", "p1", "n2"])
    # q0: its other positive p1 (slots 1 and 4); q1: the second copy of its own positive (slot 4).
    expected_mask = torch.zeros(3, 6, dtype=torch.bool)
    expected_mask[0, 1] = expected_mask[0, 4] = expected_mask[1, 4] = True
    assert torch.equal(false_negative_mask(pos, cand, target), expected_mask)
    loss = InfoNCELoss(temperature=0.1)(q, c, target, pos, cand)
    assert loss.item() == pytest.approx(info_nce(q, c, target, expected_mask, 0.1).item(), rel=1e-6)
    with pytest.raises(ValueError, match="both"):
        InfoNCELoss()(q, c, target, pos, None)
