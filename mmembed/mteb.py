"""MTEB integration: an mmembed model as an ``mteb`` encoder, and M-BEIR tasks as ``mteb`` retrieval tasks.

```python
import mteb
import mmembed
from mmembed.mteb import MTEBModel, mbeir_task

model = MTEBModel(mmembed.load("cpu-default-stage3"))
results = mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]))              # any text or any-to-any task
results = mteb.evaluate(model, [mbeir_task("data/bundled", "emoji_task0")])    # a local M-BEIR task
```

:class:`MTEBModel` implements mteb's ``EncoderProtocol``: ``encode`` receives a DataLoader of
batches (dicts with ``text`` and/or ``image`` columns, ``query`` and ``instruction`` for
instruction-retrieval queries) and ``prompt_type`` says whether they are queries or documents.
Queries get an instruction — the per-query ``instruction`` column when the task has one, else the
per-task mapping given here, else the task's own prompt (mteb's order, through
``AbsEncoder.get_instruction``); documents never do (MM-Embed's convention). Without a prompt type
(symmetric tasks: STS, clustering, classification) inputs are embedded as queries with the task's
instruction, as NV-Embed and MM-Embed evaluate MTEB.

Requires the ``mteb`` package (``pip install mteb``, part of mmembed's ``dev`` extra).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mmembed.api import Embedder
from mmembed.encoders.base import Encoder, Item
from mmembed.errors import ConfigError, MissingDependencyError

try:
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType
except ImportError as e:  # the module is only imported by those who want MTEB
    raise MissingDependencyError(f"mmembed.mteb needs the mteb package ({e}); install it with: pip install mteb "
                                 "(or pip install mmembed[dev])") from None

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from mmembed.types import Candidate, Query

logger = logging.getLogger(__name__)

#: M-BEIR modality -> the letters of mteb's task categories (``t2i``, ``it2it``, ...).
_CATEGORY_LETTERS = {"text": "t", "image": "i", "image,text": "it"}


class MTEBModel(AbsEncoder):
    """An mmembed model in mteb's encoder protocol.

    ``model`` is an :class:`~mmembed.api.Embedder` (``mmembed.load(...)``), an mmembed
    :class:`Encoder`, or a name or folder to load. ``instructions`` maps mteb task names (or task
    types, or ``"query"``) to the instruction used for that task's queries, overriding the task's
    own prompt.
    """

    def __init__(self, model: Embedder | Encoder | str | os.PathLike, *,
                 instructions: Mapping[str, str] | None = None, name: str | None = None):
        if isinstance(model, (str, os.PathLike)):
            from mmembed.api import load

            model = load(model)
        self.model = model if isinstance(model, Embedder) else Embedder(model)
        self.prompts_dict = dict(instructions) if instructions else None
        self.mteb_model_meta = _model_meta(self.model, name)

    def encode(self, inputs: DataLoader, *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        """Embeddings (n, dim) of every batch of ``inputs``, in order; float32, L2-normalised."""
        is_document = prompt_type == PromptType.document
        # Symmetric tasks (no prompt type) are embedded as queries, so they look up the query prompt.
        task_instruction = None if is_document else (
            self.get_instruction(task_metadata, prompt_type or PromptType.query) or None)
        show = bool(kwargs.get("show_progress_bar", False))
        rows = []
        for batch in inputs:
            items = batch_items(batch, f"{task_metadata.name}/{hf_subset}/{hf_split}/{len(rows)}")
            if is_document:
                rows.append(self.model.encode_candidates(items, batch_size=len(items), show_progress=show))
                continue
            instruction = _batch_instructions(batch, len(items)) or task_instruction
            rows.append(self.model.encode_queries(items, instruction=instruction, batch_size=len(items),
                                                  show_progress=show))
        return np.concatenate(rows) if rows else np.zeros((0, self.model.dim), dtype=np.float32)


def batch_items(batch: Mapping[str, Any], where: str) -> list[Item]:
    """Items from one mteb batch: ``text`` (or a query's raw ``query`` text) and/or ``image``."""
    # mteb appends a query's instruction to "text" and keeps the raw text in "query"; the
    # instruction goes into MM-Embed's prompt instead.
    texts = batch.get("query", batch.get("text"))
    images = batch.get("image")
    n = len(texts) if texts is not None else len(images) if images is not None else 0
    if n == 0:
        raise ConfigError(f"{where}: an mteb batch without a text or image column (got {sorted(batch)})")
    ids = [str(i) for i in batch["id"]] if "id" in batch else [f"{where}#{i}" for i in range(n)]
    return [Item(ids[i], text=(texts[i] or None) if texts is not None else None,
                 image=images[i] if images is not None else None) for i in range(n)]


def _batch_instructions(batch: Mapping[str, Any], n: int) -> list[str | None] | None:
    instructions = batch.get("instruction")
    if instructions is None:
        return None
    return [instructions[i] or None for i in range(n)]


def _model_meta(model: Embedder, name: str | None) -> ModelMeta:
    # mteb wants "organisation/name"; a folder path keeps only its last component.
    label = name or f"mmembed/{Path(model.name).name or model.name}"
    return ModelMeta.create_empty({
        "name": label if "/" in label else f"mmembed/{label}",
        "revision": model.encoder_id.replace(":", "-"),
        "modalities": ["text", "image"],
        "embed_dim": model.dim,
        "similarity_fn_name": ScoringFunction.COSINE,
        "use_instructions": True,
        "framework": ["PyTorch"],
        "open_weights": True,
    })


# --- M-BEIR tasks as mteb tasks ----------------------------------------------------------------------


def mbeir_task(data_dir: str | os.PathLike, task: str, *, split: str = "test",
               pool: Literal["local", "global"] = "local", instructions: Literal["fixed", "random"] = "fixed",
               seed: int = 0, max_queries: int | None = None) -> AbsTaskRetrieval:
    """One task of an M-BEIR directory (e.g. ``emoji_task0``) as an mteb retrieval task.

    The queries are the split's (the first ``max_queries``), the corpus the task's local pool or
    the split's global pool, the qrels the task's. ``fixed`` gives every query the task's first
    instruction (the task's mteb prompt); ``random`` gives each query the instruction mmembed's
    evaluation draws for it with ``seed`` (an ``instruction`` column, as mteb's instruction
    retrieval tasks have). mmembed's own evaluation of the same setting scores identically.
    """
    from mmembed.data.layout import MBEIRDirectory
    from mmembed.data.mbeir import read_candidates, read_qrels, read_queries

    directory = MBEIRDirectory(data_dir)
    files = directory.select_tasks(split, [task])[0]
    queries = read_queries(files.queries)[:max_queries]
    corpus = read_candidates(files.local_pool if pool == "local" else directory.global_pool(split))
    qrels = read_qrels(files.qrels) if files.qrels.is_file() else {}
    relevant = {q.qid: qrels.get(q.qid) or {did: 1 for did in q.pos} for q in queries}
    registry = directory.instructions()
    prompts = registry.prompts(queries[0].dataset_id, files.task.query_modality, files.task.cand_modality)
    per_query = ([registry.choose(q, files.task.cand_modality, "random", seed) for q in queries]
                 if instructions == "random" else None)
    metadata = _task_metadata(f"MBEIR-{files.name}-{split}-{pool}", files.task.query_modality.value,
                              sorted({c.modality.value for c in corpus}), split, prompts[0])
    split_data = {"queries": _records_dataset(queries, directory.root, metadata, query=True, instructions=per_query),
                  "corpus": _records_dataset(corpus, directory.root, metadata, query=False),
                  "relevant_docs": relevant, "top_ranked": None}
    return _retrieval_task(metadata, {"default": {split: split_data}})


def _task_metadata(name: str, query_modality: str, cand_modalities: Sequence[str], split: str,
                   prompt: str) -> TaskMetadata:
    cand_letters = "".join(sorted({c for m in cand_modalities for c in _CATEGORY_LETTERS[m]}, key="it".index))
    category = f"{_CATEGORY_LETTERS[query_modality]}2{cand_letters}"
    modalities = [modality for modality, letter in (("image", "i"), ("text", "t")) if letter in category]
    return TaskMetadata(
        name=name, description=f"An M-BEIR task read by mmembed ({name}).", reference=None,
        dataset={"path": "local", "revision": "local"}, type="Any2AnyRetrieval", category=category,
        modalities=modalities, eval_splits=[split], eval_langs=["eng-Latn"], main_score="ndcg_at_10",
        date=None, domains=None, task_subtypes=None, license="not specified", annotations_creators="derived",
        dialect=None, sample_creation="found", bibtex_citation="", prompt={"query": prompt})


def _records_dataset(records: Sequence[Query | Candidate], root: Path, metadata: TaskMetadata, *, query: bool,
                     instructions: Sequence[str | None] | None = None) -> Any:
    """An mteb dataset (``id``, ``text``, ``image`` paths decoded by ``datasets``) of M-BEIR records."""
    import datasets

    from mmembed.data.images import ImageStore

    wanted = metadata.get_modalities(PromptType.query if query else PromptType.document)
    images = ImageStore(root)
    columns: dict[str, list[Any]] = {"id": [r.id for r in records]}
    if "text" in wanted:
        columns["text"] = [r.text or "" for r in records]  # mteb's collate refuses None; "" means no text
    if "image" in wanted:
        columns["image"] = [str(images.resolve(r.image, r.id)) if r.image else None for r in records]
    if instructions is not None:
        columns["instruction"] = list(instructions)
    dataset = datasets.Dataset.from_dict(columns)
    return dataset.cast_column("image", datasets.Image()) if "image" in columns else dataset


def _retrieval_task(metadata: TaskMetadata, data: dict[str, dict[str, Any]]) -> AbsTaskRetrieval:
    """An instance of a retrieval task class made for ``metadata`` whose data is already loaded."""

    def load_data(self: AbsTaskRetrieval, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = data
        self.data_loaded = True

    cls = type(metadata.name.replace("-", "_"), (AbsTaskRetrieval,), {"metadata": metadata, "load_data": load_data})
    return cls()

