"""Metadata filters: parsing, the clear errors, and filtered search equal to filtering the full ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmembed.cli.main import main
from mmembed.errors import ConfigError
from mmembed.index import FaissIndex
from mmembed.index.exact import ExactIndex
from mmembed.index.filters import CandidateFields, parse_filter, search_allowed
from mmembed.retrieval import Retriever
from mmembed.types import Candidate, Modality

DIM = 16
N = 400


def _candidates() -> list[Candidate]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(N):
        dataset = ("10", "11", "12")[i % 3]
        modality = (Modality.TEXT, Modality.IMAGE, Modality.IMAGE_TEXT)[(i // 3) % 3]
        content = {"year": int(rng.integers(1990, 2020)), "source": ("wiki", "web")[i % 2]} if i % 5 else None
        out.append(Candidate(f"{dataset}:{i}", None if modality is Modality.IMAGE else f"text {i}",
                             None if modality is Modality.TEXT else f"img/{i}.png", modality,
                             json.dumps(content) if content else ("plain words" if i % 10 == 0 else None)))
    return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    queries = rng.standard_normal((7, DIM)).astype(np.float32)
    candidates = _candidates()
    return candidates, vectors, queries


FILTERS = [
    'dataset == "10"',
    "dataset == 11",
    'modality == "image"',
    'modality in ["image", "image,text"] and dataset != "12"',
    'year >= 2005 and source == "wiki"',
    'not (year < 2000) or dataset == "12"',
    'source not in ["web"]',
    "2000 < year",
]


def _filter_after_rank(index, queries, k, mask, ids):
    """The reference: rank every candidate, keep the allowed ones, cut at k."""
    allowed = {d for d, m in zip(ids, mask) if m}
    full_ids, full_scores = index.search(queries, len(index))
    rows = []
    for row_ids, row_scores in zip(full_ids, full_scores):
        kept = [(d, s) for d, s in zip(row_ids, row_scores) if d in allowed][:k]
        rows.append(kept)
    return rows


@pytest.mark.parametrize("engine", ["faiss", "exact"])
@pytest.mark.parametrize("where", FILTERS)
def test_filtered_search_equals_filter_after_rank(data, engine, where):
    candidates, vectors, queries = data
    ids = [c.did for c in candidates]
    if engine == "faiss":
        index = FaissIndex(DIM)
        index.add(ids, vectors)
    else:
        index = ExactIndex.from_vectors(ids, vectors)
    fields = CandidateFields.of(ids, {c.did: c for c in candidates})
    mask = fields.mask(fields.parse(where))
    assert 0 < mask.sum() < N  # the filter does restrict
    got_ids, got_scores = search_allowed(index, queries, 10, mask)
    expected = _filter_after_rank(index, queries, 10, mask, ids)
    for row_ids, row_scores, ref in zip(got_ids, got_scores, expected):
        assert list(row_ids) == [d for d, _ in ref]
        np.testing.assert_allclose(row_scores, [s for _, s in ref], rtol=1e-5, atol=1e-6)


def test_field_semantics(data):
    candidates, _, _ = data
    by_id = {c.did: c for c in candidates}
    fields = CandidateFields.of(list(by_id), by_id)
    mask = fields.mask(fields.parse('dataset == "10"'))
    assert [d for d, m in zip(by_id, mask) if m] == [d for d in by_id if d.startswith("10:")]
    images = fields.mask(fields.parse(None, modality="image"))
    assert all(by_id[d].modality is Modality.IMAGE for d, m in zip(by_id, images) if m) and images.sum() > 0
    years = fields.mask(fields.parse("year >= 2010"))
    # records without the field (no or non-JSON src_content) match no comparison on it, not even !=
    no_year = fields.mask(fields.parse("year != 1"))
    assert no_year.sum() == sum(1 for c in candidates if c.src_content and c.src_content.startswith("{"))
    assert all(json.loads(by_id[d].src_content)["year"] >= 2010 for d, m in zip(by_id, years) if m)
    assert "year" in fields.names and "source" in fields.names


@pytest.mark.parametrize(("where", "message"), [
    ('colour == "red"', "unknown field 'colour'; the candidates have the fields dataset, id, modality, source, year"),
    ('dataset = "10"', "not a valid expression"),
    ("dataset == red", "not two names \\('dataset' and 'red'\\); quote strings"),
    ("dataset == [1]", "field 'dataset' is compared with '\\[1\\]', which is not a string"),
    ("dataset", "'dataset' is not a comparison"),
    ('dataset == "1" == dataset', "chained comparisons"),
    ("dataset in 10", "field 'dataset': 'in' takes a list"),
    ("dataset == year", "compare a field with a value"),
    ("dataset is None", "operator Is is not supported"),
    ("", "non-empty expression"),
])
def test_bad_filters_name_the_problem(data, where, message):
    candidates, _, _ = data
    fields = CandidateFields.of([c.did for c in candidates], {c.did: c for c in candidates})
    with pytest.raises(ConfigError, match=message):
        fields.parse(where)


def test_unknown_modality_is_named(data):
    candidates, _, _ = data
    fields = CandidateFields.of([c.did for c in candidates], {c.did: c for c in candidates})
    with pytest.raises(ConfigError, match="field 'modality': unknown modality 'video'"):
        fields.parse(None, modality="video")


def test_parse_filter_without_known_fields():
    filt = parse_filter('a == 1 and (b in ["x", "y"] or not c < 2.5)')
    assert filt.fields == {"a", "b", "c"}


def test_empty_filter_result_and_approximate_engine(data):
    candidates, vectors, queries = data
    ids = [c.did for c in candidates]
    index = FaissIndex(DIM, "HNSW16")
    index.add(ids, vectors)
    fields = CandidateFields.of(ids, {c.did: c for c in candidates})
    none = fields.mask(fields.parse('dataset == "99"'))
    assert search_allowed(index, queries, 5, none).ids.shape == (7, 0)
    mask = fields.mask(fields.parse('modality == "text"'))
    got = search_allowed(index, queries, 5, mask).ids
    allowed = {d for d, m in zip(ids, mask) if m}
    assert all(d in allowed for d in got.ravel() if d is not None)


def test_retriever_filters_and_cli(toy_dir, toy_encoder, tmp_path, monkeypatch, capsys):
    pool = toy_dir / "cand_pool/global/mbeir_union_test_cand_pool.jsonl"
    retriever = Retriever.build(toy_encoder, pool, tmp_path / "idx", encoder_spec="toy", show_progress=False)
    unfiltered = retriever.search("blue colour", k=24)
    images = retriever.search("blue colour", k=24, modality="image")
    assert images and all(h.candidate.modality is Modality.IMAGE for h in images)
    assert [h.id for h in images] == [h.id for h in unfiltered if h.candidate.modality is Modality.IMAGE]
    assert [h.rank for h in images] == list(range(1, len(images) + 1))
    one = retriever.search("blue colour", k=3, where=f'id == "{images[-1].id}"')
    assert [h.id for h in one] == [images[-1].id]
    with pytest.raises(ConfigError, match="unknown field 'colour'"):
        retriever.search("blue", where='colour == "blue"')

    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec, **kw: toy_encoder)
    assert main(["search", str(tmp_path / "idx"), "--text", "blue colour", "--modality", "image", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(" image " in line for line in lines)
    assert main(["search", str(tmp_path / "idx"), "--text", "blue", "--where", 'dataset == "7"', "-k", "3"]) == 0
    assert capsys.readouterr().out.strip() == ""  # the toy dataset's id is not 7: nothing passes
    assert main(["search", str(tmp_path / "idx"), "--text", "blue", "--where", "shade == 1"]) == 2
    assert "unknown field 'shade'" in capsys.readouterr().err



def test_milvus_filtered_search_equals_filter_after_rank(data, tmp_path):
    pytest.importorskip("pymilvus", reason="the Milvus backend is an optional extra")
    pytest.importorskip("milvus_lite", reason="Milvus Lite is an optional extra")
    from mmembed.index.milvus_index import MilvusIndex

    candidates, vectors, queries = data
    ids = [c.did for c in candidates]
    milvus, exact = MilvusIndex(DIM), FaissIndex(DIM)
    milvus.add(ids, vectors)
    exact.add(ids, vectors)
    fields = CandidateFields.of(ids, {c.did: c for c in candidates})
    try:
        for where in [*FILTERS[:5], 'dataset != "10"']:  # the last keeps most rows: an "id not in" expression
            mask = fields.mask(fields.parse(where))
            got_ids, got_scores = search_allowed(milvus, queries, 10, mask)
            for row_ids, row_scores, ref in zip(got_ids, got_scores, _filter_after_rank(exact, queries, 10, mask, ids)):
                assert list(row_ids) == [d for d, _ in ref]
                np.testing.assert_allclose(row_scores, [s for _, s in ref], rtol=1e-4, atol=1e-5)
    finally:
        milvus.close()


def test_milvus_expression_is_the_shorter_of_in_and_not_in():
    from mmembed.index.filters import milvus_expression

    ids = ["1:a", "1:b", "1:c"]
    assert milvus_expression(ids, np.array([True, False, False])) == 'id in ["1:a"]'
    assert milvus_expression(ids, np.array([True, True, False])) == 'id not in ["1:c"]'
