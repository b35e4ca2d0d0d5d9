"""The real-data builders of benchmarks/realdata on small synthetic sources (no Debian package needed).

The clip-art builder reads tiny SVGs written here, with a stand-in renderer and a stand-in WordNet
word list; the digits builder gets 150 random 8x8 images; the bundled subset's quota and concept
rules are checked on hand-made records.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.realdata import common, digits, openclipart
from benchmarks.realdata.bundled_subset import ConceptSample, quotas
from mmembed.data.layout import MBEIRDirectory
from mmembed.data.mbeir import read_candidates, read_queries
from mmembed.data.validate import validate_directory
from mmembed.errors import ConfigError
from mmembed.types import Candidate, Modality, Query

WORDS = ("red", "blue", "green", "yellow", "black", "white", "small", "big", "old", "new", "apple", "car", "house",
         "tree", "bird", "dog", "cat", "boat", "chair", "lamp", "star", "cake", "plate", "thing", "food")

SVG = """<svg xmlns="http://www.w3.org/2000/svg" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
 xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/" width="10" height="10">
<metadata><rdf:RDF><cc:Work rdf:about=""><dc:title>{title}</dc:title><dc:description>{desc}</dc:description>
<dc:subject><rdf:Bag>{keywords}</rdf:Bag></dc:subject></cc:Work></rdf:RDF></metadata>
<rect width="{n}" height="5"/></svg>"""


@pytest.fixture
def wordnet(tmp_path, monkeypatch):
    folder = tmp_path / "wordnet"
    folder.mkdir()
    (folder / "index.noun").write_text("  licence header\n" + "".join(f"{w} n 1 0\n" for w in WORDS))
    monkeypatch.setattr(common, "WORDNET_DIR", folder)


def _svg(root: Path, rel: str, title: str, desc: str = "", keywords: tuple[str, ...] = (), n: int = 1) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tags = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    path.write_text(SVG.format(title=title, desc=desc, keywords=tags, n=n))


def _fake_render(svg: Path) -> bytes:
    """A distinct flat-coloured picture per file (rsvg-convert is a Debian tool)."""
    colour = tuple(hashlib.sha256(svg.name.encode()).digest()[:3])
    return common.png_bytes(Image.new("RGB", (16, 16), colour))


@pytest.fixture
def clipart_root(tmp_path) -> Path:
    root = tmp_path / "svg"
    for n in range(60):
        a, b = WORDS[n % 6], WORDS[6 + n // 6]
        _svg(root, f"things/{a}_{b}_{n}.svg", f"{a} {b}", keywords=(b, "thing") if n % 2 else (b,), n=n)
    _svg(root, "things/cake.svg", "Red cake", "a red cake with a star on a plate", ("cake", "food"), n=100)
    _svg(root, "copies/cake.svg", "Red cake", "a red cake with a star on a plate", ("cake", "food"), n=100)
    _svg(root, "things/cake_again.svg", "red cake", n=101)  # another picture with the same title
    _svg(root, "things/gram.svg", "gramastar", n=102)  # not English
    _svg(root, "things/flat.svg", "Part of the Flat Icon Collection", n=103)  # a collection, not a picture
    return root


def _images_by_split(root: Path) -> dict[str, set[str]]:
    """Every image a split's queries and positives show."""
    d = MBEIRDirectory(root)
    out: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        for task in d.tasks(split):
            pool = {c.did: c for c in read_candidates(task.local_pool)}
            for q in read_queries(task.queries):
                shown = {q.image} | {pool[p].image for p in q.pos}
                out.setdefault(split, set()).update(i for i in shown if i)
    return out


def _tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_openclipart_keeps_english_distinct_titles_and_splits_by_image(tmp_path, wordnet, clipart_root):
    out = tmp_path / "out"
    summary = openclipart.build(out, svg_root=clipart_root, render_svg=_fake_render)
    assert validate_directory(out).ok
    selection = summary["facts"]["selection"]
    assert selection["distinct SVG files"] == 64  # the copy of cake.svg is one file
    assert selection["with a description"] == 1 and selection["same title as a kept clip-art"] == 1
    assert selection["no usable title"] == 2
    texts = " ".join(p.read_text() for p in out.rglob("*.jsonl"))
    assert "gramastar" not in texts and "Flat Icon" not in texts
    assert "Red cake: a red cake with a star on a plate" in texts
    by_split = _images_by_split(out)
    assert set(by_split) == {"train", "val", "test"}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])
    d = MBEIRDirectory(out)
    train_pools = [t.local_pool for t in d.tasks("train")] + [d.global_pool("train")]
    shown = {c.image for path in train_pools for c in read_candidates(path) if c.image}
    assert shown and not (shown & (by_split["val"] | by_split["test"]))  # training reads no val or test image
    # One role per image: no image or caption is both a query and a candidate anywhere.
    queries = [q for s in ("train", "val", "test") for t in d.tasks(s) for q in read_queries(t.queries)]
    pool = read_candidates(d.global_pool("test"))
    assert not ({q.image for q in queries if q.image} & {c.image for c in pool if c.image})
    assert not ({q.text for q in queries if q.text} & {c.text for c in pool if c.text})
    again = tmp_path / "again"
    openclipart.build(again, svg_root=clipart_root, render_svg=_fake_render)
    assert _tree_hashes(out) == _tree_hashes(again)


def test_openclipart_keyword_queries_have_every_image_with_those_keywords(tmp_path, wordnet, clipart_root):
    out = tmp_path / "out"
    openclipart.build(out, svg_root=clipart_root, render_svg=_fake_render, seed=3)
    d = MBEIRDirectory(out)
    pool = {c.did: c for c in read_candidates(d.global_pool("test"))}
    shared = 0
    for split in ("train", "val", "test"):
        for q in read_queries(d.task("openclipart_task2", split).queries):
            keywords = sorted(q.text.split(", "))
            same = {did for did, c in pool.items() if c.modality is Modality.IMAGE_TEXT
                    and sorted(k.casefold() for k in json.loads(c.src_content)["keywords"]) == keywords}
            assert set(q.pos) == same
            shared += len(q.pos) > 1
    assert shared  # the check above met a query with several positives


def test_digits_pools_hold_only_their_split_and_no_query_image(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = np.arange(150) % 10
    monkeypatch.setattr(digits, "load_digits_images", lambda: (rng.integers(0, 17, (150, 8, 8)), labels))
    out = tmp_path / "digits"
    summary = digits.build(out)
    assert validate_directory(out).ok
    d = MBEIRDirectory(out)
    test_classes = {json.loads(c.src_content)["label"] for c in read_candidates(d.global_pool("test")) if c.image}
    assert summary["queries"]["digits_task0"]["test"] == len(test_classes) * len(digits.PARAPHRASES)
    for split in ("train", "val", "test"):
        pool = {c.did: c for c in read_candidates(d.global_pool(split))}
        assert sum(c.modality is Modality.TEXT for c in pool.values()) == 10  # the labels, in every split
        split_images = {c.image for c in pool.values() if c.image}
        for task in d.tasks(split):
            local = {c.did for c in read_candidates(task.local_pool)}
            assert local <= set(pool)
            for q in read_queries(task.queries):
                assert q.image not in split_images
                label = json.loads(q.src_content)["label"]
                assert all(json.loads(pool[p].src_content)["label"] == label for p in q.pos)
        i2i = read_queries(d.task("digits_task4", split).queries)
        for q in i2i:  # every gallery image of the class in the split is a positive
            label = json.loads(q.src_content)["label"]
            assert len(q.pos) == sum(c.image is not None and json.loads(c.src_content)["label"] == label
                                     for c in pool.values())


def test_quotas_split_the_total_in_proportion():
    assert quotas({"a": 100, "b": 50, "c": 50}, 10) == {"a": 5, "b": 3, "c": 2}  # a tie goes by name
    got = quotas({"a": 7, "b": 7, "c": 7}, 20)
    assert sum(got.values()) == 20 and sorted(got.values()) == [6, 7, 7]
    with pytest.raises(ConfigError, match="raise --share"):
        quotas({"a": 5}, 6)


def test_concept_sample_keeps_a_query_only_with_all_its_concepts_and_positives():
    sample = ConceptSample(0.5, seed=0)
    kept = [f"c{i}" for i in range(40) if sample.keeps(f"c{i}")]
    dropped = [f"c{i}" for i in range(40) if not sample.keeps(f"c{i}")]
    assert kept and dropped

    def query(concepts, pos=("1:1",)):
        return Query(qid="1:9", text="x", image=None, modality=Modality.TEXT, pos=tuple(pos),
                     src_content=json.dumps({"concepts": concepts}))

    assert sample.keeps_query(query(kept[:2]), {"1:1"})
    assert not sample.keeps_query(query([kept[0], dropped[0]]), {"1:1"})
    assert not sample.keeps_query(query(kept[:1]), set())  # its positive left the pool
    cand = Candidate(did="1:1", text="x", image=None, modality=Modality.TEXT,
                     src_content=json.dumps({"concepts": [dropped[0], kept[0]]}))
    assert sample.keeps_candidate(cand)
