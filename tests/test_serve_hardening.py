"""The service under hostile or unlucky traffic: image bombs, thread races, floods of sockets,
truncated bodies, DNS rebinding, imprecise errors, and a Python client facing a dead service."""

from __future__ import annotations

import base64
import socket
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image
from test_serve_api import assert_error, build_index, png, search
from test_serve_server import running_server, wait_ready
from toy import COLOURS, ToyEncoder

from mmembed.retrieval import Retriever
from mmembed.serve.app import create_app
from mmembed.serve.client import Client, ServiceError
from mmembed.serve.settings import ServeSettings


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` zero pixels: kilobytes on disk, gigabytes decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture
def index_dir(toy_dir: Path, tmp_path: Path) -> Path:
    return build_index(toy_dir, tmp_path / "index")


def app_over(index_dir: Path, **settings):
    retriever = Retriever.load(index_dir, encoder=ToyEncoder())
    return create_app(retriever, ServeSettings(**settings), encoder_spec="toy")


@pytest.fixture
def client(index_dir):
    from fastapi.testclient import TestClient

    with TestClient(app_over(index_dir), base_url="http://localhost") as test_client:
        yield test_client


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("side", [5000, 13000, 30000])  # under, between and over Pillow's own two limits
def test_decompression_bombs_are_413_from_the_header(client, side):
    bomb = png_bomb(side, side)
    assert len(bomb) < 200_000
    assert_error(search(client, image=bomb), 413, "too_many_pixels", f"{side}x{side}", "limit is 16,000,000")
    item = {"image_base64": base64.b64encode(bomb).decode()}
    assert_error(client.post("/api/v1/embed", json={"items": [item]}), 413, "too_many_pixels", "item 0")


def test_pixel_checks_do_not_touch_the_warnings_filters_under_concurrency(client):
    """Thumbnails and uploads decoded on many threads at once: the filters stay as they were, and a
    bomb between Pillow's warning and error thresholds is still a 413 afterwards."""
    before = list(warnings.filters)
    bomb = png_bomb(13000, 13000)
    barrier = threading.Barrier(12)
    statuses: list[int] = []

    def thumbnails(n: int) -> None:
        barrier.wait()
        for size in range(16, 16 + 5):
            statuses.append(client.get(f"/api/v1/candidates/10:{n % 6}/image", params={"size": size + n}).status_code)
        statuses.append(search(client, image=bomb).status_code)

    threads = [threading.Thread(target=thumbnails, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(statuses)) == [200, 413], statuses
    assert list(warnings.filters) == before
    assert_error(search(client, image=bomb), 413, "too_many_pixels")


def test_error_messages_say_what_was_wrong(index_dir):
    from fastapi.testclient import TestClient

    app = app_over(index_dir, max_upload_bytes=8 * 1024 * 1024, max_text_chars=100)
    with TestClient(app, base_url="http://localhost") as client:
        big = b"\x89PNG\r\n\x1a\n" + b"\0" * 9_700_000
        assert_error(search(client, image=big), 413, "image_too_large", "9.7 MB", "limit is 8.4 MB (8388608 bytes)")
        for image in (None, png()):  # a urlencoded form, a multipart form
            assert_error(search(client, image, text="x" * (1024 * 1024 + 10)), 422, "text_too_long", "100 characters")
        response = client.post("/api/v1/search", json={"text": "red"})
        assert_error(response, 415, "unsupported_media_type", "multipart/form-data", "application/json")
        response = client.post("/api/v1/embed", content=b"text=red",
                               headers={"content-type": "application/x-www-form-urlencoded"})
        assert response.status_code == 422 and response.json()["error"] == "invalid_request"


# --------------------------------------------------------------------------- hosts


def test_host_header_allow_list(index_dir):
    from fastapi.testclient import TestClient

    with TestClient(app_over(index_dir), base_url="http://localhost:8000") as client:
        assert client.get("/api/v1/info").status_code == 200
        for host in ("127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
            assert client.get("/api/v1/info", headers={"host": host}).status_code == 200, host
        body = assert_error(client.get("/api/v1/info", headers={"host": "evil.example"}), 421, "host_not_allowed",
                            "evil.example", "--allowed-host")
        assert "count" not in body
        assert_error(client.get("/", headers={"host": "evil.example:8000"}), 421, "host_not_allowed")
    with TestClient(app_over(index_dir, allowed_hosts=["search.example"]), base_url="http://search.example") as c:
        assert c.get("/api/v1/info").status_code == 200
        assert c.get("/api/v1/info", headers={"host": "evil.example"}).status_code == 421
    with TestClient(app_over(index_dir, host="10.1.2.3"), base_url="http://10.1.2.3:8000") as c:
        assert c.get("/api/v1/info").status_code == 200
    with TestClient(app_over(index_dir, allowed_hosts=["*"]), base_url="http://anything.example") as c:
        assert c.get("/api/v1/info").status_code == 200


# --------------------------------------------------------------------------- connections (real server)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def test_health_answers_under_a_flood_of_idle_sockets(index_dir):
    settings = ServeSettings(max_connections=64, header_timeout_s=60)
    with running_server(app_over(index_dir, **vars(settings)), settings=settings) as url:
        idle = [_connect(url) for _ in range(300)]
        half = [_connect(url) for _ in range(20)]
        for sock in half:
            sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n")  # a head that never ends
        try:
            for _ in range(3):
                with httpx.Client(base_url=url, timeout=10) as http:
                    assert http.get("/api/v1/health").json()["status"] == "ok"
                    assert http.get("/api/v1/ready").json()["ready"] is True
                    assert http.post("/api/v1/search", data={"text": "red", "k": "1"}).status_code == 200
            closed = sum(_closed_by_server(sock) for sock in idle[:50])
            assert closed == 50  # the oldest idle sockets made room
        finally:
            for sock in idle + half:
                sock.close()


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return False


def test_stalled_heads_and_bodies_are_closed(index_dir):
    settings = ServeSettings(header_timeout_s=0.5, body_timeout_s=0.5)
    with running_server(app_over(index_dir, **vars(settings)), settings=settings) as url:
        silent = _connect(url)
        assert _closed_by_server(silent)  # never sent a request head
        short = _connect(url)
        body = b"text=red&k=1"
        short.sendall(b"POST /api/v1/search HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                      b"application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n" + body)
        short.settimeout(20)
        answer = b""
        while chunk := short.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in answer and b"Content-Length" in answer
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.get("/api/v1/health").status_code == 200
        silent.close()
        short.close()


# --------------------------------------------------------------------------- bind first, then load


def test_cli_serve_binds_first_and_reports_loading(index_dir, monkeypatch):
    from mmembed.cli.main import main
    from mmembed.serve import server as server_module

    gate = threading.Event()

    def slow_load(spec):
        gate.wait(30)
        return ToyEncoder()

    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", slow_load)
    servers = []
    real_make = server_module.make_server
    monkeypatch.setattr(server_module, "make_server", lambda *a, **k: servers.append(real_make(*a, **k)) or servers[-1])
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(["serve", str(index_dir), "--port", str(port)])))
    thread.start()
    try:
        client = Client(f"http://127.0.0.1:{port}", timeout=10)
        deadline = time.monotonic() + 30
        while True:
            try:
                readiness = client.ready()
                break
            except ServiceError as e:
                assert e.error == "unreachable" and time.monotonic() < deadline
                time.sleep(0.05)
        assert readiness.ready is False and readiness.status == "loading"
        with pytest.raises(ServiceError) as caught:
            client.info()
        assert caught.value.status == 503 and caught.value.error == "loading"
        gate.set()
        wait_ready(client)
        assert client.search("red", k=1).hits
    finally:
        gate.set()
        if servers:
            servers[0].should_exit = True
        thread.join(30)
    assert codes == [0]


# --------------------------------------------------------------------------- the Python client


def test_client_raises_service_errors_for_every_failure(index_dir, tmp_path):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    probe.close()
    with Client(dead, timeout=5) as client, pytest.raises(ServiceError) as caught:
        client.health()
    assert caught.value.status is None and caught.value.error == "unreachable"

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(1)  # accepts, never answers
    with Client(f"http://127.0.0.1:{hung.getsockname()[1]}", timeout=0.5) as client, \
            pytest.raises(ServiceError) as caught:
        client.health()
    assert caught.value.error == "timeout"
    hung.close()

    from fastapi.testclient import TestClient

    with TestClient(app_over(index_dir), base_url="http://localhost") as http:
        client = Client(http=http)
        with pytest.raises(ServiceError) as caught:
            client.search("red", k=0)  # the service's own limit, from the service
        assert caught.value.error == "invalid_k" and caught.value.status == 422
        for call in (lambda: client.embed([]), lambda: client.search(),
                     lambda: client.embed([tmp_path / "missing.png"]), lambda: client.embed([{"txt": "a"}])):
            with pytest.raises(ServiceError) as caught:
                call()
            assert caught.value.error == "invalid_request" and caught.value.status is None
        # a str is text, never a file name; images are explicit
        Image.new("RGB", (8, 8), COLOURS["red"]).save(tmp_path / "red.png")
        as_text, as_image, as_mapping = client.embed([str(tmp_path / "red.png"), tmp_path / "red.png",
                                                      {"image": (tmp_path / "red.png").read_bytes()}]).vectors
        expected = ToyEncoder().encode_queries([_item(str(tmp_path / "red.png"), None),
                                                _item(None, Image.new("RGB", (8, 8), COLOURS["red"]))])
        assert as_text == pytest.approx(expected[0].tolist(), abs=1e-6)
        assert as_image == pytest.approx(expected[1].tolist(), abs=1e-6) and as_mapping == as_image
        answer = client.search(image=str(tmp_path / "red.png"), k=1)  # search's image argument is an image
        assert answer.query_modality == "image" and answer.hits[0].id == "10:0"


def _item(text, image):
    from mmembed.encoders.base import Item

    return Item("x", text, image)

