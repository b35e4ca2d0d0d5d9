"""BEIR-style text retrieval evaluation (main metric nDCG@10), for the text side of the model."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmembed.data.beir import load_beir
from mmembed.encoders.base import Encoder, Item
from mmembed.eval.metrics import evaluate, topk_to_run
from mmembed.eval.trec import write_run
from mmembed.fileio import write_json
from mmembed.index.exact import ExactIndex
from mmembed.version import __version__

logger = logging.getLogger(__name__)

DEFAULT_BEIR_INSTRUCTION = "Given a query, retrieve passages that answer or match it."


@dataclass
class BeirResult:
    name: str
    split: str
    num_queries: int
    corpus_size: int
    scores: dict[str, float] = field(default_factory=dict)
    config: dict = field(default_factory=dict)


def run_beir_evaluation(encoder: Encoder, root: str | os.PathLike, *, split: str = "test",
                        instruction: str | None = DEFAULT_BEIR_INSTRUCTION,
                        metrics: Sequence[str] = ("ndcg@10", "recall@10", "hit@10", "mrr@10"), depth: int = 100,
                        batch_size: int = 64, max_queries: int | None = None, show_progress: bool = False,
                        output_dir: str | os.PathLike | None = None) -> BeirResult:
    """Embed the corpus and the split's queries, retrieve ``depth`` documents, score ``metrics``."""
    data = load_beir(root, split)
    query_ids = sorted(data.queries)[:max_queries]
    qrels = {q: data.qrels[q] for q in query_ids}
    doc_ids = sorted(data.corpus)
    docs = [Item(d, data.corpus[d].full_text) for d in doc_ids]
    queries = [Item(q, data.queries[q]) for q in query_ids]
    doc_vectors = encoder.encode_candidates(docs, batch_size=batch_size, show_progress=show_progress)
    query_vectors = encoder.encode_queries(queries, instruction, batch_size=batch_size, show_progress=show_progress)
    index = ExactIndex.from_vectors(doc_ids, doc_vectors)
    ids, scores = index.search(query_vectors, min(depth, len(doc_ids)))
    run = topk_to_run(query_ids, ids, scores)
    config = {"root": str(root), "split": split, "instruction": instruction, "depth": depth,
              "encoder_id": encoder.encoder_id, "mmembed_version": __version__}
    result = BeirResult(Path(root).name, split, len(query_ids), len(doc_ids), evaluate(run, qrels, metrics), config)
    logger.info("%s %s: %s", result.name, split, result.scores)
    if output_dir is not None:
        out = Path(output_dir)
        write_run(out / "runs" / f"beir-{result.name}-{split}.trec", run, tag="mmembed-beir")
        write_json(out / f"beir-{result.name}-{split}.json", result.__dict__)
    return result
