"""The OpenAI-compatible embeddings route, through OpenAI's own Python client against the running
service, and the Cohere/Jina-shaped rerank route."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_serve_api import ImagesFirstReranker, build_index, png
from test_serve_server import running_server
from toy import COLOURS, ToyEncoder

from mmembed.encoders.base import Item
from mmembed.retrieval import Retriever
from mmembed.serve.app import create_app
from mmembed.serve.settings import ServeSettings

openai = pytest.importorskip("openai", reason="the openai client is in the dev extra")

INSTRUCTION = "Find the image of this colour."


@pytest.fixture
def index_dir(toy_dir: Path, tmp_path: Path) -> Path:
    return build_index(toy_dir, tmp_path / "index")


def app_over(index_dir: Path, reranker=None, **settings):
    retriever = Retriever.load(index_dir, encoder=ToyEncoder(), reranker=reranker)
    return create_app(retriever, ServeSettings(**settings), encoder_spec="toy")


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_openai_client_embeds_text_and_images(index_dir):
    settings = ServeSettings(api_key="k3y")
    encoder = ToyEncoder()
    red = png(colour=COLOURS["red"])
    with running_server(app_over(index_dir, api_key="k3y"), settings=settings) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k3y", max_retries=0)
        answer = client.embeddings.create(model="toy-encoder-v1", input=["a red square", "blue"])
        expected = encoder.encode_candidates([Item("a", "a red square"), Item("b", "blue")])
        got = np.array([d.embedding for d in answer.data])
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert answer.model == "toy-encoder-v1" and [d.index for d in answer.data] == [0, 1]
        assert answer.usage.prompt_tokens == 4 and answer.usage.total_tokens == 4  # the toy has no tokenizer

        floats = client.embeddings.create(model="toy", input="blue", encoding_format="float")
        np.testing.assert_allclose(floats.data[0].embedding, expected[1], atol=1e-6)

        # the multimodal extension: {text, image} items, queries with an instruction
        answer = client.embeddings.create(
            model="mmembed", input=[{"image": data_url(red)}, {"text": "square", "image": base64.b64encode(red)
                                                               .decode()}],
            extra_body={"input_type": "query", "instruction": INSTRUCTION})
        image = Image.new("RGB", (16, 16), COLOURS["red"])
        expected = encoder.encode_queries([Item("a", None, image), Item("b", "square", image)], INSTRUCTION)
        np.testing.assert_allclose([d.embedding for d in answer.data], expected, atol=1e-6)

        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model="toy", input="blue", dimensions=32)
        assert "not trained for truncation" in caught.value.message and "64" in caught.value.message
        with pytest.raises(openai.NotFoundError) as caught:
            client.embeddings.create(model="text-embedding-3-small", input="blue")
        assert "'toy'" in caught.value.message and "may be left out" in caught.value.message
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).embeddings.create(
                model="toy", input="blue")


def test_embeddings_errors_are_openai_shaped(index_dir):
    with TestClient(app_over(index_dir, max_embed_items=3), base_url="http://localhost") as client:
        def post(**body):
            return client.post("/v1/embeddings", json={"model": "toy", **body})

        cases = [
            (post(input=[{"image": "https://example.com/cat.png"}]), 422, "image_url_not_allowed", "never fetches"),
            (post(input=[[1, 2, 3]]), 400, "token_input_not_supported", "send strings"),
            (post(input=["a"] * 4), 422, "too_many_items", "limit is 3"),
            (post(input=[]), 422, "empty_input", "non-empty"),
            (post(input=[{}]), 422, "empty_item", "input 0"),
            (post(input="a", instruction="x", input_type="document"), 422, "invalid_request", "without an instruction"),
            (post(input="a", model="toy-query", input_type="document"), 422, "invalid_request", "drop one of them"),
            (post(input=5), 422, "invalid_request", "input: expected a string, or a list of strings"),
            (post(input="a", encoding_format="int8"), 422, "invalid_request", "encoding_format"),
            (post(input=[{"image": "data:image/png;base64,***"}]), 422, "invalid_base64", "input 0"),
            (post(input=[{"image": data_url(b"not an image")}]), 415, "unsupported_image_type", "input 0"),
        ]
        for response, status, code, words in cases:
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert error["code"] == code and words in error["message"], error
            assert error["type"] == "invalid_request_error"


def test_rerank_route(index_dir):
    with TestClient(app_over(index_dir, reranker=ImagesFirstReranker(top_k=5)),
                    base_url="http://localhost") as client:
        response = client.post("/v1/rerank", json={"query": "red", "documents": ["a", "abcd", {"text": "ab"}],
                                                   "top_n": 2, "return_documents": True})
        body = response.json()
        assert response.status_code == 200 and body["model"] == "images-first"
        assert [r["index"] for r in body["results"]] == [1, 2]
        assert body["results"][0]["relevance_score"] == pytest.approx(0.04)
        assert body["results"][0]["document"] == {"text": "abcd"}
        plain = client.post("/v1/rerank", json={"query": "red", "documents": ["a", "ab"]}).json()
        assert [r["index"] for r in plain["results"]] == [1, 0] and plain["results"][0]["document"] is None
    with TestClient(app_over(index_dir), base_url="http://localhost") as client:
        error = client.post("/v1/rerank", json={"query": "red", "documents": ["a"]}).json()["error"]
        assert error["code"] == "no_reranker" and "--rerank" in error["message"]


def test_usage_counts_tokens_with_the_encoder_tokenizer_when_it_has_one():
    from mmembed.serve.compat import count_tokens

    class Tokenizer:
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [list(t) for t in texts]}  # one token per character

    class Part:
        tokenizer = Tokenizer()

    class TorchLikeEncoder:
        def __init__(self):
            self._modules = {"text": Part()}

    assert count_tokens(TorchLikeEncoder(), ["abc", "de"]) == 5
    assert count_tokens(ToyEncoder(), ["two words", "three more words"]) == 5  # no tokenizer: words
