"""Dynamic batching: concurrent requests share encoder calls, answers stay per request, and one bad
input fails only its own request."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_serve_api import build_index, png, search
from toy import COLOURS, ToyEncoder

from mmembed.errors import ModelError
from mmembed.retrieval import Retriever
from mmembed.serve.app import create_app
from mmembed.serve.settings import ServeSettings


class GatedEncoder(ToyEncoder):
    """Records the size of every query call; the first call waits until the test opens the gate,
    so that the other requests queue up behind it. Text containing 'poison' is refused."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.sizes: list[int] = []

    def encode_queries(self, queries, instruction=None, **kwargs):
        self.sizes.append(len(queries))
        if len(self.sizes) == 1:
            self.gate.wait(30)
        if any("poison" in (q.text or "") for q in queries):
            raise ModelError("this encoder refuses poison")
        return super().encode_queries(queries, instruction, **kwargs)


@pytest.fixture
def index_dir(toy_dir: Path, tmp_path: Path) -> Path:
    return build_index(toy_dir, tmp_path / "index")


def start(index_dir: Path, encoder: ToyEncoder, **settings) -> tuple[TestClient, object]:
    app = create_app(Retriever.load(index_dir, encoder=encoder), ServeSettings(**settings), encoder_spec="toy")
    return TestClient(app, base_url="http://localhost"), app.state.mmembed.service


def run_concurrently(calls) -> list:
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    return threads, results


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.01)


def test_queued_searches_run_as_one_encoder_call_with_per_request_answers(index_dir):
    encoder = GatedEncoder()
    client, service = start(index_dir, encoder, batch_max_items=32)
    texts = ["red", "green", "blue square", "yellow", "purple", "orange"]
    with client:
        first, _ = run_concurrently([lambda: search(client, text="red", k=1)])
        wait_until(lambda: encoder.sizes == [1])  # the first request holds the encoder
        calls = [lambda t=t, k=k: search(client, text=t, k=k) for k, t in enumerate(texts, start=1)]
        calls.append(lambda: search(client, image=png(colour=COLOURS["green"]), task="toy:image->text", k=2))
        threads, answers = run_concurrently(calls)
        wait_until(lambda: len(service.batcher._queue) == len(calls))
        encoder.gate.set()
        for t in threads + first:
            t.join(30)
    assert encoder.sizes == [1, len(calls)]
    reference = Retriever.load(index_dir, encoder=ToyEncoder())
    for k, (text, answer) in enumerate(zip(texts, answers), start=1):
        body = answer.json()
        assert body["k"] == k and body["timings_ms"]["batch_items"] == len(calls)
        assert [h["id"] for h in body["hits"]] == [h.id for h in reference.search(text, k=k)]
    image_answer = answers[-1].json()
    instruction = "Name the colour of this square."
    expected = reference.search(None, Image.new("RGB", (16, 16), COLOURS["green"]), instruction=instruction, k=2)
    assert image_answer["query_modality"] == "image" and image_answer["instruction"] == instruction
    assert [h["id"] for h in image_answer["hits"]] == [h.id for h in expected]


def test_one_bad_request_does_not_fail_its_batch_mates(index_dir):
    encoder = GatedEncoder()
    client, service = start(index_dir, encoder)
    with client:
        first, _ = run_concurrently([lambda: search(client, text="red", k=1)])
        wait_until(lambda: encoder.sizes == [1])
        embed_item = {"image_base64": base64.b64encode(png(colour=COLOURS["blue"])).decode()}
        calls = [lambda: search(client, text="green", k=1), lambda: search(client, text="poison", k=1),
                 lambda: client.post("/api/v1/embed", json={"items": [{"text": "blue"}, embed_item]}),
                 lambda: search(client, text="yellow", k=1)]
        threads, answers = run_concurrently(calls)
        wait_until(lambda: len(service.batcher._queue) == len(calls))
        encoder.gate.set()
        for t in threads + first:
            t.join(30)
    # the batch's searches (one call of 3 queries; the embedding's 2 items are another call, made
    # before or after it) failed, so the batch's 4 requests ran alone
    assert 3 in encoder.sizes[1:3] and sorted(encoder.sizes[-4:]) == [1, 1, 1, 2]
    assert [a.status_code for a in answers] == [200, 400, 200, 200]
    assert "poison" in answers[1].json()["detail"]
    reference = Retriever.load(index_dir, encoder=ToyEncoder())
    assert answers[0].json()["hits"][0]["id"] == reference.search("green", k=1)[0].id
    assert answers[3].json()["hits"][0]["id"] == reference.search("yellow", k=1)[0].id
    assert np.array(answers[2].json()["vectors"]).shape == (2, 64)


@pytest.mark.parametrize(("max_items", "queued", "sizes"), [
    (1, 3, [1, 1, 1, 1]),   # unbatched: every request encoded alone
    (4, 10, [1, 4, 4, 2]),  # batches never exceed the item limit
])
def test_batches_respect_the_item_limit(index_dir, max_items, queued, sizes):
    encoder = GatedEncoder()
    client, service = start(index_dir, encoder, batch_max_items=max_items)
    with client:
        first, _ = run_concurrently([lambda: search(client, text="red", k=1)])
        wait_until(lambda: encoder.sizes == [1])
        threads, answers = run_concurrently([lambda: search(client, text="blue", k=1)] * queued)
        wait_until(lambda: len(service.batcher._queue) == queued)
        encoder.gate.set()
        for t in threads + first:
            t.join(30)
    assert encoder.sizes == sizes and all(a.status_code == 200 for a in answers)
