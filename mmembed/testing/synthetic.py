"""Synthetic M-BEIR splits of any size, with their pool and query embeddings written directly.

For scale tests and benchmarks of search: a text-to-text task whose candidates are random unit
vectors and whose queries lie near their positive (noise ``noise``), so scores are far from
perfect and every ranking is known only by searching. Files are streamed out (a 5.6M-candidate
pool never sits in memory); the embeddings are written in ``mmembed encode``'s store format and
the query vectors in ``mmembed encode --queries``'s, under the encoder id ``synthetic-<dim>``, so
``mmembed evaluate DIR --embeddings E --query-embeddings Q`` runs without any encoder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmembed.data.layout import global_pool_file, local_pool_file, qrels_file, query_file
from mmembed.embeddings.store import MANIFEST, Identity, Manifest, claim_directory, ids_fingerprint, write_chunk
from mmembed.fileio import atomic_open, file_sha256, write_json
from mmembed.instructions import InstructionEntry, InstructionRegistry
from mmembed.types import Modality

DATASET, DATASET_ID, TASK_ID = "toy", 10, 1
INSTRUCTIONS = ("Find the matching passage.", "Retrieve the text that answers this.")


@dataclass(frozen=True)
class Synthetic:
    root: Path
    embeddings: Path
    queries: Path
    encoder_id: str
    candidates: int
    num_queries: int


def _candidate_id(n: int) -> str:
    return f"{DATASET_ID}:{n}"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_synthetic(root: Path, *, candidates: int, queries: int, dim: int, seed: int = 0, noise: float = 1.0,
                    chunk_size: int = 65_536, dtype: str = "float16", local_size: int | None = None,
                    modes: tuple[str, ...] = ("random", "none"), duplicates: int = 0) -> Synthetic:
    """Write the split ``test`` of a synthetic M-BEIR directory under ``root`` and its embeddings.

    ``local_size``: candidates of the task's local pool (the positives plus the first others;
    default all). ``duplicates``: that many candidates copy the vector of candidate 0 (exact ties).
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    encoder_id = f"synthetic-{dim}"
    pool_path = root / global_pool_file("test")
    pool_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(pool_path) as f:
        for n in range(candidates):
            f.write(json.dumps({"did": _candidate_id(n), "txt": f"passage {n}", "img_path": None,
                                "modality": "text"}) + "\n")
    positives = rng.choice(candidates, queries, replace=False) if queries <= candidates else \
        rng.integers(0, candidates, queries)
    local = set(range(min(candidates, local_size or candidates))) | {int(p) for p in positives}
    local_path = root / local_pool_file(DATASET, TASK_ID)
    local_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(local_path) as f:
        for n in sorted(local):
            f.write(json.dumps({"did": _candidate_id(n), "txt": f"passage {n}", "img_path": None,
                                "modality": "text"}) + "\n")
    qids = [f"{DATASET_ID}:q{i}" for i in range(queries)]
    qpath = root / query_file(DATASET, TASK_ID, "test")
    qpath.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(qpath) as f:
        for qid, pos in zip(qids, positives):
            f.write(json.dumps({"qid": qid, "query_txt": f"question {qid}", "query_img_path": None,
                                "query_modality": "text", "pos_cand_list": [_candidate_id(int(pos))],
                                "neg_cand_list": [], "task_id": TASK_ID}) + "\n")
    qrels_path = root / qrels_file(DATASET, TASK_ID, "test")
    qrels_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(qrels_path) as f:
        for qid, pos in zip(qids, positives):
            f.write(f"{qid} 0 {_candidate_id(int(pos))} 1 {TASK_ID}\n")
    InstructionRegistry([InstructionEntry(DATASET, DATASET_ID, Modality.TEXT, Modality.TEXT, INSTRUCTIONS)]
                        ).to_tsv(root / "instructions" / "query_instructions.tsv")
    embeddings = _write_pool_vectors(root / "embeddings", pool_path, candidates, dim, seed, chunk_size, dtype,
                                     encoder_id, duplicates)
    query_dir = _write_query_vectors(root, qids, positives, dim, seed, noise, encoder_id, embeddings, modes)
    return Synthetic(root, embeddings, query_dir, encoder_id, candidates, queries)


def _pool_chunk(seed: int, chunk: int, rows: int, dim: int) -> np.ndarray:
    """Vectors of one chunk, from their own seed: any chunk can be made again without the others."""
    return _unit(np.random.default_rng([seed, 1, chunk]).standard_normal((rows, dim)).astype(np.float32))


def _write_pool_vectors(out: Path, pool_path: Path, count: int, dim: int, seed: int, chunk_size: int, dtype: str,
                        encoder_id: str, duplicates: int) -> Path:
    identity = Identity("candidates", encoder_id, file_sha256(pool_path),
                        ids_fingerprint(_candidate_id(n) for n in range(count)), count, dim, dtype, chunk_size)
    out.mkdir(parents=True, exist_ok=True)
    claim_directory(out, identity)
    first = _pool_chunk(seed, 0, min(chunk_size, count), dim)[0]
    for chunk in range(identity.num_chunks):
        start, stop = identity.chunk_rows(chunk)
        vectors = _pool_chunk(seed, chunk, stop - start, dim)
        dup = np.arange(start, stop) - 1
        vectors[(dup >= 0) & (dup < duplicates)] = first  # rows 1..duplicates copy row 0
        write_chunk(out, chunk, [_candidate_id(n) for n in range(start, stop)], vectors.astype(dtype),
                    np.zeros(stop - start, dtype=np.int8))
    # the spec names no loadable encoder: these vectors were never encoded (search them through an index)
    write_json(out / MANIFEST, Manifest(identity, encoder_id, str(pool_path.resolve()), "mmembed synthetic").to_dict())
    return out


def _write_query_vectors(root: Path, qids: list[str], positives: np.ndarray, dim: int, seed: int, noise: float,
                         encoder_id: str, embeddings: Path, modes: tuple[str, ...]) -> Path:
    """Queries near their positive; "random" mode leans each by a per-instruction offset (so modes differ)."""
    from mmembed.data.layout import MBEIRDirectory
    from mmembed.data.mbeir import read_queries
    from mmembed.embeddings.queries import MANIFEST as QUERIES_MANIFEST
    from mmembed.embeddings.queries import choose_instructions
    from mmembed.embeddings.store import EmbeddingSet

    store = EmbeddingSet.open(embeddings)
    chunk_size = store.identity.chunk_size
    base = np.empty((len(qids), dim), dtype=np.float32)
    chunk_of, row_of = np.divmod(positives.astype(np.int64), chunk_size)
    for chunk in np.unique(chunk_of):  # each chunk made once: the positives' vectors, as stored
        rows = min(chunk_size, store.identity.count - int(chunk) * chunk_size)
        here = np.flatnonzero(chunk_of == chunk)
        base[here] = _pool_chunk(seed, int(chunk), rows, dim)[row_of[here]]
    directory = MBEIRDirectory(root)
    (task,) = directory.select_tasks("test")
    queries = read_queries(task.queries)
    registry = directory.instructions()
    out = root / "query-embeddings"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    noisy = base + noise * _unit(rng.standard_normal(base.shape).astype(np.float32))
    for mode in modes:
        chosen = choose_instructions(queries, task, registry, mode, 0)
        lean = np.stack([_instruction_offset(c, dim) for c in chosen])
        vectors = _unit(noisy + lean).astype(np.float32)
        with atomic_open(out / f"{task.name}.{mode}.npz", "wb") as f:
            np.savez(f, qids=np.array(qids, dtype=str), instructions=np.array([c or "" for c in chosen], dtype=str),
                     has_instruction=np.array([c is not None for c in chosen]), vectors=vectors)
    inputs = {task.name: file_sha256(task.queries)}
    if any(m != "none" for m in modes):
        inputs["query_instructions.tsv"] = file_sha256(directory.instructions_path)
    write_json(out / QUERIES_MANIFEST, {
        "kind": "queries", "format_version": 1, "encoder_id": encoder_id, "encoder_spec": None, "dim": dim,
        "split": "test", "seed": 0, "text_format": "raw", "instruction_modes": list(modes), "max_queries": None,
        "tasks": [task.name], "inputs": inputs, "created_by": "mmembed synthetic"})
    return out


def _instruction_offset(instruction: str | None, dim: int) -> np.ndarray:
    if instruction is None:
        return np.zeros(dim, dtype=np.float32)
    seed = int.from_bytes(hashlib.sha256(instruction.encode()).digest()[:4], "little")
    return 0.3 * _unit(np.random.default_rng(seed).standard_normal((1, dim)).astype(np.float32))[0]
