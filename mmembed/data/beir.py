"""BEIR text-retrieval files: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``.

This is the format of the text-only stage of training and of text evaluation (nDCG@10). Readers
stream and name file, line and field on every problem; writers are atomic.

```
ROOT/corpus.jsonl        {"_id": ..., "title": ..., "text": ...}
ROOT/queries.jsonl       {"_id": ..., "text": ...}
ROOT/qrels/{split}.tsv   header "query-id<TAB>corpus-id<TAB>score", then one row per judgement
```
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mmembed.errors import DataError, Location
from mmembed.fileio import atomic_open, iter_jsonl, iter_text_lines, write_jsonl
from mmembed.types import Qrels

QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass(frozen=True)
class BeirDoc:
    """One corpus document."""

    id: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """Title and text as most BEIR encoders see them (the title first, when there is one)."""
        return f"{self.title}. {self.text}" if self.title else self.text


def _string(obj: dict, key: str, loc: Location, required: bool = True) -> str:
    if key not in obj:
        if required:
            raise DataError("missing field", Location(loc.file, loc.line, key, loc.item))
        return ""
    value = obj[key]
    if not isinstance(value, str) or (key == "_id" and not value.strip()):
        reason = f"expected a non-empty string, got {value!r}" if key == "_id" else \
            f"expected a string, got {type(value).__name__}"
        raise DataError(reason, Location(loc.file, loc.line, key, loc.item))
    return value


def _corpus_lines(path: str | os.PathLike) -> Iterator[tuple[int, str, BeirDoc]]:
    for lineno, obj in iter_jsonl(path):
        loc = Location(str(path), lineno)
        doc_id = _string(obj, "_id", loc)
        loc = Location(str(path), lineno, None, doc_id)
        yield lineno, doc_id, BeirDoc(doc_id, _string(obj, "title", loc, required=False), _string(obj, "text", loc))


def _query_lines(path: str | os.PathLike) -> Iterator[tuple[int, str, str]]:
    for lineno, obj in iter_jsonl(path):
        query_id = _string(obj, "_id", Location(str(path), lineno))
        yield lineno, query_id, _string(obj, "text", Location(str(path), lineno, None, query_id))


def iter_queries(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """Stream ``(query id, text)`` from a ``queries.jsonl``."""
    return ((query_id, text) for _, query_id, text in _query_lines(path))


def read_corpus(path: str | os.PathLike) -> dict[str, BeirDoc]:
    """All documents by id; a duplicate id is an error naming its line."""
    return _unique(_corpus_lines(path), path)


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """All queries, id -> text; a duplicate id is an error naming its line."""
    return _unique(_query_lines(path), path)


def _unique(rows: Iterable[tuple[int, str, object]], path) -> dict:
    out: dict = {}
    for lineno, key, value in rows:
        if key in out:
            raise DataError("duplicate id", Location(str(path), lineno, "_id", key))
        out[key] = value
    return out


def iter_qrels(path: str | os.PathLike) -> Iterator[tuple[int, str, str, int]]:
    """Stream ``(line, query id, corpus id, score)`` from a BEIR qrels TSV (header required)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", Location(str(path)))
    for lineno, line in iter_text_lines(path):
        if lineno == 1:
            if tuple(c.strip() for c in line.split("\t")) != QRELS_HEADER:
                raise DataError(f"expected the header {chr(9).join(QRELS_HEADER)!r}, got {line!r}",
                                Location(str(path), 1))
            continue
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 3:
            raise DataError(f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(cols)}",
                            Location(str(path), lineno))
        query_id, doc_id, score = (c.strip() for c in cols)
        for name, value in (("query-id", query_id), ("corpus-id", doc_id)):
            if not value:
                raise DataError("empty id", Location(str(path), lineno, name))
        try:
            relevance = int(score)
        except ValueError:
            raise DataError(f"score {score!r} is not an integer", Location(str(path), lineno, "score",
                                                                             query_id)) from None
        yield lineno, query_id, doc_id, relevance


def read_qrels(path: str | os.PathLike) -> Qrels:
    """``{query id: {corpus id: score}}``; a repeated pair is an error naming its line."""
    qrels: Qrels = {}
    for lineno, query_id, doc_id, score in iter_qrels(path):
        docs = qrels.setdefault(query_id, {})
        if doc_id in docs:
            raise DataError(f"repeated judgement for corpus id {doc_id!r}", Location(str(path), lineno, None, query_id))
        docs[doc_id] = score
    return qrels


def write_corpus(path: str | os.PathLike, docs: Iterable[BeirDoc]) -> int:
    return write_jsonl(path, ({"_id": d.id, "title": d.title, "text": d.text} for d in docs))


def write_queries(path: str | os.PathLike, queries: Iterable[tuple[str, str]] | Mapping[str, str]) -> int:
    items = queries.items() if isinstance(queries, Mapping) else queries
    return write_jsonl(path, ({"_id": query_id, "text": text} for query_id, text in items))


def write_qrels(path: str | os.PathLike, qrels: Qrels) -> int:
    """Write a qrels TSV with its header; ids containing a tab or newline are refused."""
    n = 0
    with atomic_open(path) as f:
        f.write("\t".join(QRELS_HEADER) + "\n")
        for query_id, docs in qrels.items():
            for doc_id, score in docs.items():
                if any(ch in s for s in (query_id, doc_id) for ch in "\t\n\r"):
                    raise DataError("an id contains a tab or newline", Location(str(path), None, None, query_id))
                f.write(f"{query_id}\t{doc_id}\t{int(score)}\n")
                n += 1
    return n


@dataclass(frozen=True)
class BeirSet:
    """A BEIR dataset directory read whole: corpus, queries, and the qrels of one split."""

    corpus: dict[str, BeirDoc]
    queries: dict[str, str]
    qrels: Qrels


def load_beir(root: str | os.PathLike, split: str = "test") -> BeirSet:
    """Read ``root``'s corpus, the queries judged in ``split``, and that split's qrels.

    Every judged query and document must exist; a dangling id is an error naming the qrels file.
    """
    root = Path(root)
    qrels_path = root / "qrels" / f"{split}.tsv"
    qrels = read_qrels(qrels_path)
    corpus = read_corpus(root / "corpus.jsonl")
    all_queries = read_queries(root / "queries.jsonl")
    for query_id, docs in qrels.items():
        if query_id not in all_queries:
            raise DataError("query id not in queries.jsonl", Location(str(qrels_path), None, "query-id", query_id))
        for doc_id in docs:
            if doc_id not in corpus:
                raise DataError(f"corpus id {doc_id!r} not in corpus.jsonl",
                                Location(str(qrels_path), None, "corpus-id", query_id))
    return BeirSet(corpus, {q: all_queries[q] for q in qrels}, qrels)
