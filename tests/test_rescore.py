"""index build --dims D --rescore: a first pass over renormalised prefixes, rescored with the full vectors from disk."""

from __future__ import annotations

import numpy as np
import pytest

from mmembed.cli.main import main
from mmembed.errors import ConfigError
from mmembed.index import FaissIndex, load_index
from mmembed.index.filters import search_allowed
from mmembed.index.rescore import RescoredIndex, prefix
from mmembed.retrieval import Retriever

DIM, SHORT, N = 32, 8, 600


def _matryoshka_like(n: int, seed: int) -> np.ndarray:
    """Vectors whose leading coordinates carry most of the signal, as a Matryoshka model's do."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, DIM)) * np.linspace(3.0, 0.5, DIM)).astype(np.float32)


def _build(vectors, ids, depth, tmp_path, rescore=True):
    chunks = ((ids[s:s + 128], vectors[s:s + 128]) for s in range(0, len(ids), 128))
    return RescoredIndex.build(chunks, count=len(ids), dim=DIM, short_dim=SHORT, rescore=rescore, depth=depth,
                               workdir=tmp_path)


def test_rescoring_every_candidate_is_exact_and_a_short_depth_recalls_most(tmp_path):
    vectors, queries = _matryoshka_like(N, 0), _matryoshka_like(20, 1)
    ids = [f"9:{i}" for i in range(N)]
    exact = FaissIndex(DIM)
    exact.add(ids, vectors)
    want_ids, want_scores = exact.search(queries, 10)
    full = _build(vectors, ids, N, tmp_path)
    got_ids, got_scores = full.search(queries, 10)
    assert (got_ids == want_ids).all()
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    shallow = _build(vectors, ids, 50, tmp_path)
    shallow_ids, _ = shallow.search(queries, 10)
    first_only = _build(vectors, ids, 0, tmp_path, rescore=False)
    short_ids, short_scores = first_only.search(queries, 10)

    def recall(found):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, want_ids)])

    assert recall(shallow_ids) > max(0.7, recall(short_ids) + 0.1), (recall(shallow_ids), recall(short_ids))
    short_exact = FaissIndex(SHORT)
    short_exact.add(ids, prefix(vectors, SHORT))
    assert (short_ids == short_exact.search(prefix(queries, SHORT), 10).ids).all()
    assert shallow.memory_bytes == N * SHORT * 4  # the searched index holds the prefixes only
    mask = np.arange(N) % 3 == 0
    filtered = search_allowed(full, queries, 5, mask).ids
    allowed = {d for d, m in zip(ids, mask) if m}
    full_ranking = exact.search(queries, N).ids
    assert [list(r) for r in filtered] == [[d for d in row if d in allowed][:5] for row in full_ranking]


def test_save_load_round_trip(tmp_path):
    vectors, queries = _matryoshka_like(N, 2), _matryoshka_like(5, 3)
    ids = [f"9:{i}" for i in range(N)]
    index = _build(vectors, ids, 40, tmp_path)
    index.save(tmp_path / "saved")
    loaded = load_index(tmp_path / "saved", expected_dim=DIM)
    assert isinstance(loaded, RescoredIndex) and loaded.depth == 40 and loaded.short_dim == SHORT
    for a, b in zip(index.search(queries, 7), loaded.search(queries, 7)):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "saved" / "full.npy").write_bytes(b"broken")
    with pytest.raises(Exception, match="full.npy: the full vectors are missing or unreadable"):
        load_index(tmp_path / "saved")
    with pytest.raises(ConfigError, match="--dims must be between 1 and the embeddings' dimension 32"):
        RescoredIndex.build(iter([]), count=0, dim=DIM, short_dim=DIM)


def test_cli_index_build_dims_rescore_and_search(toy_dir, toy_encoder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec, **kw: toy_encoder)
    assert main(["encode", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "emb")]) == 0
    assert main(["index", "build", str(toy_dir), "--from-embeddings", str(tmp_path / "emb"), "--dims", "16",
                 "--rescore", "--rescore-depth", "4", "--out", str(tmp_path / "idx")]) == 0
    retriever = Retriever.load(tmp_path / "idx", encoder=toy_encoder)
    assert isinstance(retriever.index, RescoredIndex) and retriever.index.short_dim == 16
    hits = retriever.search("blue colour", k=3)
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
    exact = Retriever.build(toy_encoder, toy_dir / "cand_pool/global/mbeir_union_test_cand_pool.jsonl",
                            tmp_path / "exact", encoder_spec="toy", show_progress=False)
    # scores of the rescored hits are the full-dimension cosines (float16 storage: 1e-3)
    exact_scores = {h.id: h.score for h in exact.search("blue colour", k=12)}
    assert all(abs(exact_scores[h.id] - h.score) < 2e-3 for h in hits)
    capsys.readouterr()
    assert main(["index", "build", str(toy_dir), "--from-embeddings", str(tmp_path / "emb"), "--rescore",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--rescore and --rescore-depth go with --dims D" in capsys.readouterr().err
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--dims", "8", "--out", str(tmp_path / "b")]) == 2
    assert "give --from-embeddings" in capsys.readouterr().err
