"""Where task instructions come from: a registry, a ``query_instructions.tsv``, an M-BEIR folder,
or the bundled benchmark's (read from the code that writes its TSV, so no build is needed).
"""

from __future__ import annotations

import os
from pathlib import Path

from mmembed.instructions import InstructionEntry, InstructionRegistry

#: A registry, a query_instructions.tsv, or an M-BEIR folder.
InstructionSource = InstructionRegistry | str | os.PathLike


def read_instructions(source: InstructionSource | None) -> InstructionRegistry:
    """Instructions from a registry, a ``query_instructions.tsv`` or an M-BEIR folder; ``None``: the bundled ones."""
    if source is None:
        return bundled_instructions()
    if isinstance(source, InstructionRegistry):
        return source
    path = Path(source)
    if path.is_dir():
        from mmembed.data.layout import MBEIRDirectory

        return MBEIRDirectory(path).instructions()
    return InstructionRegistry.from_tsv(path)


def bundled_instructions() -> InstructionRegistry:
    """The bundled benchmark's task instructions, from the code that writes its TSV (no build needed)."""
    from mmembed.data.bundled import emoji_tasks, wordnet_tasks
    from mmembed.types import Task

    entries = [InstructionEntry(emoji_tasks.DATASET, emoji_tasks.DATASET_ID, Task.from_id(task_id).query_modality,
                                Task.from_id(task_id).cand_modality, prompts)
               for task_id, prompts in emoji_tasks.PROMPTS.items()]
    text_task = Task.from_id(1)  # WordNet's reverse dictionary: definition (text) -> word (text)
    entries.append(InstructionEntry(wordnet_tasks.DATASET, wordnet_tasks.DATASET_ID, text_task.query_modality,
                                    text_task.cand_modality, wordnet_tasks.PROMPTS))
    return InstructionRegistry(entries)
