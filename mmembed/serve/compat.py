"""The OpenAI-compatible embeddings route and the Cohere/Jina/TEI-shaped rerank route.

``POST /v1/embeddings`` takes OpenAI's request (``input``, ``model``, ``encoding_format``,
``dimensions``, ``user``) so that OpenAI's own clients work against the service, and extends it
the way multimodal embedding APIs do: a list item may be ``{"text": ..., "image": ...}`` with the
image as a data URL or base64 (URLs are never fetched), ``input_type`` says whether inputs are
queries or documents (candidates), and queries may carry an ``instruction`` or a ``task``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmembed.serve.limits import ApiError, Upload, b64_upload, check_text
from mmembed.serve.models import (
    OpenAIEmbedding,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIInputItem,
    OpenAIUsage,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResultItem,
)

#: Model names every service answers to, besides its encoder's id and spec.
GENERIC_MODEL = "mmembed"


@dataclass(frozen=True)
class EmbeddingInputs:
    """A checked embeddings request, ready for the encoder."""

    texts: list[str | None]
    uploads: list[Upload | None]
    kind: str
    instruction: str | None


def embedding_request(body: OpenAIEmbeddingRequest, service: Any) -> EmbeddingInputs:
    check_model(body.model, service)
    dim = service.retriever.encoder.dim
    if body.dimensions is not None and body.dimensions != dim:
        raise ApiError(400, "dimensions_not_supported",
                       f"this model's {dim}-dimensional embeddings are not trained for truncation (Matryoshka), "
                       f"so dimensions={body.dimensions} is refused; omit it or pass {dim}")
    items = _input_items(body.input)
    settings = service.settings
    if not items:
        raise ApiError(422, "empty_input", "input is empty; give a string or a non-empty list")
    if len(items) > settings.max_embed_items:
        raise ApiError(422, "too_many_items", f"{len(items)} inputs; the limit is {settings.max_embed_items}")
    if body.input_type == "document" and (body.instruction or body.task):
        raise ApiError(400, "invalid_request", "documents are embedded without an instruction; set "
                                               "input_type='query' to embed queries with an instruction or task")
    if body.instruction is not None and body.task is not None:
        raise ApiError(400, "invalid_request", "give an instruction or a task, not both")
    check_text(body.instruction, "instruction", settings)
    texts, uploads = [], []
    for i, item in enumerate(items):
        if item.text is None and item.image is None:
            raise ApiError(422, "empty_item", f"input {i} has neither text nor an image")
        check_text(item.text, f"the text of input {i}", settings)
        texts.append(item.text)
        uploads.append(None if item.image is None else b64_upload(item.image, f"image of input {i}", settings))
    kind = "query" if body.input_type == "query" else "candidate"
    return EmbeddingInputs(texts, uploads, kind, service.resolve_instruction(body.instruction, body.task))


def check_model(model: str | None, service: Any) -> None:
    served = {service.retriever.encoder.encoder_id, GENERIC_MODEL}
    if service.encoder_spec:
        served.add(service.encoder_spec)
    if model is not None and model not in served:
        raise ApiError(404, "model_not_found", f"this service serves the model {sorted(served)[0]!r} (also "
                                               f"called {', '.join(repr(m) for m in sorted(served)[1:])}); "
                                               f"not {model!r}")


def _input_items(value: Any) -> list[OpenAIInputItem]:
    if isinstance(value, str):
        return [OpenAIInputItem(text=value)]
    if any(isinstance(v, (int, list)) for v in value):
        raise ApiError(400, "token_input_not_supported", "token arrays are not accepted: this model has its own "
                                                         "tokenizer; send strings")
    return [OpenAIInputItem(text=v) if isinstance(v, str) else v for v in value]


def embedding_response(body: OpenAIEmbeddingRequest, vectors: np.ndarray, inputs: EmbeddingInputs,
                       service: Any) -> OpenAIEmbeddingResponse:
    rows = np.asarray(vectors, dtype="<f4")  # little-endian float32: what OpenAI's base64 encoding holds
    data = [OpenAIEmbedding(index=i, embedding=_encode(row, body.encoding_format)) for i, row in enumerate(rows)]
    tokens = count_tokens(service.retriever.encoder, [t for t in inputs.texts if t])
    return OpenAIEmbeddingResponse(data=data, model=service.retriever.encoder.encoder_id,
                                   usage=OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens))


def _encode(row: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(row.tobytes()).decode("ascii")
    return row.tolist()


def count_tokens(model: Any, texts: list[str]) -> int:
    """Tokens of ``texts`` by the model's tokenizer when it exposes one (``tokenizer``, on it or on
    one of its parts), else whitespace-separated words. Images count 0: ``usage`` counts text."""
    tokenizer = _find_tokenizer(model)
    if tokenizer is None:
        return sum(len(t.split()) for t in texts)
    try:
        return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    except (TypeError, KeyError, ValueError):
        return sum(len(t.split()) for t in texts)


def _find_tokenizer(model: Any) -> Any:
    found = getattr(model, "tokenizer", None)
    if callable(found):
        return found
    attributes = dict(getattr(model, "__dict__", {}))
    attributes.update(getattr(model, "_modules", None) or {})  # torch modules keep their parts here
    for part in attributes.values():
        found = getattr(part, "tokenizer", None)
        if callable(found):
            return found
    return None


# --------------------------------------------------------------------------- rerank


def rerank_documents(body: RerankRequest, service: Any) -> list[str]:
    if service.reranker is None:
        raise ApiError(409, "no_reranker", "this service has no reranker; start it with "
                                           "'mmembed serve INDEX --rerank CONFIG.yaml' to rerank")
    if body.model is not None and body.model not in (service.reranker_id, GENERIC_MODEL):
        raise ApiError(404, "model_not_found", f"this service reranks with {service.reranker_id!r}, "
                                               f"not {body.model!r}")
    settings = service.settings
    if len(body.documents) > settings.max_embed_items:
        raise ApiError(422, "too_many_items", f"{len(body.documents)} documents; the limit is "
                                              f"{settings.max_embed_items}")
    check_text(body.query, "the query", settings)
    check_text(body.instruction, "instruction", settings)
    documents = [d if isinstance(d, str) else d.text for d in body.documents]
    for i, text in enumerate(documents):
        check_text(text, f"document {i}", settings)
    return documents


def rerank_response(body: RerankRequest, documents: list[str], scores: np.ndarray, service: Any) -> RerankResponse:
    order = sorted(range(len(documents)), key=lambda i: (-float(scores[i]), i))[:body.top_n]
    results = [RerankResultItem(index=i, relevance_score=float(scores[i]),
                                document=RerankDocument(text=documents[i]) if body.return_documents else None)
               for i in order]
    tokens = count_tokens(service.reranker, [body.query, *documents])
    return RerankResponse(model=service.reranker_id, results=results,
                          usage=OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens))
