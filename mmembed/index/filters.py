"""Metadata filters: restrict a search to the candidates whose record fields match an expression.

A filter is a small boolean expression over candidate fields, written as in Python (and as Milvus
writes its own)::

    dataset == "10" and modality in ["image", "image,text"]
    not (year < 2000) or source == "wordnet"

Fields: ``modality`` (``text``, ``image``, ``image,text``), ``dataset`` (the dataset id, the part
of the candidate id before ``:``), ``id``, and every key of ``src_content`` whose value is a
scalar (string, number, boolean) when ``src_content`` is a JSON object. A record without a field
matches no comparison on it. Numbers and numeric strings compare as numbers (``dataset == 10``
and ``dataset == "10"`` are the same filter).

:func:`parse_filter` checks the expression against the fields the pool carries and raises a
:class:`~mmembed.errors.ConfigError` naming the field (or the part of the expression) that is
wrong. :meth:`CandidateFields.mask` resolves it to a boolean mask over the index's rows, and
:func:`search_allowed` searches an index among those rows only: FAISS through an id selector
(exact indexes give exactly the full ranking filtered), the exact streamed index through its
``allowed`` rows, Milvus through a boolean expression (see :func:`milvus_expression`).
"""

from __future__ import annotations

import ast
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from mmembed.errors import ConfigError
from mmembed.index.base import SearchResult, VectorIndex
from mmembed.types import Candidate, Modality

log = logging.getLogger(__name__)

#: Fields every candidate has (they win over ``src_content`` keys of the same name).
BUILTIN_FIELDS = ("id", "dataset", "modality")
_MISSING = object()
Scalar = str | int | float | bool
_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
            ast.In: "in", ast.NotIn: "not in"}
_MIRRORED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


# ----------------------------------------------------------------------------- the expression


@dataclass(frozen=True)
class Comparison:
    field: str
    op: str
    #: One scalar, or a tuple of scalars for ``in`` / ``not in``.
    value: Any


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    part: Node


Node = Comparison | BoolOp | Not


@dataclass(frozen=True)
class Filter:
    """A parsed filter expression (``text`` as the user wrote it)."""

    text: str
    root: Node

    @property
    def fields(self) -> set[str]:
        return set(_fields(self.root))


def _fields(node: Node) -> Iterable[str]:
    if isinstance(node, Comparison):
        yield node.field
    elif isinstance(node, Not):
        yield from _fields(node.part)
    else:
        for part in node.parts:
            yield from _fields(part)


def parse_filter(text: str, known_fields: Iterable[str] | None = None) -> Filter:
    """Parse ``text``; with ``known_fields``, refuse a field not among them (naming it and the known ones)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"filter must be a non-empty expression such as 'dataset == \"10\"', got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ConfigError(f"filter {text!r}: not a valid expression (at column {e.offset}); "
                          "write e.g. 'dataset == \"10\" and modality == \"image\"'") from None
    filt = Filter(text, _node(tree.body, text))
    if known_fields is not None:
        known = set(known_fields)
        for name in sorted(filt.fields):
            if name not in known:
                raise ConfigError(f"filter {text!r}: unknown field {name!r}; the candidates have the fields "
                                  f"{', '.join(sorted(known))}")
    return filt


def _node(node: ast.AST, text: str) -> Node:
    if isinstance(node, ast.BoolOp):
        return BoolOp("and" if isinstance(node.op, ast.And) else "or", tuple(_node(v, text) for v in node.values))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return Not(_node(node.operand, text))
    if isinstance(node, ast.Compare):
        if len(node.ops) != 1:
            raise ConfigError(f"filter {text!r}: chained comparisons are not supported; join them with 'and'")
        return _comparison(node.left, node.ops[0], node.comparators[0], text)
    raise ConfigError(f"filter {text!r}: {ast.get_source_segment(text.strip(), node)!r} is not a comparison; "
                      "write FIELD == VALUE, FIELD in [VALUES], joined by and / or / not")


def _comparison(left: ast.AST, op: ast.cmpop, right: ast.AST, text: str) -> Comparison:
    name = _COMPARE.get(type(op))
    if name is None:
        raise ConfigError(f"filter {text!r}: operator {type(op).__name__} is not supported "
                          f"(use {', '.join(_COMPARE.values())})")
    if isinstance(left, ast.Name) and isinstance(right, ast.Name):
        raise ConfigError(f"filter {text!r}: compare a field with a value, not two names ({left.id!r} and "
                          f"{right.id!r}); quote strings: {left.id} == \"{right.id}\"")
    if not isinstance(left, ast.Name):
        if name in ("in", "not in") or not isinstance(right, ast.Name):
            raise ConfigError(f"filter {text!r}: the left side of {name!r} must be a field name, got "
                              f"{ast.get_source_segment(text.strip(), left)!r}")
        left, right, name = right, left, _MIRRORED[name]
    field = left.id
    if name in ("in", "not in"):
        if not isinstance(right, ast.List | ast.Tuple):
            raise ConfigError(f"filter {text!r}: field {field!r}: {name!r} takes a list of values, e.g. [\"1\", \"2\"]")
        return Comparison(field, name, tuple(_literal(v, field, text) for v in right.elts))
    return Comparison(field, name, _literal(right, field, text))


def _literal(node: ast.AST, field: str, text: str) -> Scalar:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        node = ast.Constant(-node.operand.value) if isinstance(node.operand.value, int | float) else node
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool):
        return node.value
    shown = ast.get_source_segment(text.strip(), node) or type(node).__name__
    hint = " (quote strings: \"...\")" if isinstance(node, ast.Name) else ""
    raise ConfigError(f"filter {text!r}: field {field!r} is compared with {shown!r}, which is not a string, "
                      f"number or boolean{hint}")


# ----------------------------------------------------------------------------- the candidates' fields


def record_fields(candidate: Candidate) -> dict[str, Scalar]:
    """The filterable fields of one candidate record."""
    fields: dict[str, Scalar] = {}
    if candidate.src_content:
        try:
            content = json.loads(candidate.src_content)
        except (json.JSONDecodeError, TypeError):
            content = None
        if isinstance(content, dict):
            fields.update({k: v for k, v in content.items() if isinstance(v, str | int | float | bool)})
    fields.update(id=candidate.did, dataset=candidate.did.partition(":")[0], modality=candidate.modality.value)
    return fields


class CandidateFields:
    """The fields of an index's candidates, in the index's row order, answering filters as row masks."""

    def __init__(self, rows: Sequence[dict[str, Scalar]]):
        self._count = len(rows)
        columns: dict[str, list[Any]] = {}
        for i, fields in enumerate(rows):
            for name, value in fields.items():
                columns.setdefault(name, [_MISSING] * self._count)[i] = value
        self._columns = columns
        self._masks = lru_cache(maxsize=64)(self._mask)

    @classmethod
    def of(cls, ids: Sequence[str], candidates: dict[str, Candidate]) -> CandidateFields:
        """The fields of the candidates ``ids`` (the index's row order) from their records."""
        return cls([record_fields(candidates[did]) for did in ids])

    def __len__(self) -> int:
        return self._count

    @property
    def names(self) -> list[str]:
        return sorted(self._columns)

    def parse(self, where: str | None = None, modality: str | Sequence[str] | None = None) -> Filter | None:
        """``where`` and a modality restriction as one checked filter (``None`` when both are absent)."""
        parts = []
        if modality is not None and modality != []:
            wanted = [modality] if isinstance(modality, str) else list(modality)
            for value in wanted:
                if value not in {m.value for m in Modality}:
                    raise ConfigError(f"field 'modality': unknown modality {value!r}; expected one of "
                                      f"{', '.join(m.value for m in Modality)}")
            parts.append(f"modality in {json.dumps(wanted)}")
        if where is not None:
            parts.append(f"({where})")
            parse_filter(where, self._columns)  # errors name the user's expression, not the combined one
        return parse_filter(" and ".join(parts), self._columns) if parts else None

    def mask(self, filt: Filter) -> np.ndarray:
        """Bool over the rows: which candidates the filter keeps (cached per expression)."""
        return self._masks(filt)

    def _mask(self, filt: Filter) -> np.ndarray:
        mask = self._eval(filt.root)
        mask.flags.writeable = False
        return mask

    def _eval(self, node: Node) -> np.ndarray:
        if isinstance(node, Not):
            return ~self._eval(node.part)
        if isinstance(node, BoolOp):
            masks = [self._eval(p) for p in node.parts]
            return np.logical_and.reduce(masks) if node.op == "and" else np.logical_or.reduce(masks)
        column = self._columns[node.field]
        return np.fromiter((_matches(v, node.op, node.value) for v in column), dtype=bool, count=self._count)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if type(a) is type(b) or (isinstance(a, int | float) and isinstance(b, int | float)):
        return a == b
    x, y = _number(a), _number(b)  # "10" == 10
    return x is not None and x == y


def _matches(value: Any, op: str, literal: Any) -> bool:
    if value is _MISSING:
        return False
    if op == "==":
        return _equal(value, literal)
    if op == "!=":
        return not _equal(value, literal)
    if op == "in":
        return any(_equal(value, x) for x in literal)
    if op == "not in":
        return not any(_equal(value, x) for x in literal)
    both_text = isinstance(value, str) and isinstance(literal, str)
    x, y = (value, literal) if both_text else (_number(value), _number(literal))
    if x is None or y is None:
        return False
    return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]


# ----------------------------------------------------------------------------- searching


def search_allowed(index: VectorIndex, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> SearchResult:
    """Top ``min(k, allowed rows)`` of ``index`` among the rows ``allowed`` (bool over rows; None: all)."""
    if allowed is None:
        return index.search(queries, k)
    allowed = np.asarray(allowed, dtype=bool)
    if allowed.shape != (len(index),):
        raise ConfigError(f"a filter mask must have one entry per indexed vector ({len(index)}), "
                          f"got shape {allowed.shape}")
    kept = int(np.count_nonzero(allowed))
    if kept == 0:
        n = np.asarray(queries).shape[0]
        return SearchResult(np.empty((n, 0), dtype=object), np.empty((n, 0), dtype=np.float32))
    kk = min(k, kept)
    from mmembed.index.exact import ExactIndex
    from mmembed.index.faiss_index import FaissIndex

    own = getattr(index, "search_filtered", None)
    if own is not None:  # an index that restricts its own passes (the rescored index)
        return own(queries, kk, allowed)
    if isinstance(index, FaissIndex):
        return _faiss_search(index, queries, kk, allowed)
    if isinstance(index, ExactIndex):
        from mmembed.index.faiss_index import _matrix
        from mmembed.index.topk import Request

        q = _matrix(queries, index.dim, "queries")
        return index.search_requests(q, [Request(slice(0, q.shape[0]), kk, allowed)])[0]
    if type(index).__name__ == "MilvusIndex":
        return index.search(queries, kk, filter=milvus_expression(index.ids(), allowed))
    return _filter_full_ranking(index, queries, kk, allowed)


def _faiss_search(index: Any, queries: np.ndarray, k: int, allowed: np.ndarray) -> SearchResult:
    """FAISS search restricted by an id selector over the allowed rows (a bitmap, one bit per row)."""
    from mmembed.index.faiss_index import _mask_missing, _matrix, _normalised

    q = _normalised(_matrix(queries, index.dim, "queries"), "query")
    labels, scores = faiss_rows(index.faiss_index, q, k, allowed)
    return SearchResult(index._lookup(labels), _mask_missing(scores, labels))


def faiss_rows(raw: Any, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row labels, scores) of a raw FAISS index for unit queries ``q``, among the ``allowed`` rows (None: all)."""
    from mmembed.index.faiss_index import _faiss

    labels = np.full((q.shape[0], k), -1, dtype=np.int64)
    scores = np.empty((q.shape[0], k), dtype=np.float32)
    if allowed is None:
        raw.search(q, k, D=scores, I=labels)
        return labels, scores
    faiss = _faiss()
    bitmap = np.packbits(allowed, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
    raw.search(q, k, D=scores, I=labels, params=_search_parameters(faiss, raw, selector))
    del bitmap  # held until here: the selector points into it
    return labels, scores


def _search_parameters(faiss: Any, raw: Any, selector: Any) -> Any:
    """Search parameters carrying the selector and the index's own knobs (nprobe, efSearch)."""
    ivf = faiss.try_extract_index_ivf(raw)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
    hnsw = faiss.downcast_index(raw)
    if hasattr(hnsw, "hnsw"):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=hnsw.hnsw.efSearch)
    return faiss.SearchParameters(sel=selector)


def _filter_full_ranking(index: VectorIndex, queries: np.ndarray, k: int, allowed: np.ndarray) -> SearchResult:
    """Any other engine: rank everything, keep the allowed (exact for an exact engine, and slow)."""
    log.info("%s has no native filter: ranking all %d candidates and filtering", type(index).__name__, len(index))
    row_of = {did: i for i, did in enumerate(index.ids())}  # type: ignore[attr-defined]
    ids, scores = index.search(queries, len(index))
    out_ids = np.full((ids.shape[0], k), None, dtype=object)
    out_scores = np.full((ids.shape[0], k), -np.inf, dtype=np.float32)
    for r, (row_ids, row_scores) in enumerate(zip(ids, scores)):
        kept = [(d, s) for d, s in zip(row_ids, row_scores) if d is not None and allowed[row_of[d]]][:k]
        for c, (d, s) in enumerate(kept):
            out_ids[r, c], out_scores[r, c] = d, s
    return SearchResult(out_ids, out_scores)


def milvus_expression(ids: Sequence[str], allowed: np.ndarray, field: str = "id") -> str:
    """A Milvus boolean expression keeping the rows ``allowed`` of ``ids`` (the resolved filter): the
    kept ids, or the others excluded when they are fewer (a shorter expression)."""
    rows = np.asarray(ids, dtype=object)
    if 2 * int(np.count_nonzero(allowed)) <= len(rows):
        return f"{field} in {json.dumps(rows[allowed].tolist(), ensure_ascii=False)}"
    return f"{field} not in {json.dumps(rows[~allowed].tolist(), ensure_ascii=False)}"
