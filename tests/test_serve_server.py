"""The real service: uvicorn on a free localhost port, queried over HTTP with the Python client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image
from test_serve_api import build_index, png
from toy import COLOURS, ToyEncoder

from mmembed.serve.app import create_app
from mmembed.serve.client import Client, ServiceError
from mmembed.serve.server import bind, make_server
from mmembed.serve.settings import ServeSettings


@contextmanager
def running_server(app, timeout: float = 30.0, settings: ServeSettings | None = None) -> Iterator[str]:
    """Serve ``app`` as ``mmembed serve`` does (its protocol and limits) in a thread, on a free
    127.0.0.1 port; yields the base URL."""
    sock = bind(settings or ServeSettings(), port=0)
    port = sock.getsockname()[1]
    server = make_server(app, settings or ServeSettings(), log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def wait_ready(client: Client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not client.ready().ready:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready: {client.ready().detail}")
        time.sleep(0.05)


@pytest.fixture
def index_dir(toy_dir: Path, tmp_path: Path) -> Path:
    return build_index(toy_dir, tmp_path / "index")


def test_real_server_with_the_client(index_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec: ToyEncoder())
    app = create_app(index_dir, ServeSettings(api_key="k3y", max_request_bytes=10_000, max_upload_bytes=10_000))
    with running_server(app) as url, Client(url, api_key="k3y") as client:
        assert client.health().status == "ok"
        wait_ready(client)  # the directory loads in the background
        info = client.info()
        assert info.count == 12 and info.encoder == "toy" and info.limits.max_request_bytes == 10_000
        Image.new("RGB", (24, 24), COLOURS["purple"]).save(tmp_path / "query.png")
        answer = client.search(image=tmp_path / "query.png", task="toy:image->text", k=2)
        assert answer.hits[0].id == "10:4" and answer.hits[1].text == "a purple square"
        assert answer.timings_ms.encode > 0 and answer.timings_ms.total >= answer.timings_ms.encode
        assert client.search("green", k=1).hits[0].id in ("10:1", "10:101")
        assert len(client.embed([("red", png())], kind="query").vectors[0]) == 64
        assert client.candidate("10:105").text == "a orange square"
        assert client.candidate_image("10:5", size=32)[:8] == b"\x89PNG\r\n\x1a\n"
        with pytest.raises(ServiceError) as caught:
            client.search(image=b"GIF89a broken")
        assert caught.value.status == 400 and caught.value.error == "corrupt_image"
        with Client(url) as anonymous, pytest.raises(ServiceError) as caught:
            anonymous.info()
        assert caught.value.status == 401
        started = time.perf_counter()
        response = httpx.post(f"{url}/api/v1/search", content=b"x" * 20_000, headers={"X-API-Key": "k3y"})
        assert response.status_code == 413 and response.json()["error"] == "request_too_large"
        assert time.perf_counter() - started < 5
