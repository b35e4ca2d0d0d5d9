"""The search service's API in-process (FastAPI TestClient) over a toy retrieval directory."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from toy import COLOURS, ToyEncoder

from mmembed.cli.main import main
from mmembed.encoders.base import Item
from mmembed.errors import ModelError
from mmembed.rerank.base import BaseReranker
from mmembed.retrieval import Retriever
from mmembed.serve.app import create_app
from mmembed.serve.client import Client, ServiceError
from mmembed.serve.settings import ServeSettings

POOL = "cand_pool/global/mbeir_union_test_cand_pool.jsonl"
RED, YELLOW = "10:0", "10:3"  # the toy pool's red and yellow squares (images)
SLOW_ENCODE_S = 0.8


class ImagesFirstReranker(BaseReranker):
    """A deterministic fake reranker: candidates with an image first, then by text length."""

    reranker_id = "images-first"

    def score_pairs(self, queries, candidates, instructions=None, *, show_progress=False) -> np.ndarray:
        return np.array([(1.0 if c.image is not None else 0.0) + 0.01 * len(c.text or "") for c in candidates])


class SlowEncoder(ToyEncoder):
    def encode_queries(self, queries, instruction=None, **kwargs):
        time.sleep(SLOW_ENCODE_S)
        return super().encode_queries(queries, instruction, **kwargs)


class BrokenEncoder(ToyEncoder):
    def __init__(self, error: Exception):
        super().__init__()
        self.error = error

    def encode_queries(self, queries, instruction=None, **kwargs):
        raise self.error


def build_index(toy_dir: Path, out: Path) -> Path:
    Retriever.build(ToyEncoder(), toy_dir / POOL, out, encoder_spec="toy",
                    instructions_path=toy_dir / "instructions" / "query_instructions.tsv", show_progress=False)
    return out


def png(size: tuple[int, int] = (16, 16), colour: tuple[int, int, int] = COLOURS["yellow"], fmt: str = "PNG",
        noise: bool = False) -> bytes:
    image = Image.new("RGB", size, colour)
    if noise:
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def index_dir(toy_dir: Path, tmp_path: Path) -> Path:
    return build_index(toy_dir, tmp_path / "index")


@pytest.fixture
def serve(index_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """``serve(encoder=..., reranker=..., **settings)`` -> a TestClient of a fresh app (closed after the test)."""
    with ExitStack() as stack:
        def make(encoder=None, reranker=None, raise_server_exceptions: bool = True, **settings) -> TestClient:
            retriever = Retriever.load(index_dir, encoder=encoder or ToyEncoder(), reranker=reranker)
            app = create_app(retriever, ServeSettings(**{"allowed_hosts": ["testserver"], **settings}),
                             encoder_spec="toy")
            return stack.enter_context(TestClient(app, raise_server_exceptions=raise_server_exceptions))

        yield make


def search(client: TestClient, image: bytes | None = None, **fields) -> object:
    files = {"image": ("query.png", image, "image/png")} if image is not None else None
    return client.post("/api/v1/search", data={k: str(v) for k, v in fields.items()}, files=files)


def assert_error(response, status: int, error: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and all(w in body["detail"] for w in words), body
    return body


# --------------------------------------------------------------------------- status and metadata


def test_health_ready_and_info(serve):
    client = serve()
    assert client.get("/api/v1/health").json()["status"] == "ok"
    ready = client.get("/api/v1/ready").json()
    assert ready["ready"] is True and ready["status"] == "ready" and ready["in_flight"] == 0 and ready["capacity"] == 66
    info = client.get("/api/v1/info").json()
    assert (info["count"], info["dim"], info["encoder_id"], info["encoder"]) == (12, 64, "toy-encoder-v1", "toy")
    assert info["reranker"] is None and info["limits"]["max_k"] == 100
    names = [t["name"] for t in client.get("/api/v1/tasks").json()]
    assert names == ["toy:image->text", "toy:text->image", "toy:text->text"]
    assert info["tasks"][1]["instruction"] == "Find the image of this colour."


def test_readiness_while_loading_and_after_a_failed_load(index_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec: SlowEncoder())
    with TestClient(create_app(index_dir), base_url="http://localhost") as client:
        deadline = time.monotonic() + 20
        while not client.get("/api/v1/ready").json()["ready"]:
            assert time.monotonic() < deadline, "the index never became ready"
            time.sleep(0.05)
        assert client.get("/api/v1/info").json()["encoder"] == "toy"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "retrieval.json").write_text("{not json")
    with TestClient(create_app(tmp_path / "broken"), base_url="http://localhost") as client:
        deadline = time.monotonic() + 20
        while "loading" in (client.get("/api/v1/ready").json()["detail"] or ""):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        response = client.get("/api/v1/ready")
        assert response.status_code == 503 and "could not be loaded" in response.json()["detail"]
        assert "{not json" not in response.text and str(tmp_path) not in response.text
        assert_error(client.get("/api/v1/info"), 503, "not_ready", "could not be loaded")
        assert client.get("/api/v1/health").status_code == 200


# --------------------------------------------------------------------------- search


def test_search_by_text(serve):
    body = search(serve(), text="blue square", k=3).json()
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3] and body["hits"][0]["text"] == "a blue square"
    assert body["query_modality"] == "text" and body["reranked"] is False and body["k"] == 3
    timings = body["timings_ms"]
    assert timings["encode"] > 0 and timings["search"] > 0 and timings["rerank"] is None
    assert timings["total"] >= timings["encode"] + timings["search"]


def test_search_by_image_with_a_task(serve):
    body = search(serve(), image=png(colour=COLOURS["yellow"]), task="toy:image->text", k=2).json()
    assert body["query_modality"] == "image" and body["instruction"] == "Name the colour of this square."
    top = body["hits"][0]
    assert top["id"] == YELLOW and top["has_image"] and top["image_url"] == "/api/v1/candidates/10%3A3/image"
    assert body["hits"][1]["text"] == "a yellow square"


def test_search_by_text_and_image(serve):
    body = search(serve(), image=png(colour=COLOURS["red"]), text="square", instruction="Find it.", k=4).json()
    assert body["query_modality"] == "image,text" and body["instruction"] == "Find it."
    assert {RED, "10:100"} <= {h["id"] for h in body["hits"]}


def test_paging_with_offset(serve):
    client = serve(max_depth=8)
    whole = search(client, text="square", k=6).json()["hits"]
    page = search(client, text="square", k=3, offset=3).json()
    assert page["offset"] == 3 and [h["id"] for h in page["hits"]] == [h["id"] for h in whole[3:6]]
    assert [h["rank"] for h in page["hits"]] == [4, 5, 6]
    assert_error(search(client, text="square", k=3, offset=6), 422, "invalid_offset", "no deeper than 8")


def test_query_errors(serve):
    client = serve(max_text_chars=50, max_k=20)
    assert_error(search(client, task="toy:text->video", text="red"), 422, "unknown_task", "known tasks: toy:")
    assert_error(search(client, task="toy:text->image", instruction="x", text="red"), 422, "invalid_request",
                 "not both")
    assert_error(search(client, k=3), 422, "empty_query", "text, an image, or both")
    assert_error(search(client, text="   "), 422, "empty_query")
    assert_error(search(client, text="x" * 51), 422, "text_too_long", "51 characters", "limit is 50")
    assert_error(search(client, text="red", instruction="y" * 51), 422, "text_too_long", "instruction")
    assert_error(search(client, text="red", k=21), 422, "invalid_k", "between 1 and 20")
    assert_error(search(client, text="red", k=0), 422, "invalid_k", "between 1 and 20, got 0")
    # the service's limit is named, not a parser bound (was "less than or equal to 10000")
    body = assert_error(search(client, text="red", k=10001), 422, "invalid_k", "between 1 and 20, got 10001")
    assert "10000" not in body["detail"].replace("10001", "")
    body = assert_error(search(client, text="red", k="many"), 422, "invalid_request", "k:")
    assert body["fields"][0]["field"] == "k"
    assert_error(search(client, text="red", rerank=True), 409, "no_reranker", "--rerank")


@pytest.mark.parametrize(("settings", "image", "status", "error", "words"), [
    ({"max_upload_bytes": 2000}, png((64, 64), noise=True), 413, "image_too_large", ("limit is 2.0 kB (2000 bytes)",)),
    ({"max_pixels": 1000}, png((40, 40)), 413, "too_many_pixels", ("40x40", "limit is 1,000 pixels")),
    ({}, png(fmt="TIFF"), 415, "unsupported_image_type", ("PNG, JPEG",)),
    ({}, b"%PDF-1.4 not an image", 415, "unsupported_image_type", ()),
    ({}, b"\x89PNG\r\n\x1a\n garbage", 400, "corrupt_image", ("cannot be read",)),
    ({}, b"GIF89a", 400, "corrupt_image", ("starts like a GIF",)),
    ({}, png((64, 64), noise=True)[:3000], 400, "corrupt_image", ("truncated",)),
    ({}, b"", 400, "empty_image", ()),
])
def test_image_upload_errors(serve, settings, image, status, error, words):
    assert_error(search(serve(**settings), image=image), status, error, *words)


def test_request_body_limit(serve):
    client = serve(max_upload_bytes=1000, max_request_bytes=5000)
    body = assert_error(search(client, image=png((64, 64), noise=True)), 413, "request_too_large",
                        "limit is 5.0 kB (5000 bytes)")
    assert "fields" not in body
    response = client.post("/api/v1/search", content=iter([b"text=red"]),
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert_error(response, 411, "length_required")


def test_rerank_toggle(serve):
    client = serve(reranker=ImagesFirstReranker(top_k=12))
    assert client.get("/api/v1/info").json()["reranker"] == "images-first"
    plain = search(client, text="a red square", k=12, rerank=False).json()
    assert plain["reranked"] is False and plain["hits"][0]["text"] == "a red square"
    assert all(h["rerank_score"] is None for h in plain["hits"])
    reranked = search(client, text="a red square", k=12, rerank=True).json()
    assert reranked["reranked"] is True and reranked["timings_ms"]["rerank"] > 0
    top = reranked["hits"][0]
    assert top["id"] == RED and top["rerank_score"] == pytest.approx(1.0)
    assert top["retrieval_score"] == pytest.approx(next(h["score"] for h in plain["hits"] if h["id"] == RED))
    assert search(client, text="a red square", k=12).json()["reranked"] is True  # default: rerank when attached


# --------------------------------------------------------------------------- embed


def test_embed_queries_and_candidates(serve):
    client, encoder = serve(), ToyEncoder()
    image = png(colour=COLOURS["green"])
    body = client.post("/api/v1/embed", json={"items": [{"text": "red"}, {"image_base64": base64.b64encode(image)
                                                                          .decode()}],
                                              "task": "toy:text->image"}).json()
    assert body["dim"] == 64 and body["kind"] == "query" and body["instruction"] == "Find the image of this colour."
    expected = encoder.encode_queries([Item("a", "red"), Item("b", None, Image.open(io.BytesIO(image)))],
                                      "Find the image of this colour.")
    np.testing.assert_allclose(np.array(body["vectors"]), expected, atol=1e-6)
    cands = client.post("/api/v1/embed", json={"items": [{"text": "a red square"}], "kind": "candidate"}).json()
    np.testing.assert_allclose(cands["vectors"][0], encoder.encode_candidates([Item("c", "a red square")])[0],
                               atol=1e-6)


def test_embed_errors(serve):
    client = serve(max_embed_items=2, max_upload_bytes=2000)
    post = lambda body: client.post("/api/v1/embed", json=body)  # noqa: E731
    assert_error(post({"items": [{"text": "a"}] * 3}), 422, "too_many_items", "limit is 2")
    assert_error(post({"items": [{}]}), 422, "empty_item", "item 0")
    assert_error(post({"items": [{"text": "a"}], "kind": "candidate", "instruction": "x"}), 422, "invalid_request")
    assert_error(post({"items": [{"image_base64": "***"}]}), 422, "invalid_base64", "item 0")
    big = base64.b64encode(png((64, 64), noise=True)).decode()
    assert_error(post({"items": [{"image_base64": big}]}), 413, "image_too_large", "item 0")
    assert_error(post({"items": []}), 422, "empty_input", "no items given")
    assert_error(post({"items": [{"text": "a"}], "colour": "red"}), 422, "invalid_request", "colour")
    response = client.post("/api/v1/embed", content=b'{"items": [{"text": "a"}],\n  oops}',
                           headers={"content-type": "application/json"})
    body = assert_error(response, 400, "invalid_request", "not valid JSON", "at character 29")
    assert "fields" not in body  # no field named after the character offset (was "32: JSON decode error")


# --------------------------------------------------------------------------- candidates


def test_candidate_text_and_image(serve):
    client = serve()
    assert client.get("/api/v1/candidates/10:100").json() == {
        "id": "10:100", "text": "a red square", "modality": "text", "has_image": False, "image_url": None}
    response = client.get("/api/v1/candidates/10%3A0/image", params={"size": 16})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (16, 16) and image.convert("RGB").getpixel((8, 8)) == COLOURS["red"]
    assert_error(client.get("/api/v1/candidates/10:999"), 404, "not_found", "10:999")
    assert_error(client.get("/api/v1/candidates/10:999/image"), 404, "not_found")
    assert_error(client.get("/api/v1/candidates/10:100/image"), 404, "no_image")
    assert_error(client.get("/api/v1/candidates/10:0/image", params={"size": 5}), 422, "invalid_request", "size")


def test_candidate_image_missing_on_disk_is_a_plain_error(serve, index_dir, toy_dir):
    client = serve()
    (toy_dir / "images" / "red.png").unlink()
    body = assert_error(client.get("/api/v1/candidates/10:0/image"), 500, "image_unreadable", "10:0")
    assert str(toy_dir) not in body["detail"]


# --------------------------------------------------------------------------- API key, errors, overload


def test_api_key(serve):
    client = serve(api_key="s3cret")
    for path in ("/api/v1/info", "/api/v1/tasks", "/api/v1/candidates/10:0", "/api/v1/candidates/10:0/image"):
        assert_error(client.get(path), 401, "unauthorized", "X-API-Key")
        assert_error(client.get(path, headers={"X-API-Key": "wrong"}), 401, "unauthorized")
        assert client.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert_error(search(client, text="red"), 401, "unauthorized")
    assert client.get("/api/v1/health").status_code == 200 and client.get("/api/v1/ready").status_code == 200
    assert client.get("/").status_code == 200  # the page asks for the key itself


def test_internal_errors_are_plain_and_library_errors_are_4xx(serve, caplog):
    client = serve(encoder=BrokenEncoder(RuntimeError("secret internals at /srv/x")), raise_server_exceptions=False)
    with caplog.at_level("ERROR", logger="mmembed.serve.app"):
        response = search(client, text="red")
    assert_error(response, 500, "internal_error", "service log")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert "secret internals" in caplog.text  # logged for the operator
    client = serve(encoder=BrokenEncoder(ModelError("this encoder cannot read that")))
    assert_error(search(client, text="red"), 400, "invalid_input", "cannot read that")


def test_unknown_routes_and_methods_answer_json(serve):
    client = serve()
    assert_error(client.get("/api/v1/nothing"), 404, "http_404")
    assert_error(client.get("/api/v1/search"), 405, "http_405")


class BlockedEncoder(ToyEncoder):
    """Holds every query call until the test opens the gate."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()

    def encode_queries(self, queries, instruction=None, **kwargs):
        self.gate.wait(30)
        return super().encode_queries(queries, instruction, **kwargs)


def test_overload_answers_503_at_once(serve):
    """With the encoder blocked, requests beyond the capacity (2) are refused while it is still
    blocked: they do not wait behind it."""
    encoder = BlockedEncoder()
    client = serve(encoder=encoder, workers=1, queue_size=1)
    results: list[tuple[int, str | None]] = []

    def call() -> None:
        response = search(client, text="red")
        results.append((response.status_code, response.headers.get("retry-after")))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(results) < 4:  # the 4 requests over capacity, answered with the encoder blocked
        assert time.monotonic() < deadline, results
        time.sleep(0.01)
    assert results == [(503, "1")] * 4 and not encoder.gate.is_set()
    encoder.gate.set()
    for t in threads:
        t.join()
    assert [status for status, _ in results[4:]] == [200, 200]
    assert client.get("/api/v1/ready").json()["in_flight"] == 0


# --------------------------------------------------------------------------- page, OpenAPI, client, CLI


def test_page_static_files_and_openapi(serve):
    client = serve()
    page = client.get("/")
    assert page.status_code == 200 and "<form id=\"search-form\"" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "style.css", "docs.js"):
        assert client.get(f"/static/{name}").status_code == 200
    docs = client.get("/docs")  # no CDN: the page and its script come from the service
    assert docs.status_code == 200 and 'href="/openapi.json"' in docs.text and "/static/docs.js" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text
    assert "script-src 'self'" in docs.headers["content-security-policy"]
    spec = client.get("/openapi.json").json()
    assert {"/api/v1/search", "/api/v1/embed", "/api/v1/info", "/api/v1/health", "/api/v1/ready",
            "/api/v1/candidates/{candidate_id}/image"} <= set(spec["paths"])
    assert "SearchResponse" in spec["components"]["schemas"]
    assert "APIKeyHeader" in spec["components"]["securitySchemes"]


def test_client_in_process(serve):
    client = Client(http=serve(reranker=ImagesFirstReranker(top_k=4)))
    assert client.health().status == "ok" and client.ready().ready
    assert client.info().reranker == "images-first" and len(client.tasks()) == 3
    answer = client.search("a blue square", Image.new("RGB", (8, 8), COLOURS["blue"]), k=3, rerank=False)
    assert answer.query_modality == "image,text" and answer.hits[0].id in ("10:2", "10:102")
    assert client.search("blue", k=4, rerank=True).reranked
    vectors = client.embed(["red", Image.new("RGB", (8, 8), COLOURS["red"]), ("red", png())]).vectors
    assert np.array(vectors).shape == (3, 64)
    assert client.candidate("10:101").text == "a green square"
    assert Image.open(io.BytesIO(client.candidate_image("10:1", size=20))).size == (20, 20)
    with pytest.raises(ServiceError) as caught:
        client.search("red", task="nope")
    assert caught.value.status == 422 and caught.value.error == "unknown_task"


def test_cli_serve_refuses_a_directory_that_is_not_an_index(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a retrieval index" in capsys.readouterr().err


def test_cli_settings_from_flags_config_and_environment(tmp_path, monkeypatch):
    from mmembed.cli.main import build_parser
    from mmembed.cli.serve import settings_from_args

    (tmp_path / "serve.yaml").write_text("max_k: 7\nport: 9000\n")
    monkeypatch.setenv("MMEMBED_API_KEY", "from-env")
    args = build_parser().parse_args(["serve", "idx", "--config", str(tmp_path / "serve.yaml"), "--port", "9100",
                                      "--set", "queue_size=3"])
    settings = settings_from_args(args)
    assert (settings.host, settings.port, settings.max_k, settings.queue_size) == ("127.0.0.1", 9100, 7, 3)
    assert settings.api_key == "from-env"
    args = build_parser().parse_args(["serve", "idx", "--api-key", "flag", "--workers", "2"])
    assert settings_from_args(args).api_key == "flag" and settings_from_args(args).workers == 2


def test_cli_attaches_the_reranker_of_a_rerank_config(index_dir, tmp_path, monkeypatch):
    from mmembed.cli.main import build_parser
    from mmembed.cli.serve import load_reranker, load_served

    built = []
    monkeypatch.setattr("mmembed.rerank.build_reranker", lambda config: built.append(config) or ImagesFirstReranker())
    monkeypatch.setattr("mmembed.encoders.registry.load_encoder", lambda spec, **settings: ToyEncoder())
    (tmp_path / "rerank.yaml").write_text("model: smollm2\ntop_k: 5\n")
    retriever = load_served(build_parser().parse_args(["serve", str(index_dir), "--rerank",
                                                       str(tmp_path / "rerank.yaml")]))
    assert built[0].top_k == 5 and isinstance(retriever.reranker, ImagesFirstReranker)
    assert load_reranker(None) is None
