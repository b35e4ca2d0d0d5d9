"""The Milvus backend (through Milvus Lite): parity with exact FAISS, save/load, the same refusals, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the Milvus backend is an optional extra: pip install 'mmembed[milvus]'")
pytest.importorskip("milvus_lite", reason="Milvus Lite is an optional extra: pip install 'mmembed[milvus]'")

from mmembed.cli.main import main  # noqa: E402
from mmembed.errors import ConfigError, DataError, IndexMismatchError  # noqa: E402
from mmembed.index import FaissIndex, VectorIndex, load_index  # noqa: E402
from mmembed.index.milvus_index import MilvusIndex, choose_index  # noqa: E402
from mmembed.retrieval import Retriever  # noqa: E402

DIM = 32


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, DIM))
    return (centers[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, DIM))).astype(np.float32) * 2


def _ids(n: int) -> list[str]:
    return [f"9:{i}" for i in range(n)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same 3,000 vectors in exact FAISS and in Milvus (saved, then reloaded)."""
    data = _clustered(3000)
    faiss_index = FaissIndex(DIM, encoder_id="enc")
    faiss_index.add(_ids(3000), data)
    milvus = MilvusIndex(DIM, encoder_id="enc")
    for start in range(0, 3000, 1000):  # several adds, as from chunks
        milvus.add(_ids(3000)[start:start + 1000], data[start:start + 1000])
    directory = tmp_path_factory.mktemp("milvus") / "idx"
    milvus.save(directory)
    milvus.close()
    return faiss_index, directory


def test_milvus_answers_the_same_top_k_as_exact_faiss(pair):
    faiss_index, directory = pair
    milvus = load_index(directory, expected_dim=DIM, expected_encoder_id="enc")
    assert isinstance(milvus, MilvusIndex) and isinstance(milvus, VectorIndex)
    assert milvus.index_type == "FLAT" and len(milvus) == 3000
    queries = _clustered(40, seed=1)
    want, got = faiss_index.search(queries, 10), milvus.search(queries, 10)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    same = got.ids == want.ids
    # where ids differ, the scores tie (the only allowed difference in order)
    assert np.allclose(got.scores[~same], want.scores[~same], atol=1e-5)
    assert same.mean() > 0.99
    assert got.scores.dtype == np.float32 and got.ids.dtype == object
    milvus.close()


def test_k_beyond_the_index_and_empty_queries(pair):
    _, directory = pair
    milvus = MilvusIndex.load(directory)
    ids, scores = milvus.search(_clustered(2, seed=3), 5000)
    assert ids.shape == scores.shape == (2, 3000)
    assert all(len(set(row)) == 3000 for row in ids.tolist())
    assert milvus.search(np.zeros((0, DIM), np.float32), 3).ids.shape == (0, 3)
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        milvus.search(_clustered(1), 0)
    milvus.close()


def test_the_same_refusals_as_faiss(pair, tmp_path):
    _, directory = pair
    with pytest.raises(IndexMismatchError, match="32-dimensional vectors but 64 were expected"):
        load_index(directory, expected_dim=64)
    with pytest.raises(IndexMismatchError, match="built with encoder 'enc' but encoder 'other'"):
        load_index(directory, expected_encoder_id="other")
    index = MilvusIndex(DIM)
    index.add(["a", "b"], _clustered(2))
    with pytest.raises(DataError, match="'a'.*already in the index"):
        index.add(["a"], _clustered(1))
    bad = _clustered(2)
    bad[1, 3] = np.nan
    with pytest.raises(DataError, match="'d'.*NaN"):
        index.add(["c", "d"], bad)
    with pytest.raises(IndexMismatchError, match=r"\(n, 32\)"):
        index.add(["e"], np.zeros((1, 8), np.float32))
    assert len(index) == 2
    # ids of another order: the fingerprint saved with the collection no longer matches
    index.save(tmp_path / "small")
    index.close()
    ids_path = tmp_path / "small" / "ids.json"
    ids_path.write_text(json.dumps(["b", "a"]))
    with pytest.raises(IndexMismatchError, match="ids are not those saved"):
        load_index(tmp_path / "small")


def test_index_type_is_chosen_by_size():
    assert choose_index(64_858, 384)[0] == "FLAT"
    assert choose_index(1_000_000, 384)[0] == "HNSW"
    kind, params, _ = choose_index(5_609_079, 4096)
    assert kind == "IVF_SQ8" and params["nlist"] > 4096


def test_cli_builds_a_milvus_index_that_searches_like_faiss(toy_dir, toy_encoder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec, **kw: toy_encoder)
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "f")]) == 0
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "m"),
                 "--backend", "milvus"]) == 0
    manifest = json.loads((tmp_path / "m" / "vectors" / "manifest.json").read_text())
    assert manifest["engine"] == "milvus" and manifest["metric"] == "ip"
    assert (tmp_path / "m" / "vectors" / "milvus.db").is_dir()
    assert main(["encode", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "e"), "--dtype", "float32"]) == 0
    assert main(["index", "build", str(toy_dir), "--from-embeddings", str(tmp_path / "e"), "--out",
                 str(tmp_path / "me"), "--backend", "milvus"]) == 0
    capsys.readouterr()
    answers = []
    for name in ("f", "m", "me"):
        retriever = Retriever.load(tmp_path / name, encoder=toy_encoder)
        answers.append([[(h.id, round(h.score, 5)) for h in retriever.search(text, k=12)]
                        for text in ("blue square", "green", "the red one")])
        if isinstance(retriever.index, MilvusIndex):
            retriever.index.close()  # Milvus Lite: release the database for the CLI search below
    assert answers[0] == answers[1] == answers[2]
    assert main(["search", str(tmp_path / "m"), "--text", "green", "-k", "2"]) == 0
    assert "green" in capsys.readouterr().out
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "x"),
                 "--milvus-index", "HNSW"]) == 2
    assert "need --backend milvus" in capsys.readouterr().err
