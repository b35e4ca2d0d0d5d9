"""What the service serves when it has no index: an encoder, its task instructions and a reranker.

:class:`EmbeddingModel` offers the parts of a :class:`~mmembed.retrieval.Retriever` that do not
need an index (``encoder``, ``reranker``, ``tasks``, ``task_instruction``), so the same service
answers embeddings, reranking and ``task=`` with or without one; searches need an index.
"""

from __future__ import annotations

from typing import Any

from mmembed.errors import ConfigError
from mmembed.instructions import InstructionEntry, InstructionRegistry


class EmbeddingModel:
    """An encoder served without an index."""

    index = None
    images = None

    def __init__(self, encoder: Any, instructions: InstructionRegistry | None = None, reranker: Any = None):
        self.encoder = encoder
        self.instructions = instructions or InstructionRegistry()
        self.reranker = reranker
        self.candidates: dict[str, Any] = {}

    def tasks(self) -> list[InstructionEntry]:
        return sorted(self.instructions, key=lambda e: (e.dataset_id, e.query_modality.value, e.cand_modality.value))

    def task_instruction(self, task: str) -> str:
        """The first prompt of a task, named as the search service does (``emoji:text->image``) or as
        M-BEIR does (``emoji_task0``)."""
        from mmembed.instructions import mbeir_task_name
        from mmembed.retrieval import task_name

        for entry in self.instructions:
            if task in (task_name(entry), mbeir_task_name(entry)):
                return entry.prompts[0]
        known = ", ".join(task_name(e) for e in self.tasks()) or "none (start the service with --instructions FILE)"
        raise ConfigError(f"unknown task {task!r}; known tasks: {known}")


def has_index(source: Any) -> bool:
    return getattr(source, "index", None) is not None
