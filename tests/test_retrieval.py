"""The retrieval object and the index/search commands over the toy dataset."""

from __future__ import annotations

import pytest
from PIL import Image

from mmembed.cli import common
from mmembed.cli.main import main
from mmembed.errors import ConfigError, IndexMismatchError
from mmembed.retrieval import Retriever

POOL = "cand_pool/global/mbeir_union_test_cand_pool.jsonl"


def _build(toy_dir, encoder, out):
    return Retriever.build(encoder, toy_dir / POOL, out, encoder_spec="toy",
                           instructions_path=toy_dir / "instructions" / "query_instructions.tsv",
                           show_progress=False)


def test_build_load_and_search_by_text_and_image(toy_dir, toy_encoder, tmp_path):
    _build(toy_dir, toy_encoder, tmp_path / "idx")
    retriever = Retriever.load(tmp_path / "idx", encoder=toy_encoder)
    hits = retriever.search("blue square", k=3)
    assert hits[0].candidate.text == "a blue square" and [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].score >= hits[1].score >= hits[2].score
    image_hits = retriever.search(image=Image.new("RGB", (16, 16), (240, 220, 30)), k=2)
    assert image_hits[0].candidate.image == "images/yellow.png"
    assert retriever.images.load(image_hits[0].candidate.image, image_hits[0].id).size == (32, 32)
    assert len(retriever.search("red", k=100)) == 12  # k beyond the pool size is capped


def test_tasks_and_instructions(toy_dir, toy_encoder, tmp_path):
    retriever = _build(toy_dir, toy_encoder, tmp_path / "idx")
    assert retriever.task_instruction("toy:text->image") == "Find the image of this colour."
    with pytest.raises(ConfigError, match="known tasks: toy:image->text"):
        retriever.task_instruction("toy:text->video")


def test_index_of_another_encoder_is_refused(toy_dir, toy_encoder, tmp_path):
    _build(toy_dir, toy_encoder, tmp_path / "idx")

    class Other(type(toy_encoder)):
        encoder_id = "another-encoder"

    with pytest.raises(IndexMismatchError, match="another-encoder"):
        Retriever.load(tmp_path / "idx", encoder=Other())
    with pytest.raises(IndexMismatchError, match="not a retrieval index"):
        Retriever.load(tmp_path, encoder=toy_encoder)


def test_cli_index_build_and_search(toy_dir, toy_encoder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "load_encoder_arg", lambda *args, **kwargs: toy_encoder)
    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec: toy_encoder)
    out = tmp_path / "idx"
    assert main(["index", "build", str(toy_dir), "--encoder", "toy", "--out", str(out)]) == 0
    assert main(["search", str(out), "--text", "green", "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "green" in lines[-2] and lines[-2].split()[0] == "1"
    Image.new("RGB", (8, 8), (140, 40, 160)).save(tmp_path / "q.png")
    assert main(["search", str(out), "--image", str(tmp_path / "q.png"), "--task", "toy:image->text", "-k", "1"]) == 0
    assert "purple" in capsys.readouterr().out
    assert main(["search", str(out)]) == 2
    assert "give --text, --image, or both" in capsys.readouterr().err
    assert main(["search", str(out), "--image", str(tmp_path / "none.png")]) == 2
    assert "image file not found" in capsys.readouterr().err


@pytest.mark.parametrize("manifest", ["[1, 2]", '{"encoder": "toy"}', "{not json"])
def test_a_malformed_retrieval_manifest_is_a_clear_error(toy_dir, toy_encoder, tmp_path, manifest):
    _build(toy_dir, toy_encoder, tmp_path / "idx")
    (tmp_path / "idx" / "retrieval.json").write_text(manifest)
    with pytest.raises(IndexMismatchError, match="retrieval.json"):
        Retriever.load(tmp_path / "idx", encoder=toy_encoder)
