"""Atomic writes: a crash leaves the old content or the new, never a mixture."""

from __future__ import annotations

import pytest

from mmembed.fileio import atomic_directory, atomic_open, iter_jsonl


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half of the new")
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_failed_directory_write_keeps_the_old_directory(tmp_path):
    target = tmp_path / "d"
    with atomic_directory(target) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "a").write_text("2")
        raise RuntimeError("crash")
    assert (target / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
    with atomic_directory(target) as staging:
        (staging / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]


def test_jsonl_resumes_after_a_given_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3}\n')
    assert [n for n, _ in iter_jsonl(path)] == [1, 3, 4]
    assert [o["a"] for _, o in iter_jsonl(path, start_line=4)] == [3]


def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path):
    from mmembed.data.beir import read_qrels
    from mmembed.errors import DataError
    from mmembed.instructions import InstructionRegistry

    jsonl = tmp_path / "q.jsonl"
    jsonl.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"q\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 11\)"):
        list(iter_jsonl(jsonl))
    tsv = tmp_path / "qrels.tsv"
    tsv.write_bytes(b"query-id\tcorpus-id\tscore\nq1\td\xff1\t1\n")
    with pytest.raises(DataError, match=r"qrels\.tsv:2: not UTF-8"):
        read_qrels(tsv)
    instructions = tmp_path / "query_instructions.tsv"
    instructions.write_bytes(b"query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\n"
                             b"text\timage\tx\t1\tFind \x80 it.\n")
    with pytest.raises(DataError, match=r"query_instructions\.tsv:2: not UTF-8"):
        InstructionRegistry.from_tsv(instructions)


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert [o for _, o in iter_jsonl(path)] == [{"a": 1}]


def test_a_duplicate_instruction_row_names_its_line(tmp_path):
    from mmembed.errors import DataError
    from mmembed.instructions import InstructionRegistry

    path = tmp_path / "query_instructions.tsv"
    row = "text\timage\tx\t1\tFind it.\n"
    path.write_text("query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\n" + row + row)
    with pytest.raises(DataError, match=r"query_instructions\.tsv:3: duplicate instructions"):
        InstructionRegistry.from_tsv(path)


def test_a_reader_goes_on_after_a_line_that_is_not_utf8(tmp_path):
    from mmembed.errors import DataError

    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n{"a": 3}\n')
    with pytest.raises(DataError, match=":2: not UTF-8"):
        list(iter_jsonl(path))
    assert [o["a"] for _, o in iter_jsonl(path, start_line=3)] == [3]
