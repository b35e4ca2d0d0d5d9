"""VLMReranker on tiny random checkpoints of every supported family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmembed.encoders.base import Item
from mmembed.errors import ConfigError, DataError
from mmembed.rerank import RerankConfig, build_reranker
from mmembed.rerank.vlm import VLMReranker
from mmembed.testing.tiny_models import VLM_FAMILIES, build_tiny
from mmembed.types import Task

pytest.importorskip("num2words")  # the SmolVLM processor needs it


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {family: str(build_tiny(family, root / family)) for family in VLM_FAMILIES}


@pytest.fixture(scope="module")
def rerankers(tiny_dirs) -> dict[str, VLMReranker]:
    return {family: VLMReranker.from_pretrained(path, batch_size=4) for family, path in tiny_dirs.items()}


def noise(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


QUERY = Item("q", "a red dog on the street", noise(1))
MATES = [Item("m1", "two cats sitting on a table near a large tree in the city", noise(2)),
         Item("m2", None, noise(3, (40, 24))), Item("m3", "blue car")]
PAIR = Item("c", "a small dog", noise(4))


def manual_p_true(reranker: VLMReranker, query: Item, cand: Item) -> float:
    """P(True) from one unpadded forward pass, reading the last position's logits directly."""
    images = [im for im in (query.image, cand.image) if im is not None]
    inputs = reranker.prepare([reranker.prompt(query, cand)], [images])
    with torch.no_grad():
        logits = reranker.model(**inputs).logits[0, -1].float()
    tok = reranker.tokenizer
    ids = {w: [tok.convert_tokens_to_ids(t) for t in (w, "Ġ" + w)] for w in ("True", "False")}
    pos, neg = torch.logsumexp(logits[ids["True"]], 0), torch.logsumexp(logits[ids["False"]], 0)
    return float(torch.sigmoid(pos - neg))


@pytest.mark.parametrize("family", VLM_FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_p_true_is_read_at_the_answer_position_with_either_padding(rerankers, family, side):
    reranker = rerankers[family]
    reranker.padding_side = side
    try:
        batched = reranker.score_pairs([QUERY] * 4, [*MATES, PAIR])[-1]  # padded alongside longer mates
    finally:
        reranker.padding_side = "left"
    assert batched == pytest.approx(manual_p_true(reranker, QUERY, PAIR), abs=1e-5)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_a_pair_score_does_not_depend_on_its_batch_mates(rerankers, family):
    reranker = rerankers[family]
    alone = reranker.score_pairs([QUERY], [PAIR])[0]
    reranker.batch_size = 2
    try:
        for mates in (MATES[:1], MATES[1:], MATES):
            with_mates = reranker.score_pairs([QUERY] * (len(mates) + 1), [*mates, PAIR])[-1]
            assert with_mates == pytest.approx(alone, abs=1e-5)
    finally:
        reranker.batch_size = 4


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_both_images_reach_the_model(rerankers, family):
    reranker = rerankers[family]
    image_id = reranker.model.config.image_token_id
    one = reranker.prepare([reranker.prompt(Item("q", "a dog"), PAIR)], [[PAIR.image]])
    two = reranker.prepare([reranker.prompt(QUERY, PAIR)], [[QUERY.image, PAIR.image]])
    n_one = int((one["input_ids"] == image_id).sum())
    assert n_one > 0 and int((two["input_ids"] == image_id).sum()) == 2 * n_one
    base = reranker.score_pairs([QUERY], [PAIR])[0]
    other_query = Item("q", QUERY.text, noise(11))
    other_cand = Item("c", PAIR.text, noise(12))
    assert abs(reranker.score_pairs([other_query], [PAIR])[0] - base) > 1e-6
    assert abs(reranker.score_pairs([QUERY], [other_cand])[0] - base) > 1e-6


def test_every_task_type_gets_its_question_and_images(rerankers):
    reranker = rerankers["qwen2_vl"]
    for task_id in range(9):
        task = Task.from_id(task_id)
        query = Item("q", "query words" if task.query_modality.has_text else None,
                     noise(5) if task.query_modality.has_image else None)
        cand = Item("c", "candidate words" if task.cand_modality.has_text else None,
                    noise(6) if task.cand_modality.has_image else None)
        prompt = reranker.prompt(query, cand)
        question = reranker.templates[task_id].replace("{true}", "True").replace("{false}", "False")
        assert question in prompt
        expected_images = int(query.image is not None) + int(cand.image is not None)
        assert prompt.count("<|image_pad|>") == expected_images
        assert 0.0 < reranker.score_pairs([query], [cand])[0] < 1.0


def test_rerank_orders_by_p_true_and_fuses(rerankers):
    reranker = rerankers["idefics3"]
    cands = [*MATES, PAIR]
    raw = reranker.score_pairs([QUERY] * 4, cands)
    results = reranker.rerank(QUERY, cands, retrieval_scores=[4.0, 3.0, 2.0, 1.0])
    assert [r.id for r in results] == [cands[i].id for i in np.argsort(-raw, kind="stable")]
    assert [r.rerank_score for r in results] == pytest.approx(sorted(raw, reverse=True))


def test_empty_items_and_unsupported_settings_are_refused(rerankers, tiny_dirs):
    with pytest.raises(DataError, match="'empty'"):
        rerankers["llava_next"].score_pairs([QUERY], [Item("empty", "  ")])
    with pytest.raises(ConfigError, match="padding_side"):
        VLMReranker.from_pretrained(tiny_dirs["smolvlm"], padding_side="middle")


def test_build_reranker_picks_the_vlm_for_a_vlm_directory(tiny_dirs):
    reranker = build_reranker(RerankConfig(model=tiny_dirs["qwen2_5_vl"], top_k=3, batch_size=2))
    assert isinstance(reranker, VLMReranker) and reranker.top_k == 3
    assert reranker.reranker_id.startswith("vlm:qwen2_5_vl:")
    with pytest.raises(ConfigError, match="P\\(True\\)"):
        build_reranker(RerankConfig(model=tiny_dirs["qwen2_5_vl"], mode="query_likelihood"))
