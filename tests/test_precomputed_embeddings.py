"""evaluate and mine read precomputed pool embeddings (``mmembed encode`` output) like encoded ones."""

from __future__ import annotations

import json

import pytest
from toy import ToyEncoder

from mmembed.data.layout import MBEIRDirectory
from mmembed.embeddings import encode_pool
from mmembed.errors import IndexMismatchError
from mmembed.eval.mbeir_runner import EvalConfig, run_evaluation
from mmembed.mining import MiningConfig, mine_mbeir


class CountingEncoder(ToyEncoder):
    """The toy encoder, counting the candidates it embeds."""

    def __init__(self):
        super().__init__()
        self.candidates = 0

    def encode_candidates(self, candidates, **kwargs):
        self.candidates += len(candidates)
        return super().encode_candidates(candidates, **kwargs)


def test_evaluation_from_precomputed_embeddings_equals_encoding(toy_dir, tmp_path):
    pool = MBEIRDirectory(toy_dir).global_pool("test")
    encode_pool(ToyEncoder(), pool, tmp_path / "emb", image_root=toy_dir, dtype="float32")
    config = {"instruction_modes": ("none",), "show_progress": False}
    encoded = run_evaluation(ToyEncoder(), toy_dir, EvalConfig(**config))
    counting = CountingEncoder()
    read = run_evaluation(counting, toy_dir, EvalConfig(**config, embeddings_dir=str(tmp_path / "emb")))
    assert counting.candidates == 0
    assert [(r.task, r.pool, r.scores) for r in read.results] == [(r.task, r.pool, r.scores) for r in encoded.results]


def test_embeddings_of_another_encoder_are_refused(toy_dir, tmp_path):
    pool = MBEIRDirectory(toy_dir).global_pool("test")
    other = ToyEncoder()
    other.encoder_id = "another-encoder"
    encode_pool(other, pool, tmp_path / "emb", image_root=toy_dir)
    with pytest.raises(IndexMismatchError):
        run_evaluation(ToyEncoder(), toy_dir, EvalConfig(instruction_modes=("none",), show_progress=False,
                                                          embeddings_dir=str(tmp_path / "emb")))


def test_mining_from_precomputed_embeddings_equals_encoding(toy_dir, tmp_path):
    pool = MBEIRDirectory(toy_dir).global_pool("train")
    encode_pool(ToyEncoder(), pool, tmp_path / "emb", image_root=toy_dir, dtype="float32")
    mine_mbeir(ToyEncoder(), toy_dir, tmp_path / "encoded", MiningConfig(k=4, window=[3, 4]), show_progress=False)
    counting = CountingEncoder()
    mine_mbeir(counting, toy_dir, tmp_path / "read",
               MiningConfig(k=4, window=[3, 4], embeddings_dir=str(tmp_path / "emb")), show_progress=False)
    assert counting.candidates == 0
    for path in sorted((tmp_path / "encoded").glob("*.jsonl")):
        assert [json.loads(line) for line in path.read_text().splitlines()] == \
               [json.loads(line) for line in (tmp_path / "read" / path.name).read_text().splitlines()]
