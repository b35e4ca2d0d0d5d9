"""Evaluation at scale: streamed exact search under a memory limit, approximate indexes with their
recall, and precomputed queries (no encoder at all)."""

from __future__ import annotations

import json

import pytest
from toy import ToyEncoder

from mmembed.cli import common
from mmembed.cli.main import main
from mmembed.data.layout import MBEIRDirectory
from mmembed.embeddings import encode_pool
from mmembed.mining import MiningConfig, mine_mbeir
from mmembed.testing.synthetic import write_synthetic


@pytest.fixture
def synthetic(tmp_path):
    # float32 on disk, so the in-memory FAISS run reads the very same vectors
    return write_synthetic(tmp_path / "syn", candidates=20000, queries=300, dim=64, chunk_size=256,
                           dtype="float32", local_size=400, noise=2.5)


@pytest.fixture
def small(tmp_path):
    return write_synthetic(tmp_path / "small", candidates=4000, queries=100, dim=32, chunk_size=1024,
                           local_size=400, noise=1.5)


def _evaluate(synthetic, out, *extra):
    assert main(["evaluate", str(synthetic.root), "--embeddings", str(synthetic.embeddings), "--query-embeddings",
                 str(synthetic.queries), "--out", str(out), *extra]) == 0
    return json.loads((out / "results.json").read_text())


def _scores(results):
    return [(r["task"], r["pool"], r["instructions"], r["scores"], r["modality_error"]) for r in results["results"]]


def test_a_memory_limit_below_the_vectors_gives_the_in_memory_scores(synthetic, tmp_path):
    depth = ["--set", "depth=10"]
    in_memory = _evaluate(synthetic, tmp_path / "faiss", "--index", "faiss", *depth)  # FAISS Flat, whole pool
    limited = _evaluate(synthetic, tmp_path / "limited", "--memory-limit", "3.6MB", *depth)
    assert limited["search"]["memory_limit"] < 20000 * 64 * 4  # the vectors exceed the limit ...
    assert limited["search"]["exact_passes"] > 1  # ... and queries that needed more than one pass
    assert limited["search"]["planned_peak_bytes"] <= limited["search"]["memory_limit"]
    assert limited["search"]["vectors_read"] == 20000 * limited["search"]["exact_passes"]
    assert _scores(limited) == _scores(in_memory)
    assert limited["averages"] == in_memory["averages"]
    assert 0.2 < limited["averages"]["global/none"] < 0.9  # a ranking worth comparing
    assert main(["evaluate", str(synthetic.root), "--embeddings", str(synthetic.embeddings), "--query-embeddings",
                 str(synthetic.queries), "--memory-limit", "lots"]) == 2


@pytest.mark.parametrize("index", ["faiss-ivf", "milvus"])
def test_an_approximate_index_reports_its_recall_next_to_every_global_score(small, tmp_path, index, capsys):
    if index == "milvus":
        pytest.importorskip("pymilvus")
        pytest.importorskip("milvus_lite")
    results = _evaluate(small, tmp_path / index, "--index", index, "--set", "recall_sample=50")
    assert "index_recall@50 global/none" in capsys.readouterr().out  # the printed table shows it too
    for row in results["results"]:
        if row["pool"] == "global":
            assert row["index"] == index
            assert set(row["index_recall"]) == {"index_recall@10", "index_recall@50"}
            assert all(0.0 <= v <= 1.0 for v in row["index_recall"].values())
        else:
            assert row["index"] == "exact" and row["index_recall"] is None
    if index == "faiss-ivf":  # 4,000 random vectors probed 1 list in 8: visibly approximate
        assert min(r["index_recall"]["index_recall@50"] for r in results["results"] if r["pool"] == "global") < 1.0


def test_precomputed_queries_reproduce_the_encoder_in_the_loop_results(toy_dir, tmp_path, monkeypatch):
    encoder = ToyEncoder()
    monkeypatch.setattr(common, "load_encoder_arg", lambda *args, **kwargs: encoder)
    pool = MBEIRDirectory(toy_dir).global_pool("test")
    encode_pool(encoder, pool, tmp_path / "emb", image_root=toy_dir, dtype="float32")
    args = ["--set", "seed=5"]
    assert main(["evaluate", str(toy_dir), "--encoder", "toy", "--embeddings", str(tmp_path / "emb"),
                 "--out", str(tmp_path / "loop"), *args]) == 0
    assert main(["encode", str(toy_dir), "--queries", "--split", "test", "--encoder", "toy",
                 "--out", str(tmp_path / "q"), *args]) == 0

    def no_encoder(*args, **kwargs):
        raise AssertionError("no encoder may be loaded")

    monkeypatch.setattr(common, "load_encoder_arg", no_encoder)
    assert main(["evaluate", str(toy_dir), "--embeddings", str(tmp_path / "emb"), "--query-embeddings",
                 str(tmp_path / "q"), "--out", str(tmp_path / "read"), *args]) == 0
    loop, read = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("loop", "read"))
    assert read["results"] == loop["results"] and read["averages"] == loop["averages"]
    assert read["instructions"] == loop["instructions"]
    for run in (tmp_path / "loop" / "runs").rglob("*.trec"):
        assert run.read_text() == (tmp_path / "read" / "runs" / run.relative_to(tmp_path / "loop" / "runs")).read_text()
    # another seed chooses other instructions: the stored queries are refused, naming the setting
    assert main(["evaluate", str(toy_dir), "--embeddings", str(tmp_path / "emb"), "--query-embeddings",
                 str(tmp_path / "q"), "--set", "seed=6"]) == 2


def test_mining_takes_the_index_option(toy_dir, tmp_path):
    exact = mine_mbeir(ToyEncoder(), toy_dir, tmp_path / "exact", MiningConfig(k=4, window=[3, 4]),
                       show_progress=False)
    hnsw = mine_mbeir(ToyEncoder(), toy_dir, tmp_path / "hnsw", MiningConfig(k=4, window=[3, 4], index="faiss-hnsw"),
                      show_progress=False)
    assert exact.complete and hnsw.complete
    for path in sorted((tmp_path / "exact").glob("*.jsonl")):  # 12 candidates: the graph finds them all
        assert path.read_text() == (tmp_path / "hnsw" / path.name).read_text()
    manifest = json.loads((tmp_path / "hnsw" / "mining.json").read_text())
    assert "faiss-hnsw" in json.dumps(manifest)
