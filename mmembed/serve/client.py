"""A Python client for the search service, with the server's own request and response models.

```python
from mmembed.serve.client import Client

with Client("http://127.0.0.1:8000", api_key=None) as client:
    print(client.info().count)
    for hit in client.search("smiling cat", task="emoji:text->image", k=5).hits:
        print(hit.rank, hit.score, hit.id, hit.text)
    png = client.candidate_image(hit.id)
```
Errors of the service are raised as :class:`ServiceError` (status, code, message, ``Retry-After``).
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
ImageInput = str | os.PathLike | bytes | Image.Image


class ServiceError(MMEmbedError):
    """The service answered with an error."""

    def __init__(self, status: int, error: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{status} {error}: {detail}")
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
        response = self._http.request("GET", f"{API_PREFIX}/ready", headers=self._headers)
        if response.status_code not in (200, 503):
            _raise(response)
        return Readiness.model_validate(response.json())

    def info(self) -> IndexInfo:
        return IndexInfo.model_validate(self._get("/info").json())

    def tasks(self) -> list[TaskInfo]:
        return [TaskInfo.model_validate(t) for t in self._get("/tasks").json()]

    # --- search and embed ----------------------------------------------------------------------

    def search(self, text: str | None = None, image: ImageInput | None = None, *, instruction: str | None = None,
               task: str | None = None, k: int = 10, rerank: bool | None = None) -> SearchResponse:
        """Top ``k`` candidates for text, an image, or both, with an instruction or a task name."""
        query = SearchQuery(text=text, instruction=instruction, task=task, k=k, rerank=rerank)
        data = {name: _form_value(value) for name, value in query.model_dump(exclude_none=True).items()}
        files = None
        if image is not None:
            name, payload, content_type = _image_part(image)
            files = {"image": (name, payload, content_type)}
        response = self._request("POST", "/search", data=data, files=files)
        return SearchResponse.model_validate(response.json())

    def embed(self, items: Sequence[str | ImageInput | tuple[str | None, ImageInput | None]], *,
              kind: Literal["query", "candidate"] = "query", instruction: str | None = None,
              task: str | None = None) -> EmbedResponse:
        """Vectors of items: each a text (``str``), an image (a path, file bytes or a PIL image), or a
        ``(text, image)`` pair (either may be ``None``)."""
        request = EmbedRequest(items=[_embed_item(item) for item in items], kind=kind, instruction=instruction,
                               task=task)
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
        response = self._http.request(method, f"{API_PREFIX}{path}", headers=self._headers, **kwargs)
        if response.status_code >= 400:
            _raise(response)
        return response


def _raise(response: Any) -> None:
    try:
        body = response.json()
        error, detail = str(body.get("error", "error")), str(body.get("detail", response.text))
    except ValueError:
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
    path = Path(image)
    return path.name, path.read_bytes()


def _image_part(image: ImageInput) -> tuple[str, bytes, str]:
    name, payload = _image_bytes(image)
    return name, payload, "application/octet-stream"  # the service sniffs the type from the bytes


def _embed_item(item: str | ImageInput | tuple[str | None, ImageInput | None]) -> EmbedItem:
    if isinstance(item, tuple):
        text, image = item
    elif isinstance(item, str):
        text, image = item, None
    else:
        text, image = None, item
    encoded = None if image is None else base64.b64encode(_image_bytes(image)[1]).decode("ascii")
    return EmbedItem(text=text, image_base64=encoded)
