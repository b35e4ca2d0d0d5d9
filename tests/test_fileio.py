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
