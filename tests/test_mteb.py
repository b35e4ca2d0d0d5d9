"""mmembed.mteb: an mmembed model through mteb's own retrieval evaluation, scored like mmembed's evaluation."""

from __future__ import annotations

import sys

import numpy as np
import pytest

mteb = pytest.importorskip("mteb")

import mmembed  # noqa: E402
from mmembed.data.bundled import build  # noqa: E402
from mmembed.errors import MissingDependencyError  # noqa: E402
from mmembed.eval.mbeir_runner import EvalConfig, run_evaluation  # noqa: E402
from mmembed.mteb import MTEBModel, batch_items, mbeir_task  # noqa: E402

#: mteb's score names for mmembed's metrics (mteb rounds its scores to 5 decimals).
SAME_METRIC = {"hit@5": "hit_rate_at_5", "recall@5": "recall_at_5", "ndcg@10": "ndcg_at_10", "mrr@10": "mrr_at_10"}
MAX_QUERIES = 40


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return build(tmp_path_factory.mktemp("bundled") / "bench", subset=True).root


@pytest.fixture(scope="module")
def embedder():
    return mmembed.load("cpu-default-stage3")


@pytest.mark.slow
@pytest.mark.parametrize("task, instructions", [
    ("emoji_task0", "fixed"),   # text -> image
    ("emoji_task3", "fixed"),   # image -> text
    ("emoji_task1", "fixed"),   # text -> text
    ("emoji_task8", "random"),  # image+text -> image+text, one drawn instruction per query
])
def test_mteb_evaluation_scores_what_mmembed_evaluation_scores(bench, embedder, task, instructions):
    mteb_task = mbeir_task(bench, task, instructions=instructions, max_queries=MAX_QUERIES)
    mteb_task.load_data()
    num_queries = len(mteb_task.dataset["default"]["test"]["queries"])  # mteb drops the data after evaluating
    result = mteb.evaluate(MTEBModel(embedder), [mteb_task], cache=None, show_progress_bar=False)
    (task_result,) = result.task_results
    mteb_scores = task_result.scores["test"][0]

    config = EvalConfig(pools=["local"], instruction_modes=[instructions], tasks=[task], max_queries=MAX_QUERIES,
                        extra_metrics=["recall@5", "ndcg@10", "mrr@10"], show_progress=False)
    (own,) = run_evaluation(embedder.encoder, bench, config).results
    assert own.num_queries == num_queries > 20  # the same queries
    for ours, theirs in SAME_METRIC.items():
        assert mteb_scores[theirs] == pytest.approx(own.scores[ours], abs=1e-5), (ours, theirs)
    assert own.scores["ndcg@10"] > 0  # a real ranking, not two empty ones


@pytest.fixture(scope="module")
def text_task(bench):
    return mbeir_task(bench, "emoji_task1", max_queries=3)


def test_encode_follows_the_prompt_type_and_the_task_instruction(embedder, text_task):
    model = MTEBModel(embedder)
    assert isinstance(model, mteb.models.EncoderProtocol)
    metadata = text_task.metadata
    batches = [{"id": ["a", "b"], "text": ["coeur rouge", "soleil"]}, {"id": ["c"], "text": ["lune"]}]
    texts = ["coeur rouge", "soleil", "lune"]
    queries = model.encode(batches, task_metadata=metadata, hf_split="test", hf_subset="default",
                           prompt_type=mteb.types.PromptType.query)
    documents = model.encode(batches, task_metadata=metadata, hf_split="test", hf_subset="default",
                             prompt_type=mteb.types.PromptType.document)
    np.testing.assert_allclose(queries, embedder.encode_queries(texts, instruction=metadata.prompt["query"]),
                               atol=1e-6)
    np.testing.assert_allclose(documents, embedder.encode_candidates(texts), atol=1e-6)
    symmetric = model.encode(batches, task_metadata=metadata, hf_split="test", hf_subset="default")
    np.testing.assert_allclose(symmetric, queries, atol=1e-6)  # no prompt type: queries, with the query prompt


def test_a_per_task_mapping_and_per_query_instructions_take_precedence(embedder, text_task):
    metadata = text_task.metadata
    model = MTEBModel(embedder, instructions={metadata.name: "Find it."})
    batch = {"id": ["a"], "text": ["soleil"]}
    mapped = model.encode([batch], task_metadata=metadata, hf_split="test", hf_subset="default",
                          prompt_type=mteb.types.PromptType.query)
    np.testing.assert_allclose(mapped, embedder.encode_queries(["soleil"], instruction="Find it."), atol=1e-6)
    # mteb appends a query's own instruction to "text" and keeps the raw query in "query".
    with_own = {"id": ["a"], "text": ["soleil Name it."], "query": ["soleil"], "instruction": ["Name it."]}
    own = model.encode([with_own], task_metadata=metadata, hf_split="test", hf_subset="default",
                       prompt_type=mteb.types.PromptType.query)
    np.testing.assert_allclose(own, embedder.encode_queries(["soleil"], instruction="Name it."), atol=1e-6)


def test_batch_items_read_text_images_and_ids(embedder):
    from PIL import Image

    image = Image.new("RGB", (8, 8), "red")
    items = batch_items({"id": ["d1", "d2"], "text": ["", "a name"], "image": [image, None]}, "here")
    assert [(it.id, it.text, it.image is not None) for it in items] == [("d1", None, True), ("d2", "a name", False)]
    with pytest.raises(mmembed.MMEmbedError, match="without a text or image column"):
        batch_items({"id": ["x"]}, "here")


def test_model_meta_names_the_model(embedder):
    meta = MTEBModel(embedder).mteb_model_meta
    assert meta.name == "mmembed/cpu-default-stage3"
    assert meta.embed_dim == embedder.dim and set(meta.modalities) == {"text", "image"}


def test_without_mteb_the_module_says_how_to_install_it(monkeypatch):
    for name in [m for m in sys.modules if m == "mteb" or m.startswith("mteb.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "mmembed.mteb")
    with pytest.raises(MissingDependencyError, match="pip install mteb"):
        import mmembed.mteb  # noqa: F401
