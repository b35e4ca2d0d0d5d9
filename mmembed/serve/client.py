"""A Python client for the search service, with the server's own request and response models.

```python
from mmembed.serve.client import Client

with Client("http://127.0.0.1:8000", api_key=None) as client:
    print(client.info().count)
    for hit in client.search("smiling cat", task="emoji:text->image", k=5).hits:
        print(hit.rank, hit.score, hit.id, hit.text)
    png = client.candidate_image(hit.id)
```
Every failure is raised as :class:`ServiceError`: an error answer (status, code, message,
``Retry-After``), a service that cannot be reached or does not answer in time (``status`` None,
code ``unreachable`` or ``timeout``), or a request refused before sending (code ``invalid_request``).

Images are always explicit: a ``str`` item of :meth:`Client.embed` is text, never a file name;
pass an image as a :class:`~pathlib.Path`, file bytes or a PIL image.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
from PIL import Image
from pydantic import ValidationError

from mmembed.errors import MMEmbedError
from mmembed.serve.models import (
    API_KEY_HEADER,
    API_PREFIX,
    CandidateInfo,
    EmbedItem,
    EmbedRequest,
    EmbedResponse,
    Health,
    IndexInfo,
    Readiness,
    SearchQuery,
    SearchResponse,
    TaskInfo,
)

#: What may be sent as an image: a file path, the bytes of an image file, or a PIL image (sent as PNG).
#: (``search(image=...)`` also takes a ``str`` path: that argument can only be an image.)
ImageInput = os.PathLike | bytes | Image.Image
#: An item of :meth:`Client.embed`: text (``str``), an image, a ``(text, image)`` pair, or a
#: ``{"text": ..., "image": ...}`` mapping.
EmbedInput = str | ImageInput | tuple[str | None, ImageInput | None] | dict[str, Any]


class ServiceError(MMEmbedError):
    """The service answered with an error, could not be reached, or the request was invalid."""

    def __init__(self, status: int | None, error: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{error}: {detail}" if status is None else f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.retry_after = retry_after


class Client:
    """Calls every route of the service. ``http`` may be any httpx-compatible client (e.g. a test client)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 60.0, http: Any = None):
        self._own = http is None
        self._http = http if http is not None else httpx.Client(base_url=base_url, timeout=timeout)
        self._headers = {API_KEY_HEADER: api_key} if api_key else {}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self._http.close()

    # --- status and metadata -------------------------------------------------------------------

    def health(self) -> Health:
        return Health.model_validate(self._get("/health").json())

    def ready(self) -> Readiness:
        """Readiness, also when not ready (no exception for 503)."""
        response = self._send("GET", "/ready")
        if response.status_code not in (200, 503):
            _raise(response)
        return Readiness.model_validate(response.json())

    def info(self) -> IndexInfo:
        return IndexInfo.model_validate(self._get("/info").json())

    def tasks(self) -> list[TaskInfo]:
        return [TaskInfo.model_validate(t) for t in self._get("/tasks").json()]

    # --- search and embed ----------------------------------------------------------------------

    def search(self, text: str | None = None, image: ImageInput | str | None = None, *,
               instruction: str | None = None, task: str | None = None, k: int = 10, offset: int = 0,
               rerank: bool | None = None, where: str | None = None, modality: str | None = None,
               hybrid: str | None = None) -> SearchResponse:
        """Top ``k`` candidates for text, an image (a path, file bytes or a PIL image), or both, with an
        instruction or a task name; ``where``/``modality`` restrict the candidates, ``hybrid`` fuses BM25."""
        if text is None and image is None:
            raise ServiceError(None, "invalid_request", "give text, an image, or both")
        query = _local(SearchQuery, text=text, instruction=instruction, task=task, k=k, offset=offset,
                       rerank=rerank, where=where, modality=modality, hybrid=hybrid)
        data = {name: _form_value(value) for name, value in query.model_dump(exclude_none=True).items()}
        files = None
        if image is not None:
            name, payload, content_type = _image_part(Path(image) if isinstance(image, str) else image)
            files = {"image": (name, payload, content_type)}
        response = self._request("POST", "/search", data=data, files=files)
        return SearchResponse.model_validate(response.json())

    def embed(self, items: Sequence[EmbedInput], *, kind: Literal["query", "candidate"] = "query",
              instruction: str | None = None, task: str | None = None) -> EmbedResponse:
        """Vectors of items: each a text (``str``, always text), an image (a :class:`~pathlib.Path`, file
        bytes or a PIL image), a ``(text, image)`` pair or a ``{"text", "image"}`` mapping."""
        if isinstance(items, (str, bytes)) or not items:
            raise ServiceError(None, "invalid_request", "give a non-empty list of items")
        request = _local(EmbedRequest, items=[_embed_item(item) for item in items], kind=kind,
                         instruction=instruction, task=task)
        response = self._request("POST", "/embed", json=request.model_dump(exclude_none=True))
        return EmbedResponse.model_validate(response.json())

    # --- candidates ----------------------------------------------------------------------------

    def candidate(self, candidate_id: str) -> CandidateInfo:
        return CandidateInfo.model_validate(self._get(f"/candidates/{quote(candidate_id, safe='')}").json())

    def candidate_image(self, candidate_id: str, size: int = 256) -> bytes:
        """PNG bytes of a candidate's image, scaled to fit ``size`` x ``size``."""
        return self._get(f"/candidates/{quote(candidate_id, safe='')}/image", params={"size": size}).content

    # --- plumbing ------------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._request("GET", path, params=params)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            _raise(response)
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return self._http.request(method, f"{API_PREFIX}{path}", headers=self._headers, **kwargs)
        except httpx.TimeoutException as e:
            raise ServiceError(None, "timeout", f"the service did not answer in time ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise ServiceError(None, "unreachable", f"cannot reach the service ({type(e).__name__}: {e})") from None


def _local(model: Any, **fields: Any) -> Any:
    """A request model, or a :class:`ServiceError` saying which argument is invalid."""
    try:
        return model(**fields)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ServiceError(None, "invalid_request", problems) from None


def _raise(response: Any) -> None:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error, detail = body["error"], str(body.get("detail", ""))
    else:  # not this service's error shape (a proxy in between?)
        error, detail = "error", response.text[:500]
    retry = response.headers.get("retry-after")
    raise ServiceError(response.status_code, error, detail, float(retry) if retry and retry.isdigit() else None)


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _image_bytes(image: ImageInput) -> tuple[str, bytes]:
    if isinstance(image, Image.Image):
        out = io.BytesIO()
        image.save(out, format="PNG")
        return "image.png", out.getvalue()
    if isinstance(image, bytes):
        return "image", image
    if isinstance(image, str) or not isinstance(image, os.PathLike):
        raise ServiceError(None, "invalid_request", f"an image must be a Path, file bytes or a PIL image, not "
                                                    f"{type(image).__name__}")
    path = Path(image)
    try:
        return path.name, path.read_bytes()
    except OSError as e:
        raise ServiceError(None, "invalid_request", f"cannot read the image file {path}: {e.strerror}") from None


def _image_part(image: ImageInput) -> tuple[str, bytes, str]:
    name, payload = _image_bytes(image)
    return name, payload, "application/octet-stream"  # the service sniffs the type from the bytes


def _embed_item(item: EmbedInput) -> EmbedItem:
    if isinstance(item, dict):
        unknown = set(item) - {"text", "image"}
        if unknown:
            raise ServiceError(None, "invalid_request", f"unknown item keys {sorted(unknown)}; use text and image")
        text, image = item.get("text"), item.get("image")
    elif isinstance(item, tuple):
        text, image = item
    elif isinstance(item, str):
        text, image = item, None
    else:
        text, image = None, item
    encoded = None if image is None else base64.b64encode(_image_bytes(image)[1]).decode("ascii")
    return _local(EmbedItem, text=text, image_base64=encoded)
