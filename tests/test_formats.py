"""M-BEIR records, qrels, instructions TSV and TREC runs: read and written exactly as published."""

from __future__ import annotations

import json

import pytest

from mmembed.data.mbeir import (
    candidate_to_dict,
    iter_candidates,
    parse_candidate,
    parse_query,
    query_to_dict,
    read_qrels,
    read_queries,
    write_qrels,
)
from mmembed.errors import DataError
from mmembed.eval.trec import read_run, write_run
from mmembed.instructions import InstructionRegistry
from mmembed.types import Modality, Task

# Lines in the exact shape of the M-BEIR release (key order and null/list conventions included).
QUERY_LINE = ('{"qid": "9:1", "query_txt": "A man with a red helmet on a small moped on a dirt road. ", '
              '"query_img_path": null, "query_modality": "text", "query_src_content": null, '
              '"pos_cand_list": ["9:2", "9:5"], "neg_cand_list": []}')
CAND_LINE = ('{"txt": null, "img_path": "mbeir_images/mscoco_images/val2014/COCO_val2014_000000391895.jpg", '
             '"modality": "image", "did": "9:2", "src_content": null}')
IT_QUERY_LINE = ('{"qid": "6:77", "query_txt": "What is the name of this bird?", '
                 '"query_img_path": "mbeir_images/infoseek_images/x.jpg", "query_modality": "image,text", '
                 '"query_src_content": "{\\"id\\": 1}", "pos_cand_list": ["6:3"], "neg_cand_list": ["6:4"]}')


def test_golden_lines_round_trip_byte_identical():
    for line, parse, dump in ((QUERY_LINE, parse_query, query_to_dict), (IT_QUERY_LINE, parse_query, query_to_dict),
                              (CAND_LINE, parse_candidate, candidate_to_dict)):
        assert json.dumps(dump(parse(json.loads(line)))) == line


def test_query_fields_are_read():
    q = parse_query(json.loads(IT_QUERY_LINE))
    assert q.modality is Modality.IMAGE_TEXT and q.pos == ("6:3",) and q.neg == ("6:4",)
    assert q.dataset_id == 6 and q.image.endswith("x.jpg")


def test_extra_fields_survive_a_round_trip():
    obj = json.loads(QUERY_LINE) | {"neg_types": ["modality"]}
    assert query_to_dict(parse_query(obj))["neg_types"] == ["modality"]


def test_task_ids_follow_modalities():
    assert Task(Modality.TEXT, Modality.IMAGE).id == 0
    assert Task(Modality.IMAGE_TEXT, Modality.IMAGE).id == 7
    assert Task.from_id(8) == Task(Modality.IMAGE_TEXT, Modality.IMAGE_TEXT)
    assert {Task.from_id(i).id for i in range(9)} == set(range(9))
    with pytest.raises(DataError, match="0-8"):
        Task.from_id(9)


def test_modality_is_decided_from_fields():
    assert Modality.of(True, False) is Modality.TEXT
    assert Modality.of(False, True) is Modality.IMAGE
    assert Modality.of(True, True) is Modality.IMAGE_TEXT
    with pytest.raises(DataError):
        Modality.of(False, False)


@pytest.mark.parametrize("mutate, field, message", [
    (lambda o: o.pop("query_modality"), "query_modality", "missing field"),
    (lambda o: o.update(query_modality="video"), "query_modality", "unknown modality 'video'"),
    (lambda o: o.update(query_modality="image"), "query_modality", "says 'image' but the record carries 'text'"),
    (lambda o: o.update(pos_cand_list="9:2"), "pos_cand_list", "list of id strings"),
    (lambda o: o.update(qid=17), "qid", "dataset_id"),
    (lambda o: o.update(query_txt=5), "query_txt", "string or null"),
])
def test_bad_query_fields_name_file_line_and_field(mutate, field, message):
    obj = json.loads(QUERY_LINE)
    mutate(obj)
    from mmembed.errors import Location

    with pytest.raises(DataError) as err:
        parse_query(obj, Location("q.jsonl", 7))
    text = str(err.value)
    assert "q.jsonl:7" in text and repr(field) in text and message in text


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text(CAND_LINE + "\n" + '{"txt": "x", "img_path": null,\n')
    with pytest.raises(DataError, match=r"pool.jsonl:2: malformed JSON"):
        list(iter_candidates(path))


def test_duplicate_id_is_an_error(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(QUERY_LINE + "\n" + QUERY_LINE + "\n")
    with pytest.raises(DataError, match="duplicate id"):
        read_queries(path)


def test_qrels_round_trip_with_task_column(tmp_path):
    path = tmp_path / "qrels.txt"
    write_qrels(path, {"9:1": {"9:2": 1, "9:5": 1}}, task_ids=0)
    assert path.read_text() == "9:1 0 9:2 1 0\n9:1 0 9:5 1 0\n"
    assert read_qrels(path) == {"9:1": {"9:2": 1, "9:5": 1}}


def test_qrels_errors_name_the_line(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("9:1 0 9:2 1 0\n9:1 0 9:3 yes 0\n")
    with pytest.raises(DataError, match=r"qrels.txt:2.*'relevance'"):
        read_qrels(path)
    path.write_text("9:1 0 9:2\n")
    with pytest.raises(DataError, match="3 columns"):
        read_qrels(path)


TSV = ("query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4\n"
       "text\timage\tmscoco\t9\tFind me an everyday image that matches the given caption.\tB\tC\tD\n"
       "image\ttext\tmscoco\t9\tFind an image caption describing the following everyday image.\tB2\tC2\tD2\n")


def test_instructions_tsv_read_write_and_choice(tmp_path):
    path = tmp_path / "query_instructions.tsv"
    path.write_text(TSV)
    registry = InstructionRegistry.from_tsv(path)
    prompts = registry.prompts(9, Modality.TEXT, Modality.IMAGE)
    assert prompts[0].startswith("Find me an everyday image") and len(prompts) == 4
    registry.to_tsv(tmp_path / "again.tsv")
    assert InstructionRegistry.from_tsv(tmp_path / "again.tsv").prompts(9, "image", "text") == ("Find an image "
           "caption describing the following everyday image.", "B2", "C2", "D2")

    q = parse_query(json.loads(QUERY_LINE))
    first = registry.choose(q, Modality.IMAGE, "random", seed=1)
    assert first == registry.choose(q, Modality.IMAGE, "random", seed=1)  # seeded, order-independent
    seen = {registry.choose(q, Modality.IMAGE, "random", seed=s) for s in range(40)}
    assert seen == set(prompts)  # every prompt gets drawn for some seed
    assert registry.choose(q, Modality.IMAGE, "fixed", fixed_index=2) == "C"
    assert registry.choose(q, Modality.IMAGE, "none") is None
    with pytest.raises(DataError, match="no instruction for dataset 9 text -> text"):
        registry.choose(q, Modality.TEXT)


def test_instructions_tsv_errors_name_line_and_field(tmp_path):
    path = tmp_path / "i.tsv"
    path.write_text(TSV + "text\tvideo\tmscoco\t9\tX\n")
    with pytest.raises(DataError, match=r"i.tsv:4.*'cand_modality'"):
        InstructionRegistry.from_tsv(path)


def test_trec_run_round_trip(tmp_path):
    run = {"q1": {"d1": 0.5, "d2": 0.9}, "q2": {"d3": 0.1}}
    write_run(tmp_path / "run.trec", run, tag="test")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[0] == "q1 Q0 d2 1 0.9 test" and lines[1] == "q1 Q0 d1 2 0.5 test"
    assert read_run(tmp_path / "run.trec") == run
