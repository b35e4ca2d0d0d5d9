"""The OpenAI-compatible embeddings route and the Cohere/Jina/TEI-shaped rerank route.

``POST /v1/embeddings`` takes OpenAI's request (``input``, ``model``, ``encoding_format``,
``dimensions``, ``user``) so that OpenAI's own clients work against the service, and extends it
the way multimodal embedding APIs do: a list item may be ``{"text": ..., "image": ...}`` with the
image as a data URL or base64 (URLs are never fetched), ``input_type`` says whether inputs are
queries or documents (candidates), and queries may carry an ``instruction`` or a ``task``.

``model`` may be left out (one model is served) and the answer echoes the name asked for. Clients
that cannot send extra fields (LangChain's ``OpenAIEmbeddings``) pick queries or documents by the
model name: ``NAME-query`` / ``NAME-document`` (see :func:`served_names`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmembed.encoders.matryoshka import check_dimensions, truncate
from mmembed.errors import ConfigError
from mmembed.serve.checks import EmbeddingInputs, RawInput, check_embedding
from mmembed.serve.limits import ApiError, check_text
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
from mmembed.serve.settings import INPUT_TYPE_SUFFIXES

#: Model names every service answers to, besides its served names, its encoder's id and spec.
GENERIC_MODEL = "mmembed"
#: tiktoken's encoding of OpenAI's embedding models: what OpenAI clients (LangChain's
#: ``OpenAIEmbeddings`` by default) send token arrays in.
TOKEN_ENCODING = "cl100k_base"
#: Where tiktoken fetches that encoding from; only its local cached copy is ever read here.
TOKEN_ENCODING_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@dataclass(frozen=True)
class ModelChoice:
    """The model a request named (echoed in the answer) and the input type its name implies."""

    name: str
    input_type: str | None


def served_names(service: Any) -> list[str]:
    """The names ``/v1/models`` lists: ``--served-model-name`` s (or the encoder spec), each also
    as ``NAME-query`` and ``NAME-document``."""
    names = service.settings.served_model_names or [service.encoder_spec or service.encoder.encoder_id]
    return [variant for name in names for variant in (name, *(name + s for s in INPUT_TYPE_SUFFIXES))]


def choose_model(model: str | None, service: Any) -> ModelChoice:
    """The served model a request names (``None``: the first served name), or 404 naming them."""
    names = served_names(service)
    if model is None:
        return ModelChoice(names[0], None)
    aliases = {*names, service.encoder.encoder_id, GENERIC_MODEL, *([service.encoder_spec] if service.encoder_spec
                                                                    else [])}
    for suffix in INPUT_TYPE_SUFFIXES:
        if model.endswith(suffix) and model.removesuffix(suffix) in aliases:
            return ModelChoice(model, suffix[1:])
    if model in aliases:
        return ModelChoice(model, None)
    raise ApiError(404, "model_not_found", f"this service serves the model {names[0]!r} (also "
                                           f"{', '.join(repr(m) for m in [*names[1:], GENERIC_MODEL])}); not "
                                           f"{model!r}. The model field may be left out")


def embedding_request(body: OpenAIEmbeddingRequest, service: Any) -> tuple[ModelChoice, EmbeddingInputs]:
    choice = choose_model(body.model, service)
    try:
        check_dimensions(service.encoder, body.dimensions)  # a trained Matryoshka dimension, or the full one
    except ConfigError as e:
        raise ApiError(400, "dimensions_not_supported", f"{e}; omit dimensions or pass one of those") from None
    input_type = input_type_of(body.input_type, choice)
    if input_type is None:
        input_type = "query" if (body.instruction or body.task) else service.settings.default_input_type
    kind = "query" if input_type == "query" else "candidate"
    inputs = [RawInput(item.text, item.image) for item in _input_items(body.input)]
    return choice, check_embedding(inputs, kind, body.instruction, body.task, service, noun="input")


def input_type_of(requested: str | None, choice: ModelChoice) -> str | None:
    if requested is not None and choice.input_type is not None and requested != choice.input_type:
        raise ApiError(422, "invalid_request", f"the model {choice.name!r} embeds {choice.input_type}s, but "
                                               f"input_type is {requested!r}; drop one of them")
    return requested or choice.input_type


def _input_items(value: Any) -> list[OpenAIInputItem]:
    if isinstance(value, str):
        return [OpenAIInputItem(text=value)]
    if value and all(isinstance(v, int) for v in value):
        value = [value]  # one token array
    if any(isinstance(v, list) for v in value):
        return [OpenAIInputItem(text=text) for text in decode_token_arrays(value)]
    return [OpenAIInputItem(text=v) if isinstance(v, str) else v for v in value]


def decode_token_arrays(arrays: list[Any]) -> list[str]:
    """Token arrays (OpenAI's ``cl100k_base`` ids) back to text, with the encoding tiktoken already
    holds on this machine; it is never downloaded."""
    if not all(isinstance(a, list) and all(isinstance(t, int) for t in a) for a in arrays):
        raise ApiError(422, "invalid_request", "input mixes token arrays with other inputs; send strings "
                                               "(or only token arrays)")
    encoding = local_token_encoding()
    if encoding is None:
        raise ApiError(400, "token_input_not_supported",
                       f"token arrays need tiktoken's {TOKEN_ENCODING} encoding, which this server does not "
                       "have locally (it never downloads it); send strings: with LangChain's OpenAIEmbeddings "
                       "set check_embedding_ctx_length=False")
    try:
        return [encoding.decode(array) for array in arrays]
    except (KeyError, ValueError, OverflowError):
        raise ApiError(422, "invalid_request", f"input holds token ids that are not {TOKEN_ENCODING} tokens") from None


def local_token_encoding() -> Any:
    """tiktoken's ``cl100k_base`` when tiktoken is installed and the encoding file is in its cache."""
    try:
        import tiktoken
    except ImportError:
        return None
    if not _tiktoken_cached(TOKEN_ENCODING_URL):
        return None
    return tiktoken.get_encoding(TOKEN_ENCODING)


def _tiktoken_cached(blob_url: str) -> bool:
    """Whether tiktoken would read ``blob_url`` from its cache (where tiktoken.load looks)."""
    import hashlib
    import os
    import tempfile

    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if variable in os.environ:
            directory = os.environ[variable]
            break
    else:
        directory = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return bool(directory) and os.path.isfile(os.path.join(directory, hashlib.sha1(blob_url.encode()).hexdigest()))


def embedding_response(body: OpenAIEmbeddingRequest, vectors: np.ndarray, inputs: EmbeddingInputs,
                       choice: ModelChoice, service: Any) -> OpenAIEmbeddingResponse:
    vectors = truncate(vectors, check_dimensions(service.encoder, body.dimensions))
    rows = np.asarray(vectors, dtype="<f4")  # little-endian float32: what OpenAI's base64 encoding holds
    data = [OpenAIEmbedding(index=i, embedding=_encode(row, body.encoding_format)) for i, row in enumerate(rows)]
    tokens = count_tokens(service.encoder, [t for t in inputs.texts if t])
    return OpenAIEmbeddingResponse(data=data, model=choice.name,
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
