"""The demo's search section: seeded random queries per task, marked answers, an honest hit rate."""

from __future__ import annotations

import re

from toy import ToyEncoder

from mmembed.data.layout import MBEIRDirectory
from mmembed.demo import show_examples
from mmembed.retrieval import Retriever


def test_every_task_gets_sampled_queries_and_its_hit_rate(toy_dir, tmp_path, capsys):
    directory = MBEIRDirectory(toy_dir)
    retriever = Retriever.build(ToyEncoder(), directory.global_pool("test"), tmp_path / "index", encoder_spec="toy",
                                image_root=toy_dir, instructions_path=directory.instructions_path,
                                show_progress=False)
    show_examples(retriever, directory, seed=1)
    first = capsys.readouterr().out
    rates = re.findall(r"### (\S+) .*hit@5 on (\d+) random test queries: (\d+)/(\d+)", first)
    assert sorted(r[0] for r in rates) == sorted(t.name for t in directory.tasks("test"))
    assert all(int(n) == int(total) > 0 and 0 <= int(hits) <= int(total) for _, n, hits, total in rates)
    assert "*" in first  # the toy encoder answers its colour queries: marked answers appear
    show_examples(retriever, directory, seed=1)
    assert capsys.readouterr().out == first  # seeded: the same queries every time
