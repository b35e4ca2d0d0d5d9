"""Hybrid search: BM25 over candidate texts fused with the dense ranking (RRF and weighted sum)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("bm25s", reason="hybrid search is an optional extra: pip install 'mmembed[hybrid]'")

from mmembed.cli.main import main  # noqa: E402
from mmembed.errors import ConfigError  # noqa: E402
from mmembed.index.base import SearchResult  # noqa: E402
from mmembed.index.hybrid import RRF_K, BM25Index, fuse  # noqa: E402
from mmembed.retrieval import Retriever  # noqa: E402


def _result(rows):
    k = max(len(r) for r in rows)
    ids = np.full((len(rows), k), None, dtype=object)
    scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for i, row in enumerate(rows):
        for j, (d, s) in enumerate(row):
            ids[i, j], scores[i, j] = d, s
    return SearchResult(ids, scores)


def test_rrf_by_hand():
    dense = _result([[("a", 0.9), ("b", 0.8), ("c", 0.1)]])
    sparse = _result([[("c", 12.0), ("a", 3.0)]])
    ids, scores = fuse(dense, sparse, 3, "rrf")
    expected = {"a": 1 / (RRF_K + 1) + 1 / (RRF_K + 2), "c": 1 / (RRF_K + 3) + 1 / (RRF_K + 1), "b": 1 / (RRF_K + 2)}
    assert list(ids[0]) == sorted(expected, key=expected.get, reverse=True)
    np.testing.assert_allclose(scores[0], sorted(expected.values(), reverse=True), rtol=1e-6)


def test_weighted_by_hand_and_ties_by_id():
    dense = _result([[("a", 1.0), ("b", 0.5), ("c", 0.0)]])
    sparse = _result([[("c", 8.0), ("b", 4.0), ("a", 0.0)]])
    ids, scores = fuse(dense, sparse, 3, "weighted", dense_weight=0.5)
    # a: 0.5*1 + 0.5*0 = 0.5; b: 0.5*0.5 + 0.5*0.5 = 0.5; c: 0 + 0.5 = 0.5 -> a three-way tie: id descending
    assert list(ids[0]) == ["c", "b", "a"]
    np.testing.assert_allclose(scores[0], [0.5, 0.5, 0.5], rtol=1e-6)
    ids, _ = fuse(dense, sparse, 2, "weighted", dense_weight=1.0)
    assert list(ids[0]) == ["a", "b"]
    with pytest.raises(ConfigError, match="hybrid must be one of rrf, weighted, bm25"):
        fuse(dense, sparse, 2, "max")


def test_bm25_ranks_by_shared_terms_and_respects_the_mask():
    index = BM25Index(["1:0", "1:1", "1:2", "1:3"], ["red apple pie", "green apple", None, "blue sky"])
    ids, scores = index.search(["apple pie", "nothing matches", None], 3)
    assert list(ids[0][:2]) == ["1:0", "1:1"] and ids[0][2] is None
    assert all(d is None for d in ids[1]) and all(d is None for d in ids[2])
    masked, _ = index.search(["apple pie"], 3, allowed=np.array([False, True, True, True]))
    assert list(masked[0][:1]) == ["1:1"] and masked[0][1] is None


def test_retriever_and_cli_hybrid(toy_dir, toy_encoder, tmp_path, monkeypatch, capsys):
    pool = toy_dir / "cand_pool/global/mbeir_union_test_cand_pool.jsonl"
    retriever = Retriever.build(toy_encoder, pool, tmp_path / "idx", encoder_spec="toy", show_progress=False)
    dense = retriever.search("a square", k=24)
    fused = retriever.search("a square", k=24, hybrid="rrf")
    # every text candidate says "square": BM25 lifts all of them above the image candidates
    texts = [h.id for h in fused if h.candidate.text]
    assert [h.id for h in fused[:len(texts)]] == texts and len(texts) < len(dense)
    assert fused[0].score >= fused[-1].score
    only_images = retriever.search("a square", k=5, hybrid="weighted", modality="image")
    assert only_images and all(h.candidate.text is None for h in only_images)
    with pytest.raises(ConfigError, match="hybrid must be one of"):
        retriever.search("a square", hybrid="sum")
    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec, **kw: toy_encoder)
    assert main(["search", str(tmp_path / "idx"), "--text", "a blue square", "--hybrid", "rrf", "-k", "2"]) == 0
    assert "a blue square" in capsys.readouterr().out.splitlines()[0]


def test_bm25_mode_is_the_sparse_list_alone():
    dense = _result([[("a", 0.9), ("b", 0.8)]])
    sparse = _result([[("c", 2.0), ("b", 1.0)]])
    ids, scores = fuse(dense, sparse, 2, "bm25")
    assert list(ids[0]) == ["c", "b"] and list(scores[0]) == [2.0, 1.0]
