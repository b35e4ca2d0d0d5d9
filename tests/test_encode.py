"""mmembed encode: sharded, resumable embedding files, and indexes built from them without re-encoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mmembed.cli.main import main
from mmembed.embeddings import EmbeddingSet, encode_pool, load_embedded_pool
from mmembed.embeddings.store import chunk_path
from mmembed.errors import ConfigError, IndexMismatchError
from mmembed.retrieval import Retriever

POOL = "cand_pool/global/mbeir_union_test_cand_pool.jsonl"


@pytest.fixture
def cli_encoder(toy_encoder, monkeypatch):
    """The CLI loads the toy encoder for any spec."""
    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec, **kw: toy_encoder)
    return toy_encoder


def _encode(args: list[str]) -> int:
    return main(["encode", *args])


def _chunks(directory) -> list[tuple[list[str], np.ndarray, np.ndarray]]:
    return list(EmbeddingSet.open(directory).chunks())


def test_two_shards_write_exactly_what_one_process_writes(toy_dir, cli_encoder, tmp_path, capsys):
    common = ["--encoder", "toy", "--chunk-size", "5"]  # 12 candidates: chunks of 5, 5, 2
    assert _encode([str(toy_dir), "--out", str(tmp_path / "one"), *common]) == 0
    assert _encode([str(toy_dir), "--out", str(tmp_path / "two"), "--shard", "0/2", *common]) == 0
    assert "complete when every shard has finished" in capsys.readouterr().out
    with pytest.raises(IndexMismatchError, match="unfinished embeddings, 1 of 3 chunks missing"):
        EmbeddingSet.open(tmp_path / "two")
    assert _encode([str(toy_dir), "--out", str(tmp_path / "two"), "--shard", "1/2", *common]) == 0
    assert "complete:" in capsys.readouterr().out
    one, two = _chunks(tmp_path / "one"), _chunks(tmp_path / "two")
    assert len(one) == len(two) == 3
    for (ids_a, vec_a, mod_a), (ids_b, vec_b, mod_b) in zip(one, two):
        assert ids_a == ids_b
        np.testing.assert_array_equal(vec_a, vec_b)
        np.testing.assert_array_equal(mod_a, mod_b)
    manifest = json.loads((tmp_path / "two" / "embeddings.json").read_text())
    assert manifest == json.loads((tmp_path / "one" / "embeddings.json").read_text())
    assert (manifest["encoder_id"], manifest["dim"], manifest["dtype"], manifest["count"]) == (
        "toy-encoder-v1", 64, "float16", 12)
    assert len(manifest["pool_sha256"]) == 64
    ids, vectors, _ = EmbeddingSet.open(tmp_path / "two").read_all()
    expected = cli_encoder.encode_candidates(load_embedded_pool_items(toy_dir))
    np.testing.assert_allclose(vectors, expected, atol=1e-3)  # float16 storage
    assert ids[0] == "10:0"


def load_embedded_pool_items(toy_dir):
    from mmembed.data.images import ImageStore
    from mmembed.data.mbeir import read_candidates
    from mmembed.encoders.base import as_items

    return as_items(read_candidates(toy_dir / POOL), ImageStore(toy_dir))


def test_shard_comes_from_torchrun_environment(toy_dir, toy_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    result = encode_pool(toy_encoder, toy_dir / POOL, tmp_path / "e", chunk_size=2)  # 6 chunks: this rank 1 and 4
    assert (result.encoded, result.complete) == (2, False)
    assert sorted(p.name for p in (tmp_path / "e" / "chunks").iterdir()) == ["chunk-000001.npz", "chunk-000004.npz"]


class _Dies(Exception):
    pass


def test_a_killed_run_resumes_at_the_first_missing_chunk(toy_dir, toy_encoder, tmp_path):
    calls = {"n": 0}
    original = toy_encoder.encode_candidates

    def dies_on_third_chunk(items, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Dies()
        return original(items, **kw)

    toy_encoder.encode_candidates = dies_on_third_chunk
    with pytest.raises(_Dies):
        encode_pool(toy_encoder, toy_dir / POOL, tmp_path / "e", chunk_size=3, dtype="float32")
    assert not (tmp_path / "e" / "embeddings.json").exists()
    assert not list((tmp_path / "e" / "chunks").glob(".*.tmp")), "no half-written chunk is left"
    toy_encoder.encode_candidates = original
    result = encode_pool(toy_encoder, toy_dir / POOL, tmp_path / "e", chunk_size=3, dtype="float32")
    assert (result.encoded, result.reused, result.complete) == (2, 2, True)
    fresh = encode_pool(toy_encoder, toy_dir / POOL, tmp_path / "fresh", chunk_size=3, dtype="float32")
    assert fresh.complete
    for a, b in zip(_chunks(tmp_path / "e"), _chunks(tmp_path / "fresh")):
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])
    # a finished run is all reuse
    again = encode_pool(toy_encoder, toy_dir / POOL, tmp_path / "e", chunk_size=3, dtype="float32")
    assert (again.encoded, again.reused) == (0, 4)


def test_temporaries_of_a_killed_shard_are_removed_and_other_shards_left_alone(toy_dir, toy_encoder, tmp_path):
    chunks = tmp_path / "e" / "chunks"
    chunks.mkdir(parents=True)
    mine, theirs = chunks / ".chunk-000000.npz.k1ll3d.tmp", chunks / ".chunk-000001.npz.wr1t1ng.tmp"
    mine.write_bytes(b"half")
    theirs.write_bytes(b"in progress")
    encode_pool(toy_encoder, toy_dir / POOL, tmp_path / "e", chunk_size=5, shard=(0, 2))
    assert not mine.exists() and theirs.exists()


def test_a_corrupt_chunk_is_redone_on_rerun_and_refused_when_read(toy_dir, toy_encoder, tmp_path):
    encode_pool(toy_encoder, toy_dir / POOL, tmp_path / "e", chunk_size=5)
    chunk_path(tmp_path / "e", 1).write_bytes(b"not a numpy file")
    with pytest.raises(IndexMismatchError, match=r"chunk-000001.npz: corrupt chunk file"):
        EmbeddingSet.open(tmp_path / "e").read_all()
    result = encode_pool(toy_encoder, toy_dir / POOL, tmp_path / "e", chunk_size=5)
    assert (result.encoded, result.reused) == (1, 2)
    assert len(EmbeddingSet.open(tmp_path / "e").read_all()[0]) == 12


def test_chunks_of_another_run_are_refused(toy_dir, toy_encoder, tmp_path):
    encode_pool(toy_encoder, toy_dir / POOL, tmp_path / "e", chunk_size=5)
    with pytest.raises(ConfigError, match=r"differs in: dtype"):
        encode_pool(toy_encoder, toy_dir / POOL, tmp_path / "e", chunk_size=5, dtype="float32")
    with pytest.raises(ConfigError, match=r"differs in: .*chunk_size"):
        encode_pool(toy_encoder, toy_dir / POOL, tmp_path / "e", chunk_size=4)
    # same shape, other ids: a chunk swapped in from elsewhere breaks the id fingerprint
    first, second = chunk_path(tmp_path / "e", 0), chunk_path(tmp_path / "e", 1)
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    with pytest.raises(IndexMismatchError, match="id fingerprint"):
        EmbeddingSet.open(tmp_path / "e").read_all()


def test_embedded_pool_for_evaluation_checks_pool_and_encoder(toy_dir, toy_encoder, tmp_path):
    encode_pool(toy_encoder, toy_dir / POOL, tmp_path / "e", dtype="float32")
    pool = load_embedded_pool(tmp_path / "e", toy_dir / POOL, toy_encoder.encoder_id)
    assert len(pool.ids) == 12 and pool.vectors.dtype == np.float32 and pool.modalities.dtype == np.int8
    with pytest.raises(IndexMismatchError, match="made by encoder 'toy-encoder-v1', not 'other'"):
        load_embedded_pool(tmp_path / "e", toy_dir / POOL, "other")
    local = next((toy_dir / "cand_pool" / "local").glob("*.jsonl"))
    with pytest.raises(IndexMismatchError, match="embeddings are of another pool"):
        load_embedded_pool(tmp_path / "e", local, toy_encoder.encoder_id)


def _answers(index_dir, encoder) -> list:
    retriever = Retriever.load(index_dir, encoder=encoder)
    purple = Image.new("RGB", (8, 8), (140, 40, 160))
    queries = [("blue square", None), ("green", None), ("the red one", None), (None, purple)]
    return [[(h.id, h.score) for h in retriever.search(text, image, k=12)] for text, image in queries]


def test_two_shard_encode_then_index_answers_exactly_like_a_one_process_build(toy_dir, cli_encoder, tmp_path,
                                                                            capsys):
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "direct")]) == 0
    for shard in ("0/2", "1/2"):
        assert _encode([str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "emb"), "--shard", shard,
                        "--chunk-size", "4", "--dtype", "float32"]) == 0
    calls = cli_encoder.calls
    assert main(["index", "build", str(toy_dir), "--from-embeddings", str(tmp_path / "emb"),
                 "--out", str(tmp_path / "from")]) == 0
    assert cli_encoder.calls == calls, "index build --from-embeddings encodes nothing"
    assert "indexed 12 candidates" in capsys.readouterr().out
    direct, sharded = _answers(tmp_path / "direct", cli_encoder), _answers(tmp_path / "from", cli_encoder)
    assert sharded == direct
    manifest = json.loads((tmp_path / "from" / "retrieval.json").read_text())
    assert manifest["encoder"] == "toy" and manifest["encoder_id"] == "toy-encoder-v1"
    assert (tmp_path / "from" / "instructions.tsv").is_file()
    # float16 storage keeps the rankings on this pool
    assert _encode([str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "emb16")]) == 0
    assert main(["index", "build", str(toy_dir), "--from-embeddings", str(tmp_path / "emb16"),
                 "--out", str(tmp_path / "from16")]) == 0
    half = _answers(tmp_path / "from16", cli_encoder)
    assert [[i for i, _ in row] for row in half] == [[i for i, _ in row] for row in direct]
    np.testing.assert_allclose([[s for _, s in row] for row in half], [[s for _, s in row] for row in direct],
                               atol=2e-3)


def test_index_from_embeddings_refuses_another_pool_or_encoder(toy_dir, cli_encoder, tmp_path, capsys,
                                                               monkeypatch):
    assert _encode([str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "emb")]) == 0
    local = next((toy_dir / "cand_pool" / "local").glob("*.jsonl"))
    assert main(["index", "build", str(local), "--from-embeddings", str(tmp_path / "emb"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "embeddings are of another pool" in capsys.readouterr().err

    class Other(type(cli_encoder)):
        encoder_id = "other-encoder"

    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec, **kw: Other())
    assert main(["index", "build", str(toy_dir), "--from-embeddings", str(tmp_path / "emb"), "--encoder", "o",
                 "--out", str(tmp_path / "x")]) == 2
    assert "made by encoder 'toy-encoder-v1', not 'other-encoder'" in capsys.readouterr().err
    assert main(["index", "build", str(toy_dir), "--from-embeddings", str(tmp_path / "none"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "no embeddings directory" in capsys.readouterr().err
    assert _encode([str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "e2"), "--shard", "2/2"]) == 2
    assert "0 <= I < N" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
