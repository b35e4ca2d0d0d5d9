"""Request and response models of the search service API, shared by the server and the client.

Every route lives under :data:`API_PREFIX`. The models check types only: every limit (``k``,
text lengths, item counts) is the service's own, from :class:`~mmembed.serve.settings.ServeSettings`,
checked by :mod:`mmembed.serve.limits` and :mod:`mmembed.serve.checks` with messages that name
it, and reported by the info route. Request bodies are bounded by ``max_request_bytes``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

API_VERSION = "v1"
API_PREFIX = f"/api/{API_VERSION}"
#: Header carrying the API key.
API_KEY_HEADER = "X-API-Key"


ModalityName = Literal["text", "image", "image,text"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _blank_to_none(value: object) -> object:
    """HTML forms send empty fields as ``""``: treat those (and whitespace) as absent."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


# --------------------------------------------------------------------------- errors and status


class FieldProblem(_Model):
    """One invalid field of a request."""

    field: str = Field(description="dotted location, e.g. 'k' or 'items.0.text'")
    message: str


class ErrorResponse(_Model):
    """Every error answer: a stable code, a sentence for people, and the invalid fields if any."""

    error: str = Field(description="machine-readable code, e.g. 'invalid_request', 'image_too_large'")
    detail: str = Field(description="what is wrong and what would be accepted")
    fields: list[FieldProblem] | None = None


class Health(_Model):
    status: Literal["ok"] = "ok"
    version: str


class Readiness(_Model):
    ready: bool
    status: Literal["ready", "loading", "failed"] = Field(description="'loading' until the index is loaded")
    detail: str | None = Field(None, description="why the service is not ready")
    in_flight: int = Field(description="searches and embeddings running or waiting")
    capacity: int = Field(description="in_flight beyond which requests get 503")


# --------------------------------------------------------------------------- index metadata


class TaskInfo(_Model):
    """A retrieval task of the instruction registry, by the name searches use."""

    name: str = Field(description="'{dataset}:{query modality}->{candidate modality}'")
    dataset: str
    query_modality: ModalityName
    candidate_modality: ModalityName
    instruction: str = Field(description="the instruction a search with this task uses")


class Limits(_Model):
    max_upload_bytes: int
    max_request_bytes: int
    max_pixels: int
    max_text_chars: int
    max_k: int
    max_depth: int
    max_embed_items: int
    image_formats: list[str]


class IndexInfo(_Model):
    has_index: bool = Field(True, description="false when the service serves the model only (no search)")
    count: int | None = Field(description="candidates in the index (none without an index)")
    dim: int = Field(description="embedding dimension")
    encoder_id: str
    encoder: str | None = Field(None, description="the encoder spec the index was built with (or served)")
    precision: dict[str, str] = Field(default_factory=dict, description="dtype per modality (text, image)")
    reranker: str | None = Field(None, description="id of the attached reranker, if any")
    tasks: list[TaskInfo]
    limits: Limits
    api_version: str = API_VERSION
    version: str


# --------------------------------------------------------------------------- search


class SearchQuery(BaseModel):
    """The fields of a search (sent as multipart form fields, next to an optional ``image`` file)."""

    # The form also carries the image file, which is not a field of this model.
    model_config = ConfigDict(extra="ignore")

    text: str | None = Field(None, description="query text (at most the service's max_text_chars)")
    instruction: str | None = Field(None, description="task instruction (free text)")
    task: str | None = Field(None, description="a task name from the info route; not with instruction")
    k: int = Field(10, description="number of results, 1 to the service's max_k")
    offset: int = Field(0, description="results to skip (paging); offset + k is at most the service's max_depth")
    rerank: bool | None = Field(None, description="rerank the top results; default: when a reranker is attached")
    modality: Literal["text", "image", "image,text"] | None = Field(
        None, description="return only candidates of this modality")
    where: str | None = Field(None, max_length=2000, description="return only candidates whose fields match, e.g. "
                                                                 "dataset == \"10\" (fields: id, dataset, modality "
                                                                 "and the keys of a JSON src_content)")
    hybrid: Literal["rrf", "weighted", "bm25"] | None = Field(
        None, description="fuse the dense ranking with BM25 over the candidates' texts (rrf: reciprocal rank; "
                          "weighted: a weighted sum) or use BM25 alone (bm25)")

    _blank = field_validator("text", "instruction", "task", "modality", "where", "hybrid",
                             mode="before")(_blank_to_none)


class Timings(_Model):
    """Server-side milliseconds of one request."""

    queue: float = Field(description="waiting for a worker")
    encode: float = Field(description="the encoder (query embedding)")
    search: float = Field(0.0, description="the vector index")
    rerank: float | None = Field(None, description="the reranker, when it ran")
    total: float = Field(description="from the request's arrival to the answer")
    batch_items: int | None = Field(None, description="items encoded in the same encoder call as this request's "
                                                      "(the phases above are that call's)")


class SearchHit(_Model):
    rank: int
    id: str
    score: float = Field(description="what the order is by (the reranked score when reranked)")
    retrieval_score: float | None = None
    rerank_score: float | None = None
    modality: ModalityName
    text: str | None = None
    has_image: bool
    image_url: str | None = Field(None, description="path of the candidate-image route, when it has an image")


class SearchResponse(_Model):
    hits: list[SearchHit]
    query_modality: ModalityName
    instruction: str | None = Field(None, description="the instruction used (from the task or the request)")
    k: int
    offset: int = 0
    reranked: bool
    timings_ms: Timings


# --------------------------------------------------------------------------- embed


class EmbedItem(_Model):
    text: str | None = None
    image_base64: str | None = Field(None, description="an image file (PNG, JPEG, ...), base64-encoded")

    _blank = field_validator("text", "image_base64", mode="before")(_blank_to_none)


class EmbedRequest(_Model):
    items: list[EmbedItem] = Field(description="1 to the service's max_embed_items items")
    kind: Literal["query", "candidate"] = Field("query", description="queries may carry an instruction")
    instruction: str | None = None
    task: str | None = Field(None, description="a task name (see the tasks route); not with instruction")

    _blank = field_validator("instruction", "task", mode="before")(_blank_to_none)


class EmbedResponse(_Model):
    encoder_id: str
    dim: int
    kind: Literal["query", "candidate"]
    instruction: str | None = None
    vectors: list[list[float]] = Field(description="one L2-normalised row per item, in request order")
    timings_ms: Timings


# --------------------------------------------------------------------------- OpenAI-compatible routes


class OpenAIInputItem(_Model):
    """An input with an image (the multimodal extension): text, an image, or both."""

    text: str | None = None
    image: str | None = Field(None, description="a data URL (data:image/png;base64,...) or base64 image file "
                                                "bytes; URLs are never fetched")

    _blank = field_validator("text", "image", mode="before")(_blank_to_none)


class OpenAIEmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: OpenAI's request, plus image inputs, ``input_type`` and ``instruction``."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[str | OpenAIInputItem] | list[int] | list[list[int]] = Field(
        description="a string, or a list of strings and {text, image} objects (token arrays of cl100k_base "
                    "only where the server has tiktoken's copy of it)")
    model: str | None = Field(None, description="a name from /v1/models (optional: one model is served); "
                                                "NAME-query / NAME-document embed queries / documents")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="the model's dimension, or one it was trained to be "
                                                          "truncated to (Matryoshka): the first coordinates, "
                                                          "renormalised; any other is refused with the list")
    user: str | None = Field(None, max_length=256, description="ignored")
    input_type: Literal["query", "document"] | None = Field(
        None, description="'document' embeds candidates (no instruction); 'query' embeds queries, optionally "
                          "with an instruction or task. Default: from the model name's -query / -document, "
                          "else 'query' when an instruction or task is given, else the service's "
                          "default_input_type")
    instruction: str | None = None
    task: str | None = None


class OpenAIEmbedding(_Model):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class OpenAIUsage(_Model):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(_Model):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OpenAIModel(_Model):
    """A served model, as OpenAI's and vLLM's ``GET /v1/models`` list it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mmembed"
    root: str | None = Field(None, description="the encoder spec or id behind the name")
    input_type: Literal["query", "document"] | None = Field(
        None, description="what this name embeds when a request does not say (NAME-query, NAME-document)")


class OpenAIModelList(_Model):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class RerankDocument(_Model):
    text: str


class RerankRequest(BaseModel):
    """``POST /v1/rerank``, the request shape of Cohere, Jina and text-embeddings-inference."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    documents: list[str | RerankDocument] = Field(min_length=1, description="at most the service's "
                                                                            "max_embed_items")
    top_n: int | None = Field(None, ge=1, description="return the best top_n (default: all)")
    model: str | None = None
    return_documents: bool = False
    instruction: str | None = None


class RerankResultItem(_Model):
    index: int = Field(description="position of the document in the request")
    relevance_score: float = Field(description="the reranker's raw score; higher is more relevant")
    document: RerankDocument | None = None


class RerankResponse(_Model):
    model: str
    results: list[RerankResultItem]
    usage: OpenAIUsage


# --------------------------------------------------------------------------- candidates


class CandidateInfo(_Model):
    id: str
    text: str | None = None
    modality: ModalityName
    has_image: bool
    image_url: str | None = None


def candidate_image_path(candidate_id: str) -> str:
    """The API path of a candidate's image (the id percent-encoded as one path segment)."""
    from urllib.parse import quote

    return f"{API_PREFIX}/candidates/{quote(candidate_id, safe='')}/image"
