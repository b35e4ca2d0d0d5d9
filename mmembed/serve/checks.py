"""The one set of checks of an embedding request, shared by ``/api/v1/embed`` and ``/v1/embeddings``.

Both routes turn their body into :class:`RawInput` s and a kind (query or candidate), then call
:func:`check_embedding`: the same limits, the same error codes and status, the same wording
(only the noun differs: "item" in mmembed's route, "input" in OpenAI's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmembed.serve.limits import ApiError, Upload, b64_upload, check_text


@dataclass(frozen=True)
class RawInput:
    """One input as a request sent it: text and/or a base64 (or data URL) image."""

    text: str | None
    image: str | None


@dataclass(frozen=True)
class EmbeddingInputs:
    """A checked embedding request, ready for the encoder."""

    texts: list[str | None]
    uploads: list[Upload | None]
    kind: str  # "query" or "candidate"
    instruction: str | None


def check_embedding(inputs: list[RawInput], kind: str, instruction: str | None, task: str | None, service: Any,
                    noun: str = "item") -> EmbeddingInputs:
    """Every limit of an embedding request, in the order a person would fix them."""
    settings = service.settings
    if not inputs:
        raise ApiError(422, "empty_input", f"no {noun}s given; send at least one (a string or a non-empty list)")
    if len(inputs) > settings.max_embed_items:
        raise ApiError(422, "too_many_items", f"{len(inputs)} {noun}s; the limit is {settings.max_embed_items} "
                                              "per request")
    if kind == "candidate" and (instruction or task):
        raise ApiError(422, "invalid_request", "documents (candidates) are embedded without an instruction; embed "
                                               "them as queries (input_type 'query' or kind 'query') to use an "
                                               "instruction or task")
    if instruction is not None and task is not None:
        raise ApiError(422, "invalid_request", "give an instruction or a task, not both")
    check_text(instruction, "instruction", settings)
    texts: list[str | None] = []
    uploads: list[Upload | None] = []
    for i, item in enumerate(inputs):
        if item.text is None and item.image is None:
            raise ApiError(422, "empty_item", f"{noun} {i} has neither text nor an image")
        check_text(item.text, f"the text of {noun} {i}", settings)
        texts.append(item.text)
        uploads.append(None if item.image is None else b64_upload(item.image, f"image of {noun} {i}", settings))
    return EmbeddingInputs(texts, uploads, kind, service.resolve_instruction(instruction, task))
