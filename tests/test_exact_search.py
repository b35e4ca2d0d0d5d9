"""The streamed blocked exact top-k: mmembed's tie rule, memory-limit independence, subsets, stores."""

from __future__ import annotations

import numpy as np
import pytest

from mmembed.cli.main import main
from mmembed.errors import ConfigError
from mmembed.eval.metrics import rank_documents
from mmembed.index import FaissIndex, load_index
from mmembed.index.exact import ExactIndex
from mmembed.index.topk import Request, key_scores, parse_memory, score_keys
from mmembed.testing.synthetic import write_synthetic


def _data(n=700, d=16, nq=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[100:110] = x[5]  # exact ties
    ids = [f"{rng.integers(1, 9)}:{i}" for i in range(n)]  # id order differs from row order
    q = rng.standard_normal((nq, d)).astype(np.float32)
    q[0] = x[5]
    return ids, x, q


def test_keys_order_as_score_then_id_and_round_trip():
    scores = np.array([[0.5, -0.25, 0.5, -0.0, 0.0, -1.0]], dtype=np.float32)
    ranks = np.array([3, 1, 7, 2, 5, 0])
    keys = score_keys(scores, ranks)
    order = np.argsort(-keys[0])
    assert order.tolist() == [2, 0, 4, 3, 1, 5]  # 0.5 (id rank 7) before 0.5 (3); 0.0 and -0.0 tie, by id
    assert np.array_equal(key_scores(keys)[0], np.array([0.5, -0.25, 0.5, 0.0, 0.0, -1.0], dtype=np.float32))


def test_top_k_is_rank_documents_order_ties_included():
    ids, x, q = _data()
    index = ExactIndex.from_vectors(ids, x)
    full = index.search(q, len(ids))
    for k in (1, 5, 12, 50):
        got = index.search(q, k)
        for row in range(len(q)):
            docs = {did: float(score) for did, score in zip(full.ids[row], full.scores[row])}
            assert list(got.ids[row]) == [did for did, _ in rank_documents(docs, k)]
    # query 0 sits on eleven identical vectors: the cut-off among them goes by id, descending
    tied = {ids[5], *ids[100:110]}
    assert set(index.search(q[:1], 4).ids[0]) == set(sorted(tied)[-4:])


def test_same_sets_as_faiss_where_nothing_ties():
    ids, x, q = _data()
    x[100:110] += np.random.default_rng(3).standard_normal((10, x.shape[1])).astype(np.float32) * 0.01  # no ties
    exact, faiss = ExactIndex.from_vectors(ids, x), FaissIndex(x.shape[1])
    faiss.add(ids, x)
    a, b = exact.search(q, 20), faiss.search(q, 20)
    assert all(set(ra) == set(rb) for ra, rb in zip(a.ids, b.ids))
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


def test_results_do_not_depend_on_the_memory_limit():
    ids, x, q = _data(nq=600)
    roomy = ExactIndex.from_vectors(ids, x).search(q, 30)
    tight = ExactIndex.from_vectors(ids, x, memory_limit="5.4MB")
    small = tight.search(q, 30)
    assert tight.last_stats.passes > 1  # the queries did not fit at once
    assert np.array_equal(roomy.ids, small.ids) and np.array_equal(roomy.scores, small.scores)  # bit for bit


def test_a_request_searches_only_its_allowed_rows():
    ids, x, q = _data()
    allowed = np.zeros(len(ids), dtype=bool)
    allowed[::3] = True
    index = ExactIndex.from_vectors(ids, x)
    local, whole = index.search_requests(q, [Request(slice(0, 40), 10, allowed), Request(slice(5, 9), 7)])
    subset = ExactIndex.from_vectors([i for i, a in zip(ids, allowed) if a], x[allowed]).search(q, 10)
    assert np.array_equal(local.ids, subset.ids)
    assert np.array_equal(whole.ids, index.search(q[5:9], 7).ids)
    with pytest.raises(ConfigError, match="between 1 and"):
        index.search_requests(q, [Request(slice(0, 2), 500, allowed)])


def test_a_limit_below_one_block_is_refused_and_sizes_parse():
    ids, x, q = _data()
    with pytest.raises(ConfigError, match="raise --memory-limit"):
        ExactIndex.from_vectors(ids, x, memory_limit="10KB").search(q, 5)
    assert parse_memory("200MB") == 200 * 10**6 and parse_memory("1.5GiB") == int(1.5 * 2**30)
    with pytest.raises(ConfigError, match="not understood"):
        parse_memory("lots")


def test_a_store_is_streamed_and_indexed_without_copying(tmp_path, capsys):
    synthetic = write_synthetic(tmp_path / "syn", candidates=500, queries=30, dim=16, chunk_size=64, duplicates=6)
    streamed = ExactIndex.from_embeddings(synthetic.embeddings, memory_limit="4MB")
    from mmembed.embeddings.store import EmbeddingSet

    ids, vectors, _ = EmbeddingSet.open(synthetic.embeddings).read_all()
    q = np.random.default_rng(1).standard_normal((30, 16)).astype(np.float32)
    in_memory = ExactIndex.from_vectors(ids, vectors).search(q, 25)
    from_disk = streamed.search(q, 25)
    assert np.array_equal(in_memory.ids, from_disk.ids)
    assert streamed.last_stats.vectors_read == 500 and streamed.last_stats.chunks_read == 8
    # an exact retrieval directory points at the store; search opens it through load_index
    pool = synthetic.root / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl"
    assert main(["index", "build", str(pool), "--from-embeddings", str(synthetic.embeddings), "--backend", "exact",
                 "--out", str(tmp_path / "idx")]) == 0
    loaded = load_index(tmp_path / "idx" / "vectors")
    assert isinstance(loaded, ExactIndex)
    assert np.array_equal(loaded.search(q, 25).ids, from_disk.ids)
    assert not any((tmp_path / "idx" / "vectors").glob("*.npz"))
