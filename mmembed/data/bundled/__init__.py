"""The bundled benchmark: a real multimodal retrieval benchmark in M-BEIR layout, built offline.

Its sources are registry packages written by people outside this project (Noto Color Emoji, the
Unicode CLDR annotations, WordNet 3.0 and the ``emoji`` list), so it can be built on any machine
of the project without a network. ``build(out_dir)`` writes emoji tasks (dataset 10) covering
every M-BEIR modality pair but task 5, a WordNet reverse-dictionary task (dataset 11), a BEIR text
set under ``beir/wordnet``, a datasheet and a manifest. See ``DATASHEET.md`` in the output.
"""

from mmembed.data.bundled.builder import BUILDER_VERSION, BuildResult, build
from mmembed.data.bundled.stats import TaskStats, stats_table, task_stats

__all__ = ["BUILDER_VERSION", "BuildResult", "TaskStats", "build", "stats_table", "task_stats"]
