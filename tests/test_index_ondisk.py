"""IVF indexes with on-disk inverted lists: built in blocks, same answers as in memory, moved and reloaded."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mmembed.cli.main import main
from mmembed.errors import ConfigError, IndexMismatchError
from mmembed.index import FaissIndex
from mmembed.index.faiss_index import LISTS_FILE
from mmembed.index.ondisk import fill_on_disk
from mmembed.retrieval import Retriever

DIM = 32


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, DIM))
    return (centers[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, DIM))).astype(np.float32)


def _trained(data: np.ndarray) -> FaissIndex:
    index = FaissIndex(DIM, "IVF16,Flat", search_params={"nprobe": 4})
    index.train(data)
    return index


def test_on_disk_lists_answer_like_the_in_memory_index(tmp_path):
    data, ids = _clustered(3000), [f"9:{i}" for i in range(3000)]
    memory, disk = _trained(data), _trained(data)
    memory.add(ids, data)
    chunks = [(ids[s:s + 500], data[s:s + 500]) for s in range(0, 3000, 500)]
    fill_on_disk(disk, chunks, tmp_path / "work", block_rows=1200)  # 3 blocks of 1500, 1500 (chunks of 500)
    assert len(disk) == 3000 and disk.ids() == ids
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [LISTS_FILE], "block files are removed"
    queries = _clustered(30, seed=1)
    want = memory.search(queries, 10)
    got = disk.search(queries, 10)
    assert got.ids.tolist() == want.ids.tolist()
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    disk.save(tmp_path / "saved")
    shutil.rmtree(tmp_path / "work")  # the saved index holds its own link to the lists
    shutil.move(tmp_path / "saved", tmp_path / "moved")
    loaded = FaissIndex.load(tmp_path / "moved")
    assert loaded.search(queries, 10).ids.tolist() == want.ids.tolist()
    with pytest.raises(ConfigError, match="read-only"):
        loaded.add(["new"], data[:1])
    (tmp_path / "moved" / LISTS_FILE).unlink()
    with pytest.raises(IndexMismatchError, match="on-disk inverted lists of this index are missing"):
        FaissIndex.load(tmp_path / "moved")


def test_on_disk_needs_a_trained_ivf_index(tmp_path):
    with pytest.raises(ConfigError, match="need an IVF index"):
        fill_on_disk(FaissIndex(DIM), [], tmp_path)


def test_cli_on_disk_build_from_embeddings(toy_dir, toy_encoder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec, **kw: toy_encoder)
    assert main(["encode", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "e"), "--dtype", "float32"]) == 0
    assert main(["index", "build", str(toy_dir), "--from-embeddings", str(tmp_path / "e"), "--out",
                 str(tmp_path / "exact")]) == 0
    assert main(["index", "build", str(toy_dir), "--from-embeddings", str(tmp_path / "e"), "--out",
                 str(tmp_path / "disk"), "--on-disk", "--factory", "IVF2,Flat", "--search-param", "nprobe=2"]) == 0
    assert (tmp_path / "disk" / "vectors" / LISTS_FILE).is_file()
    assert not (tmp_path / ".disk.ondisk-work").exists()
    exact, disk = Retriever.load(tmp_path / "exact", encoder=toy_encoder), Retriever.load(tmp_path / "disk",
                                                                                          encoder=toy_encoder)
    for text in ("blue square", "green", "the red one"):
        assert [h.id for h in disk.search(text, k=12)] == [h.id for h in exact.search(text, k=12)]
    capsys.readouterr()
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(tmp_path / "x"), "--on-disk"]) == 2
    assert "--on-disk needs --from-embeddings" in capsys.readouterr().err
