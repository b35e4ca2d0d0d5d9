"""Saved indexes refuse files that do not belong to their vectors; builds refuse what cannot fit in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmembed.cli.main import main
from mmembed.errors import ConfigError, IndexMismatchError
from mmembed.index import FaissIndex
from mmembed.index.memory import MemoryEstimate, check_fits, estimate
from mmembed.retrieval import Retriever

POOL = "cand_pool/global/mbeir_union_test_cand_pool.jsonl"


@pytest.fixture
def built(toy_dir, toy_encoder, tmp_path, monkeypatch):
    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec, **kw: toy_encoder)
    out = tmp_path / "idx"
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(out)]) == 0
    return out


def _lines(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda lines: lines[:-3], r"9 candidates for 12 indexed vectors \(truncated file\?\)"),
    (lambda lines: [lines[1], lines[0], *lines[2:]], r"candidates.jsonl:1: candidate '10:1' where the index has "
                                                     r"'10:0' at row 1"),
    (lambda lines: [*lines, lines[0].replace('"10:0"', '"10:999"')], "more candidates than the 12 indexed"),
    (lambda lines: [line.replace('"did": "10:', '"did": "11:') for line in lines], "another pool's candidates"),
])
def test_a_candidates_file_that_does_not_match_the_vectors_is_refused(built, toy_encoder, capsys, damage, message):
    path = built / "candidates.jsonl"
    path.write_text("".join(damage(_lines(path))), encoding="utf-8")
    with pytest.raises(IndexMismatchError, match=message):
        Retriever.load(built, encoder=toy_encoder)
    assert main(["search", str(built), "--text", "red"]) == 2
    err = capsys.readouterr().err
    assert "candidates.jsonl" in err and "Traceback" not in err


def test_an_ids_file_of_other_ids_or_order_is_refused(built, toy_encoder):
    ids_path = built / "vectors" / "ids.json"
    ids = json.loads(ids_path.read_text())
    ids_path.write_text(json.dumps(ids[::-1]))
    with pytest.raises(IndexMismatchError, match="ids.json: the ids are not those saved with these vectors"):
        FaissIndex.load(built / "vectors")


def test_an_intact_index_still_loads_and_old_indexes_without_a_fingerprint_load(built, toy_encoder):
    assert len(Retriever.load(built, encoder=toy_encoder).search("red", k=3)) == 3
    manifest_path = built / "vectors" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert len(manifest["extra"]["ids_sha256"]) == 64
    del manifest["extra"]["ids_sha256"]
    manifest_path.write_text(json.dumps(manifest))
    assert len(FaissIndex.load(built / "vectors")) == 12


@pytest.mark.parametrize(("content", "message"), [
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"format_version": 1, "encoder": "toy", "encoder_id": "toy-encoder-v1", "image_root": 5}',
     "field 'image_root' has the wrong type"),
    ('{"format_version": 1, "encoder": "toy", "image_root": "/x"}', "field 'encoder_id' is missing"),
    ("{not json", "unreadable or corrupt"),
])
def test_a_malformed_retrieval_json_is_refused_naming_the_field(built, toy_encoder, content, message):
    (built / "retrieval.json").write_text(content)
    from mmembed.index.integrity import check_retrieval_manifest

    with pytest.raises(IndexMismatchError, match=message):
        check_retrieval_manifest(built / "retrieval.json")
    with pytest.raises(IndexMismatchError, match=message):  # also when only the vectors are opened
        FaissIndex.load(built / "vectors")


def test_memory_estimates_count_what_faiss_stores():
    flat, half = estimate("Flat", "float32", 4096, 1000), estimate("Flat", "float16", 4096, 1000)
    assert (flat.bytes_per_vector, half.bytes_per_vector) == (4 * 4096, 2 * 4096)
    assert estimate("SQ8", "float32", 384, 10).bytes_per_vector == 384
    pq = estimate("IVF1024,PQ48", "float32", 384, 5_000_000)
    assert pq.bytes_per_vector == 48 + 8 and pq.train_bytes == 2 * 262_144 * 384 * 4
    assert estimate("IVF1024,PQ48", "float32", 384, 5_000_000, train_rows=10_000).train_bytes == 2 * 10_000 * 384 * 4
    assert estimate("HNSW32", "float32", 384, 10).bytes_per_vector > 384 * 4 + 2 * 32 * 4
    assert "GiB" in pq.describe()


def test_a_build_that_cannot_fit_is_refused_unless_forced(caplog):
    big = estimate("Flat", "float32", 4096, 5_609_079)
    with pytest.raises(ConfigError, match=r"needs about 8\d\.\d\d GiB but 24.00 GiB is available.*--force"):
        check_fits(big, available=24 * 2**30)
    check_fits(big, available=24 * 2**30, force=True)
    assert "building anyway" in caplog.text
    check_fits(estimate("IVF4096,PQ64", "float32", 4096, 5_609_079, train_rows=200_000), available=24 * 2**30)
    assert isinstance(big, MemoryEstimate)


def test_cli_prints_the_estimate_and_refuses_before_encoding(toy_dir, toy_encoder, tmp_path, monkeypatch, capsys,
                                                             caplog):
    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec, **kw: toy_encoder)
    monkeypatch.setattr("mmembed.index.memory.available_memory", lambda: 1000)
    with caplog.at_level("INFO"):
        assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "i")]) == 2
    assert "but 0.00 GiB is available" in capsys.readouterr().err
    assert "memory estimate: Flat over 12 x 64" in caplog.text
    assert toy_encoder.calls == 0 and not (tmp_path / "i").exists()
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "i"), "--force"]) == 0


def test_compressed_and_trained_indexes_from_embeddings(toy_dir, toy_encoder, tmp_path, monkeypatch):
    """SQ8 and IVF built from an embeddings directory, with a training sample and search parameters."""
    from mmembed.embeddings import EmbeddingSet, encode_pool
    from mmembed.index.build import index_from_embeddings

    encode_pool(toy_encoder, toy_dir / POOL, tmp_path / "e", chunk_size=5, dtype="float32")
    embeddings = EmbeddingSet.open(tmp_path / "e")
    exact = index_from_embeddings(embeddings)
    queries = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    for factory, params in (("SQ8", {}), ("IVF2,Flat", {"nprobe": 2})):
        index = index_from_embeddings(embeddings, factory=factory, search_params=params, train_rows=12)
        assert index.search(queries, 3).ids.tolist() == exact.search(queries, 3).ids.tolist()
    assert embeddings.sample(4).shape == (4, 64)


def test_cli_search_params_are_kept_and_bad_ones_refused_before_encoding(toy_dir, toy_encoder, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec, **kw: toy_encoder)
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "i"), "--factory",
                 "HNSW8", "--search-param", "efSearch=48", "--search-param", "efConstruction=64"]) == 0
    loaded = FaissIndex.load(tmp_path / "i" / "vectors")
    assert loaded.search_params == {"efSearch": 48, "efConstruction": 64}
    assert loaded.faiss_index.hnsw.efConstruction == 64 and len(loaded) == 12
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "t"), "--factory",
                 "IVF2,Flat", "--train-sample", "8", "--search-param", "nprobe=2"]) == 0
    retriever = Retriever.load(tmp_path / "t", encoder=toy_encoder)
    assert retriever.search("blue square", k=1)[0].candidate.text == "a blue square"
    calls = toy_encoder.calls
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "j"),
                 "--search-param", "nprobe=4"]) == 2
    assert "'nprobe' does not apply to index 'Flat'" in capsys.readouterr().err
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "j"),
                 "--factory", "IVF9,Nonsense"]) == 2
    assert "FAISS cannot build index 'IVF9,Nonsense'" in capsys.readouterr().err
    assert toy_encoder.calls == calls and not (tmp_path / "j").exists()
