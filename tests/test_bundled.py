"""The bundled benchmark: a subset build, checked the way a user of the data relies on it.

One subset build (a few seconds) is shared by the module; the rebuild tests build it again.
They need the registry packages the Makefile installs (fonts-noto-color-emoji, unicode-cldr-core,
wordnet-base, emoji).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from mmembed.data import beir
from mmembed.data.bundled import build, sources, stats_table, task_stats
from mmembed.data.bundled.builder import reusable_manifest
from mmembed.data.bundled.catalog import LANGUAGES
from mmembed.data.bundled.cldr import load_languages
from mmembed.data.images import ImageStore
from mmembed.data.layout import SPLITS, MBEIRDirectory
from mmembed.data.mbeir import read_candidates, read_qrels, read_queries
from mmembed.errors import DataError, MissingDependencyError
from mmembed.instructions import InstructionRegistry
from mmembed.types import Modality


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("bundled") / "bench", subset=True)


@pytest.fixture(scope="module")
def root(built) -> Path:
    return built.root


@pytest.fixture(scope="module")
def directory(root) -> MBEIRDirectory:
    return MBEIRDirectory(root)


@pytest.fixture(scope="module")
def records(directory):
    """Every query file (all splits) and every local pool, parsed with the M-BEIR readers."""
    queries = {(tf.name, split): (tf, read_queries(tf.queries)) for split in SPLITS for tf in directory.tasks(split)}
    pools = {tf.name: read_candidates(tf.local_pool) for tf, _ in queries.values()}
    return queries, pools


def _concepts(src: str | None) -> set[str]:
    return set(json.loads(src)["concepts"])


def test_tasks_cover_every_modality_and_the_asked_task_ids(records):
    queries, pools = records
    names = {name for name, _ in queries}
    assert {f"emoji_task{n}" for n in (0, 1, 2, 3, 4, 6, 7, 8)} | {"wordnet_task1"} == names
    assert {q.modality for _, qs in queries.values() for q in qs} == set(Modality)
    assert {c.modality for pool in pools.values() for c in pool} == set(Modality)
    for (name, split), (_, qs) in queries.items():
        assert qs, f"{name} {split} has no query"
        assert all(q.qid.startswith("10:" if name.startswith("emoji") else "11:") for q in qs)


def test_files_parse_and_qrels_match_positive_lists(records, directory):
    queries, _ = records
    for tf, qs in queries.values():
        assert read_qrels(tf.qrels) == {q.qid: {did: 1 for did in q.pos} for q in qs}
        tasks = {line.split()[4] for line in tf.qrels.read_text().splitlines()}
        assert tasks == {str(tf.task.id)}
    for split in SPLITS:
        read_candidates(directory.global_pool(split))  # parses, and no did twice


def test_no_concept_crosses_splits(records, root):
    queries, _ = records
    seen: dict[str, set[str]] = defaultdict(set)
    for (_, split), (_, qs) in queries.items():
        for q in qs:
            for concept in _concepts(q.src_content):
                seen[concept].add(split)
    crossing = {c: s for c, s in seen.items() if len(s) > 1}
    assert not crossing, f"concepts in several splits: {list(crossing.items())[:5]}"
    # the BEIR set splits by word too: no word of a test sense is a word of a train sense
    corpus = beir.read_corpus(root / "beir/wordnet/corpus.jsonl")
    words = {}
    for split in ("train", "test"):
        qrels = beir.read_qrels(root / f"beir/wordnet/qrels/{split}.tsv")
        words[split] = {w.casefold() for docs in qrels.values() for d in docs for w in corpus[d].title.split(", ")}
    assert words["train"] and words["test"] and not words["train"] & words["test"]


def test_positives_are_in_local_global_and_train_pools(records, directory):
    queries, pools = records
    global_ids = {split: {c.did for c in read_candidates(directory.global_pool(split))} for split in SPLITS}
    local_union = {c.did for pool in pools.values() for c in pool}
    assert global_ids["test"] == global_ids["val"] == local_union
    assert global_ids["train"] < global_ids["test"]
    for (name, split), (_, qs) in queries.items():
        local = {c.did for c in pools[name]}
        for q in qs:
            assert q.pos and set(q.pos) <= local, q.qid
            if split == "train":
                assert set(q.pos) <= global_ids["train"], q.qid


def test_train_pool_holds_only_train_concepts(records, directory):
    queries, _ = records
    test_concepts = {c for (_, split), (_, qs) in queries.items() if split == "test" for q in qs
                     for c in _concepts(q.src_content)}
    for c in read_candidates(directory.global_pool("train")):
        assert not _concepts(c.src_content) <= test_concepts, c.did


def test_text_to_image_task_has_same_concept_text_in_the_global_pool(records, directory):
    """Modality confusion is measurable: the name text of a t->i positive is in the global pool."""
    queries, pools = records
    _, qs = queries[("emoji_task0", "test")]
    images = {c.did: json.loads(c.src_content)["cldr_name_en"] for c in pools["emoji_task0"]}
    texts = {c.text for c in read_candidates(directory.global_pool("test")) if c.modality is Modality.TEXT}
    assert all(images[did] in texts for q in qs for did in q.pos)


def test_relevance_follows_the_sources(records):
    queries, pools = records
    by_did = {c.did: c for pool in pools.values() for c in pool}
    cldr = load_languages(sources.find_cldr(), LANGUAGES)
    for q in queries[("emoji_task0", "train")][1]:  # keyword -> every emoji CLDR gives that keyword
        for did in q.pos:
            key = json.loads(by_did[did].src_content)["cldr_key"]
            assert q.text in cldr["en"][key].keywords
    for q in queries[("emoji_task3", "test")][1]:  # image -> its English CLDR name
        assert by_did[q.pos[0]].text == cldr["en"][json.loads(q.src_content)["cldr_key"]].name
    for q in queries[("emoji_task6", "test")][1]:  # image + "in <language>?" -> that language's name
        src = json.loads(q.src_content)
        assert by_did[q.pos[0]].text == cldr[src["lang"]][src["cldr_key"]].name
    for q in queries[("emoji_task7", "test")][1]:  # composed: source + tone name -> exact variant
        src = json.loads(q.src_content)
        target = json.loads(by_did[q.pos[0]].src_content)
        assert target["emoji"] == src["target"]["emoji"] and chr(int(src["modifier"][2:], 16)) in target["emoji"]
        assert cldr["en"][chr(int(src["modifier"][2:], 16))].name == q.text
    for q in queries[("wordnet_task1", "test")][1]:  # definition -> the words of its synset
        lemmas = {lemma.casefold() for lemma in json.loads(q.src_content)["lemmas"]}
        assert {by_did[d].text.rsplit(" (", 1)[0].casefold() for d in q.pos} <= lemmas


def test_keyword_queries_have_several_positives_where_cldr_says_so(records):
    queries, _ = records
    counts = [len(q.pos) for split in SPLITS for q in queries[("emoji_task0", split)][1]]
    assert max(counts) > 1 and min(counts) >= 1


def test_images_decode_and_are_not_blank(records, root):
    queries, pools = records
    paths = {q.image for _, qs in queries.values() for q in qs if q.image}
    paths |= {c.image for pool in pools.values() for c in pool if c.image}
    store = ImageStore(root)
    assert 100 < len(paths) < 2000  # the subset: a few hundred emoji
    for path in sorted(paths):
        image = store.load(path, path)
        assert image.size == (136, 128)
        extrema = image.getextrema()
        assert any(lo != hi for lo, hi in extrema), f"{path} is a single colour"


def test_instructions_exist_for_every_task(records, directory):
    queries, pools = records
    registry = InstructionRegistry.from_tsv(directory.instructions_path)
    for (name, _), (tf, qs) in queries.items():
        prompts = registry.prompts(qs[0].dataset_id, qs[0].modality, tf.task.cand_modality)
        assert len(prompts) == 4 and len(set(prompts)) == 4
        assert {c.modality for c in pools[name]} == {tf.task.cand_modality}


def test_beir_set_reads_back(root):
    for split in ("train", "dev", "test"):
        data = beir.load_beir(root / "beir/wordnet", split)
        assert data.qrels and all(data.queries[q] for q in data.qrels)


def test_manifest_and_datasheet_describe_the_files(built, root):
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["subset"] is True and manifest["content_hash"] == built.content_hash
    assert set(manifest["sources"]) == {"fonts-noto-color-emoji", "unicode-cldr-core", "wordnet-base", "emoji"}
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    some = "query/test/mbeir_emoji_task7_test.jsonl"
    assert manifest["files"][some] == hashlib.sha256((root / some).read_bytes()).hexdigest()
    sheet = (root / "DATASHEET.md").read_text()
    for name, version in manifest["sources"].items():
        assert name in sheet and version in sheet
    assert "SUBSET" in sheet


def test_stats_table_counts_the_files(records, root):
    queries, _ = records
    table = stats_table(root)
    stats = {f"{s.dataset}_task{s.task.id}": s for s in task_stats(root)}
    assert len(table.strip().splitlines()) == 2 + len(stats) == 11
    for (name, split), (_, qs) in queries.items():
        assert stats[name].queries[split] == len(qs)


def test_existing_build_is_reused(built, root):
    again = build(root, subset=True)
    assert again.reused and again.content_hash == built.content_hash


def test_forced_rebuild_is_byte_identical(built, root):
    forced = build(root, subset=True, force=True)
    assert not forced.reused and forced.content_hash == built.content_hash


def test_a_changed_or_foreign_build_is_not_reused(built, root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    versions = built.sources
    assert reusable_manifest(copy, versions, subset=True) is not None
    assert reusable_manifest(copy, versions, subset=False) is None
    assert reusable_manifest(copy, {**versions, "emoji": "0.0"}, subset=True) is None
    (copy / "query/test/mbeir_emoji_task3_test.jsonl").write_text("{}\n")
    assert reusable_manifest(copy, versions, subset=True) is None


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.delenv("MMEMBED_WORDNET_DIR", raising=False)
    monkeypatch.setattr(sources, "DEFAULT_WORDNET", tmp_path / "no-wordnet")
    monkeypatch.setattr(sources, "_dpkg_files", lambda package: [])
    with pytest.raises(MissingDependencyError, match="wordnet-base.*apt-get install .*wordnet-base"):
        build(tmp_path / "out", subset=True)
    assert not (tmp_path / "out").exists()


def test_missing_emoji_package_names_pip(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "emoji", None)
    with pytest.raises(MissingDependencyError, match="pip install emoji"):
        sources.emoji_module()


# --- BEIR files ---------------------------------------------------------------------------------

def test_beir_round_trip(tmp_path):
    docs = [beir.BeirDoc("d1", "dog", "a domestic animal"), beir.BeirDoc("d2", "", "no title")]
    beir.write_corpus(tmp_path / "corpus.jsonl", docs)
    beir.write_queries(tmp_path / "queries.jsonl", {"q1": "the dog barked"})
    beir.write_qrels(tmp_path / "qrels" / "test.tsv", {"q1": {"d1": 1}})
    data = beir.load_beir(tmp_path, "test")
    assert list(data.corpus.values()) == docs and data.queries == {"q1": "the dog barked"}
    assert data.qrels == {"q1": {"d1": 1}}
    assert (tmp_path / "qrels/test.tsv").read_text().splitlines()[0] == "query-id\tcorpus-id\tscore"


def test_beir_errors_name_file_line_and_field(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "ok"}\n{"_id": "d2", "title": "t"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:2.*'d2'.*field 'text'"):
        beir.read_corpus(corpus)
    qrels = tmp_path / "test.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(DataError, match=r"test.tsv:2.*field 'score'"):
        beir.read_qrels(qrels)
    qrels.write_text("qid\tdid\n")
    with pytest.raises(DataError, match=r"test.tsv:1.*header"):
        beir.read_qrels(qrels)
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n')
    with pytest.raises(DataError, match=r"queries.jsonl:2.*duplicate"):
        beir.read_queries(queries)
