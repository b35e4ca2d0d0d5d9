"""FaissIndex: exact and approximate search, string ids, atomic save/load and refusals."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from mmembed.errors import ConfigError, DataError, IndexMismatchError
from mmembed.index import FaissIndex, SearchResult, VectorIndex, load_index
from mmembed.index import faiss_index as faiss_index_module
from mmembed.index.base import FORMAT_VERSION

DIM = 32


def _vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """Random, deliberately not normalised (the index must normalise)."""
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32) * 3


def _clustered(n: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """Data with structure, as real embeddings have; approximate indexes are meaningful on it."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, DIM))
    return (centers[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, DIM))).astype(np.float32)


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"9:{i}" for i in range(start, start + n)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(data: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = _unit(queries) @ _unit(data).T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(scores, top, axis=1)


def _overlap(approx: np.ndarray, exact: np.ndarray) -> float:
    """Recall of an approximate top-k against the exact top-k."""
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx.tolist(), exact.tolist())]))


@pytest.fixture
def flat() -> FaissIndex:
    index = FaissIndex(DIM, encoder_id="test-encoder")
    index.add(_ids(300), _vectors(300))
    return index


def test_exact_search_equals_numpy_brute_force(flat):
    data, queries = _vectors(300), _vectors(25, seed=1)
    ids, scores = flat.search(queries, k=10)
    top, expected = _brute_force(data, queries, 10)
    assert ids.tolist() == np.array(_ids(300), dtype=object)[top].tolist()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert scores.dtype == np.float32 and ids.dtype == object


def test_search_in_small_batches_gives_the_same_answer(flat):
    queries = _vectors(25, seed=1)
    whole, batched = flat.search(queries, k=7), flat.search(queries, k=7, batch_size=4)
    assert whole.ids.tolist() == batched.ids.tolist()
    np.testing.assert_array_equal(whole.scores, batched.scores)


def test_incremental_add_matches_one_add(flat):
    data = _vectors(300)
    index = FaissIndex(DIM)
    for start in (0, 100, 250):
        stop = {0: 100, 100: 250, 250: 300}[start]
        index.add(_ids(stop - start, start), data[start:stop])
    assert len(index) == 300 and index.ids() == _ids(300)
    queries = _vectors(10, seed=2)
    assert index.search(queries, 5).ids.tolist() == flat.search(queries, 5).ids.tolist()


def test_duplicate_ids_are_refused_by_name_and_nothing_is_added(flat):
    with pytest.raises(DataError, match=r"'9:5'.*already in the index"):
        flat.add(["new", "9:5"], _vectors(2, seed=3))
    with pytest.raises(DataError, match=r"'x'.*more than once"):
        flat.add(["x", "y", "x"], _vectors(3, seed=3))
    assert len(flat) == 300 and flat.faiss_index.ntotal == 300
    flat.add(["x"], _vectors(1, seed=3))
    assert flat.search(_vectors(1, seed=3), 1).ids[0, 0] == "x"


def test_bad_vectors_are_refused_before_anything_is_added(flat):
    bad = _vectors(3, seed=4)
    bad[2, 0] = np.nan
    with pytest.raises(DataError, match="'c'.*NaN"):
        flat.add(["a", "b", "c"], bad)
    with pytest.raises(IndexMismatchError, match=r"\(n, 32\).*\(2, 16\)"):
        flat.add(["a", "b"], np.zeros((2, 16), np.float32))
    with pytest.raises(DataError, match="2 ids for 3 vectors"):
        flat.add(["a", "b"], _vectors(3))
    with pytest.raises(DataError, match="row 2"):
        flat.search(bad, 1)
    assert len(flat) == 300


def test_k_larger_than_the_index_is_truncated_without_fake_ids():
    index = FaissIndex(DIM)
    assert index.search(_vectors(2), 3).ids.shape == (2, 0)
    index.add(_ids(5), _vectors(5))
    ids, scores = index.search(_vectors(3, seed=1), k=10)
    assert ids.shape == scores.shape == (3, 5)
    assert all(sorted(row) == sorted(_ids(5)) for row in ids.tolist())
    assert np.isfinite(scores).all()


def test_unfilled_slots_of_an_approximate_index_are_none_with_minus_inf():
    index = FaissIndex(DIM, "IVF8,Flat", search_params={"nprobe": 1})
    index.add(_ids(400), _clustered(400))
    ids, scores = index.search(_clustered(20, seed=5), k=400)
    missing = ids == None  # noqa: E711 (elementwise on an object array)
    assert missing.any(), "nprobe=1 over 8 lists cannot fill k=400"
    assert np.isneginf(scores[missing]).all() and np.isfinite(scores[~missing]).all()
    for row in ids.tolist():
        real = [i for i in row if i is not None]
        assert len(real) == len(set(real)) and row[: len(real)] == real


# Measured: HNSW 1.0 on random data; IVF 0.94 and IVF-PQ 0.62 on clustered data (IVF partitions
# need structure to be meaningful; HNSW struggles with many near-duplicates in tight clusters).
@pytest.mark.parametrize(("factory", "params", "data_fn", "min_recall"), [
    ("HNSW32", {"efSearch": 64}, _vectors, 0.9),
    ("IVF16,Flat", {"nprobe": 4}, _clustered, 0.8),
    ("IVF16,PQ8", {"nprobe": 4}, _clustered, 0.5),
])
def test_approximate_indexes_find_most_exact_neighbours(factory, params, data_fn, min_recall):
    data, queries = data_fn(3000), data_fn(50, seed=1)
    index = FaissIndex(DIM, factory, search_params=params)
    index.add(_ids(3000), data)
    exact, _ = _brute_force(data, queries, 10)
    got = index.search(queries, 10).ids
    approx = np.array([[int(i.split(":")[1]) for i in row] for row in got.tolist()])
    assert _overlap(approx, exact) >= min_recall


def test_pq_indexes_skip_the_slow_polysemous_training():
    for factory in ("IVF16,PQ8", "OPQ8,IVF16,PQ8", "PQ8"):
        index = FaissIndex(DIM, factory).faiss_index
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index)) if "IVF" in factory else index
        assert ivf.do_polysemous_training is False, factory


def test_ivf_probing_every_list_is_exact():
    data, queries = _clustered(2000), _clustered(20, seed=1)
    index = FaissIndex(DIM, "IVF16,Flat", search_params={"nprobe": 16})
    index.add(_ids(2000), data)
    exact, _ = _brute_force(data, queries, 10)
    assert index.search(queries, 10).ids.tolist() == np.array(_ids(2000), dtype=object)[exact].tolist()


def test_too_few_training_vectors_is_a_clear_error_and_explicit_training_fixes_it():
    index = FaissIndex(DIM, "IVF64,Flat")
    with pytest.raises(ConfigError, match=r"IVF64,Flat.*10 vectors.*train\(\)"):
        index.add(_ids(10), _vectors(10))
    assert len(index) == 0 and not index.is_trained
    index.train(_clustered(3000))
    index.add(_ids(10), _vectors(10))
    assert len(index) == 10


def test_float16_storage_halves_the_codes_and_keeps_the_ranking():
    data, queries = _vectors(500), _vectors(20, seed=1)
    index = FaissIndex(DIM, dtype="float16")
    index.add(_ids(500), data)
    assert index.faiss_index.sa_code_size() == 2 * DIM
    exact, expected = _brute_force(data, queries, 10)
    ids, scores = index.search(queries, 10)
    np.testing.assert_allclose(scores, expected, atol=2e-3)
    approx = np.array([[int(i.split(":")[1]) for i in row] for row in ids.tolist()])
    assert _overlap(approx, exact) >= 0.95
    hnsw = FaissIndex(DIM, "HNSW16", dtype="float16").faiss_index
    assert faiss.downcast_index(hnsw.storage).sa_code_size() == 2 * DIM


def test_float16_is_refused_for_compressed_codes_and_bad_settings_are_named():
    with pytest.raises(ConfigError, match="float16.*PQ8"):
        FaissIndex(DIM, "IVF16,PQ8", dtype="float16")
    with pytest.raises(ConfigError, match="'Nonsense'.*examples"):
        FaissIndex(DIM, "Nonsense")
    with pytest.raises(ConfigError, match="'efSearch'.*'Flat'"):
        FaissIndex(DIM).set_search_params(efSearch=10)
    with pytest.raises(ConfigError, match="float64"):
        FaissIndex(DIM, dtype="float64")
    with pytest.raises(ConfigError, match="k must be"):
        FaissIndex(DIM).search(_vectors(1), 0)


@pytest.mark.parametrize(("factory", "dtype", "params"), [
    ("Flat", "float32", {}),
    ("Flat", "float16", {}),
    ("HNSW16", "float32", {"efSearch": 40}),
    ("IVF16,Flat", "float32", {"nprobe": 3}),
])
def test_save_load_round_trip_gives_identical_results(tmp_path, factory, dtype, params):
    data, queries = _clustered(1000), _clustered(30, seed=1)
    index = FaissIndex(DIM, factory, dtype=dtype, encoder_id="enc", search_params=params)
    index.add(_ids(1000), data)
    index.save(tmp_path / "idx")
    loaded = FaissIndex.load(tmp_path / "idx", expected_dim=DIM, expected_encoder_id="enc")
    before, after = index.search(queries, 10), loaded.search(queries, 10)
    assert before.ids.tolist() == after.ids.tolist()
    np.testing.assert_array_equal(before.scores, after.scores)
    assert (loaded.factory, loaded.dtype, loaded.search_params, loaded.ids()) == (factory, dtype, params, _ids(1000))
    loaded.add(["extra"], _vectors(1, seed=9))  # a loaded index keeps growing, ids still unique
    with pytest.raises(DataError, match="'9:0'"):
        loaded.add(["9:0"], _vectors(1))


def test_manifest_records_what_the_index_is(tmp_path, flat):
    flat.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert (manifest["dim"], manifest["count"], manifest["metric"]) == (DIM, 300, "ip")
    assert (manifest["factory"], manifest["dtype"], manifest["encoder_id"]) == ("Flat", "float32", "test-encoder")
    assert manifest["created_by"].startswith("mmembed ")
    assert json.loads((tmp_path / "idx" / "ids.json").read_text()) == _ids(300)
    assert isinstance(load_index(tmp_path / "idx"), FaissIndex)


def test_index_satisfies_the_protocol(flat):
    assert isinstance(flat, VectorIndex)
    assert isinstance(flat.search(_vectors(1), 1), SearchResult)


def _crash_writing_ids(path, ids):
    raise OSError("disk full (simulated)")


def test_a_crash_mid_save_leaves_the_old_index_intact(tmp_path, flat, monkeypatch):
    target = tmp_path / "idx"
    flat.save(target)
    bigger = FaissIndex(DIM, encoder_id="test-encoder")
    bigger.add(_ids(50, start=1000), _vectors(50, seed=7))
    monkeypatch.setattr(faiss_index_module, "_write_ids", _crash_writing_ids)
    with pytest.raises(OSError, match="simulated"):
        bigger.save(target)
    old = FaissIndex.load(target)
    assert len(old) == 300
    queries = _vectors(5, seed=1)
    assert old.search(queries, 3).ids.tolist() == flat.search(queries, 3).ids.tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no staging debris


def test_a_crash_during_the_first_save_leaves_no_directory(tmp_path, flat, monkeypatch):
    monkeypatch.setattr(faiss_index_module, "_write_ids", _crash_writing_ids)
    with pytest.raises(OSError):
        flat.save(tmp_path / "idx")
    assert list(tmp_path.iterdir()) == []


def _edit_manifest(directory, **changes):
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


@pytest.fixture
def saved(tmp_path, flat):
    flat.save(tmp_path / "idx")
    return tmp_path / "idx"


def test_load_refuses_another_dimension_or_encoder_naming_both(saved):
    with pytest.raises(IndexMismatchError, match=r"32-dimensional.*but 768"):
        FaissIndex.load(saved, expected_dim=768)
    with pytest.raises(IndexMismatchError, match=r"'test-encoder'.*'other-encoder'"):
        FaissIndex.load(saved, expected_encoder_id="other-encoder")


def test_load_refuses_missing_or_corrupt_manifest(saved, tmp_path):
    with pytest.raises(IndexMismatchError, match="no index directory"):
        FaissIndex.load(tmp_path / "nowhere")
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(IndexMismatchError, match="corrupt manifest"):
        FaissIndex.load(saved)
    (saved / "manifest.json").unlink()
    with pytest.raises(IndexMismatchError, match="manifest.json: missing"):
        FaissIndex.load(saved)


@pytest.mark.parametrize(("changes", "message"), [
    ({"format_version": FORMAT_VERSION + 1}, "newer mmembed"),
    ({"count": 299}, "manifest says 299 vectors.*holds 300"),
    ({"dim": "32"}, "field 'dim' has the wrong type"),
    ({"metric": "l2"}, "metric 'l2'"),
    ({"engine": "annoy"}, "'annoy'"),
])
def test_load_refuses_inconsistent_manifests(saved, changes, message):
    _edit_manifest(saved, **changes)
    with pytest.raises(IndexMismatchError, match=message):
        FaissIndex.load(saved)


def test_load_refuses_ids_that_do_not_match_the_vectors(saved):
    (saved / "ids.json").write_text(json.dumps(_ids(299)))
    with pytest.raises(IndexMismatchError, match="ids.json holds 299"):
        FaissIndex.load(saved)
    (saved / "ids.json").write_text('{"a": 1}')
    with pytest.raises(IndexMismatchError, match="corrupt ids file"):
        FaissIndex.load(saved)


def test_load_refuses_a_truncated_faiss_file(saved):
    blob = (saved / "index.faiss").read_bytes()
    (saved / "index.faiss").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(IndexMismatchError, match="corrupt or truncated"):
        FaissIndex.load(saved)


def test_benchmark_script_runs_at_toy_size(capsys, monkeypatch):
    """Keeps benchmarks/index_search.py from rotting; its numbers are not checked here."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "index_search.py"
    spec = importlib.util.spec_from_file_location("index_search_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    module.main(["--n", "2000", "--dim", "16", "--queries", "20", "--nlist", "8", "--types", "flat,ivf",
                 "--repeats", "1"])
    out = capsys.readouterr().out
    assert "recall@10" in out and "IVF8,Flat" in out
