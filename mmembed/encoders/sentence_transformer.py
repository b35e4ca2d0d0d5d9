"""A sentence-transformers model folder (text only) as an mmembed encoder.

Folders written by sentence-transformers (``modules.json`` beside the transformer's files, e.g.
all-MiniLM-L6-v2) load through :func:`~mmembed.encoders.registry.load_encoder` like any other
model: candidates are embedded as sentence-transformers embeds them (its own modules, pooling and
normalisation; L2-normalised here), and a query's instruction is put before its text as UniIR does
for text towers (``"{instruction} {text}"``). Items with an image are refused: the model reads text
only. sentence-transformers is imported when such a folder is loaded (``pip install mmembed[st]``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.dependencies import require_module
from mmembed.encoders.base import Instructions, Item, l2_normalize, per_item_instructions
from mmembed.encoders.devices import resolve_device
from mmembed.encoders.inputs import check_items
from mmembed.encoders.prompts import uniir_query_text
from mmembed.encoders.registry import register_folder_loader

MODULES_FILE = "modules.json"


class SentenceTransformerEncoder:
    """Text-only encoder over a local sentence-transformers model (see the module docstring)."""

    def __init__(self, model: Any, source: str | os.PathLike):
        self.model = model
        self.source = str(source)
        self.dim = int(model.get_sentence_embedding_dimension())
        self.encoder_id = f"sentence-transformers:{Path(self.source).name}"

    @classmethod
    def from_folder(cls, path: str | os.PathLike, *, device: str | None = None, trust_remote_code: bool = False,
                    **settings: Any) -> SentenceTransformerEncoder:
        """Load ``path`` (never downloads); ``settings`` go to ``SentenceTransformer`` (e.g. ``truncate_dim``)."""
        st = require_module("sentence_transformers", extra="st", what="sentence-transformers")
        model = st.SentenceTransformer(str(path), device=str(resolve_device(device)), local_files_only=True,
                                       trust_remote_code=trust_remote_code, **settings)
        return cls(model, Path(path).resolve())

    def encode_queries(self, queries: Sequence[Item], instruction: Instructions = None, *,
                       batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        instructions = per_item_instructions(instruction, len(queries))
        texts = [uniir_query_text(q.text, i) for q, i in zip(queries, instructions)]
        return self._encode(queries, texts, batch_size, show_progress)

    def encode_candidates(self, candidates: Sequence[Item], *, batch_size: int = 32,
                          show_progress: bool = False) -> np.ndarray:
        return self._encode(candidates, [c.text for c in candidates], batch_size, show_progress)

    def _encode(self, items: Sequence[Item], texts: list[str | None], batch_size: int,
                show_progress: bool) -> np.ndarray:
        check_items(items, accepts_images=False, encoder_name=self.encoder_id)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=batch_size, show_progress_bar=show_progress,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return l2_normalize(vectors)


register_folder_loader("sentence_transformers", SentenceTransformerEncoder.from_folder)
