"""The service without an index (``mmembed serve --model NAME``), as TEI / vLLM / Infinity users
use it: ``/v1/models``, ``model`` optional and echoed, served names with ``-query`` / ``-document``,
LangChain's ``OpenAIEmbeddings``, ``/metrics`` and ``/health`` at the root, and precise messages."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_serve_api import build_index, png
from test_serve_server import running_server
from toy import ToyEncoder

from mmembed.encoders.base import Item, per_item_instructions
from mmembed.instructions import InstructionRegistry
from mmembed.serve.app import create_app
from mmembed.serve.backend import EmbeddingModel
from mmembed.serve.settings import ServeSettings


class QueryMarkingToy(ToyEncoder):
    """The toy encoder whose queries differ from its documents (as a real model's prompts make them)."""

    def encode_queries(self, queries, instruction=None, *, batch_size=32, show_progress=False):
        rows = np.asarray(ToyEncoder.encode_candidates(self, queries), dtype=np.float64)
        marks = [0.5 + (0.3 if ins else 0.0) for ins in per_item_instructions(instruction, len(queries))]
        rows[:, 0] += np.asarray(marks)
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def registry(toy_dir) -> InstructionRegistry:
    return InstructionRegistry.from_tsv(toy_dir / "instructions" / "query_instructions.tsv")


def model_app(registry=None, **settings):
    return create_app(EmbeddingModel(QueryMarkingToy(), registry), ServeSettings(**settings), encoder_spec="toy")


def test_embeddings_without_an_index_or_a_model_field(registry):
    encoder = QueryMarkingToy()
    with TestClient(model_app(registry), base_url="http://localhost") as client:
        body = client.post("/v1/embeddings", json={"input": ["red square"]}).json()
        assert body["model"] == "toy"  # the served name, not the encoder id
        expected = encoder.encode_candidates([Item("a", "red square")])[0]
        np.testing.assert_allclose(body["data"][0]["embedding"], expected, atol=1e-6)
        # the name asked for is echoed, and -query embeds queries
        body = client.post("/v1/embeddings", json={"input": "red", "model": "toy-query"}).json()
        assert body["model"] == "toy-query"
        np.testing.assert_allclose(body["data"][0]["embedding"], encoder.encode_queries([Item("a", "red")])[0],
                                   atol=1e-6)
        # task= uses the model's own instructions, without an index
        task = client.get("/api/v1/tasks").json()[0]
        body = client.post("/v1/embeddings", json={"input": "red", "task": task["name"]}).json()
        np.testing.assert_allclose(body["data"][0]["embedding"],
                                   encoder.encode_queries([Item("a", "red")], task["instruction"])[0], atol=1e-6)
        # search and candidates need an index: a clear 409, not a 500 or an empty answer
        error = client.post("/api/v1/search", data={"text": "red"}).json()
        assert error["error"] == "no_index" and "--model NAME INDEX" in error["detail"]
        assert client.get("/api/v1/candidates/1").json()["error"] == "no_index"
        info = client.get("/api/v1/info").json()
        assert info["has_index"] is False and info["count"] is None and info["encoder"] == "toy"


def test_models_route_and_served_names(registry):
    with TestClient(model_app(registry, served_model_names=["emb", "alias"]), base_url="http://localhost") as client:
        models = client.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["emb", "emb-query", "emb-document", "alias", "alias-query",
                                                     "alias-document"]
        assert models["object"] == "list" and all(m["object"] == "model" and m["root"] == "toy"
                                                  for m in models["data"])
        assert [m["input_type"] for m in models["data"][:3]] == [None, "query", "document"]
        assert client.post("/v1/embeddings", json={"input": "a"}).json()["model"] == "emb"
        for name in ("alias-document", "toy", "toy-encoder-v1", "mmembed"):
            assert client.post("/v1/embeddings", json={"input": "a", "model": name}).json()["model"] == name
        error = client.post("/v1/embeddings", json={"input": "a", "model": "other"}).json()["error"]
        assert error["code"] == "model_not_found" and "'emb'" in error["message"] and "left out" in error["message"]
    with pytest.raises(Exception, match="served_model_names"):
        ServeSettings(served_model_names=["x-query"])


def test_default_input_type_for_clients_that_send_nothing_else(registry):
    encoder = QueryMarkingToy()
    with TestClient(model_app(registry, default_input_type="query"), base_url="http://localhost") as client:
        got = client.post("/v1/embeddings", json={"input": "red"}).json()["data"][0]["embedding"]
        np.testing.assert_allclose(got, encoder.encode_queries([Item("a", "red")])[0], atol=1e-6)
        got = client.post("/v1/embeddings", json={"input": "red", "model": "toy-document"}).json()
        np.testing.assert_allclose(got["data"][0]["embedding"], encoder.encode_candidates([Item("a", "red")])[0],
                                   atol=1e-6)


def test_openai_client_lists_models_and_embeds_without_a_model_field(registry):
    openai = pytest.importorskip("openai")
    with running_server(model_app(registry)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["toy", "toy-query", "toy-document"]
        answer = client.embeddings.create(model="toy-query", input=["red", "blue"])
        expected = QueryMarkingToy().encode_queries([Item("a", "red"), Item("b", "blue")])
        np.testing.assert_allclose([d.embedding for d in answer.data], expected, atol=1e-6)  # base64 by default
        assert answer.model == "toy-query"


def byte_encoding():
    """A tiktoken encoding of single bytes: what LangChain tokenizes with in this offline test (the
    real cl100k_base is a download)."""
    import tiktoken

    return tiktoken.Encoding(name="bytes", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={})


def test_langchain_with_only_base_url_key_and_model(registry, monkeypatch):
    """LangChain's OpenAIEmbeddings with its defaults sends tiktoken token arrays, up to 1000 inputs
    per request; embed_query and embed_documents send the same request, so the served name picks."""
    langchain_openai = pytest.importorskip("langchain_openai")
    tiktoken = pytest.importorskip("tiktoken")
    encoding = byte_encoding()
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: encoding)  # the client's side
    monkeypatch.setattr("mmembed.serve.compat.local_token_encoding", lambda: encoding)  # the server's copy
    encoder = QueryMarkingToy()
    texts = [f"document {i} about red" for i in range(300)]  # over one encoder batch, under LangChain's chunk
    with running_server(model_app(registry, api_key="k")) as url:
        queries = langchain_openai.OpenAIEmbeddings(base_url=f"{url}/v1", api_key="k", model="toy-query")
        documents = langchain_openai.OpenAIEmbeddings(base_url=f"{url}/v1", api_key="k", model="toy-document")
        np.testing.assert_allclose(queries.embed_query("red heart"),
                                   encoder.encode_queries([Item("q", "red heart")])[0], atol=1e-6)
        got = np.array(documents.embed_documents(texts))
        expected = encoder.encode_candidates([Item(str(i), t) for i, t in enumerate(texts)])
        assert np.min(np.sum(got * expected, axis=1)) >= 0.9999


def test_token_arrays_without_a_local_encoding_are_refused_with_the_fix(registry):
    with TestClient(model_app(registry), base_url="http://localhost") as client:
        error = client.post("/v1/embeddings", json={"input": [[1, 2, 3]]}).json()["error"]
        assert error["code"] == "token_input_not_supported" and "check_embedding_ctx_length=False" in error["message"]


def test_metrics_and_root_health(registry):
    parser = pytest.importorskip("prometheus_client.parser")
    with TestClient(model_app(registry), base_url="http://localhost") as client:
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/ready").json()["ready"] is True
        for _ in range(3):
            client.post("/v1/embeddings", json={"input": ["a", "b"]})
        client.post("/v1/embeddings", json={"input": []})
        text = client.get("/metrics").text
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in families["mmembed_requests"].samples
                if s.name == "mmembed_requests_total"}
    assert requests[("/v1/embeddings", "200")] == 3 and requests[("/v1/embeddings", "422")] == 1
    latency = [s for s in families["mmembed_request_duration_seconds"].samples
               if s.name.endswith("_count") and s.labels["route"] == "/v1/embeddings"]
    assert latency[0].value == 4
    batches = {s.name: s.value for s in families["mmembed_batch_items"].samples}
    assert batches["mmembed_batch_items_count"] == 3 and batches["mmembed_batch_items_sum"] == 6
    assert [s.value for s in families["mmembed_queue_depth"].samples] == [0]
    assert "mmembed_load_seconds" in families and [s.value for s in families["mmembed_ready"].samples] == [1]


def test_messages_name_the_problem(toy_dir, tmp_path, registry):
    from mmembed.retrieval import Retriever

    index = Retriever.load(build_index(toy_dir, tmp_path / "index"), encoder=ToyEncoder())
    with TestClient(create_app(index, ServeSettings(max_k=100)), base_url="http://localhost") as client:
        # an image sent as a text field (was "Expected UploadFile, received: <class 'str'>")
        body = client.post("/api/v1/search", data={"text": "red", "image": "photo.png"}).json()
        assert body["error"] == "invalid_request" and "file part" in body["detail"]
        assert "UploadFile" not in body["detail"]
        # k over the service's limit, in a multipart form (was "less than or equal to 10000")
        body = client.post("/api/v1/search", data={"text": "red", "k": "10001"},
                           files={"image": ("a.png", png())}).json()
        assert body["error"] == "invalid_k" and "between 1 and 100" in body["detail"]
        # malformed JSON (was '"32: JSON decode error"' with param "32")
        response = client.post("/v1/embeddings", content=b'{"input": "a", "model": }',
                               headers={"content-type": "application/json"})
        error = response.json()["error"]
        assert response.status_code == 400 and error["param"] is None and "not valid JSON" in error["message"]
        # a wrong input type: one line, not a dump of every union member
        error = client.post("/v1/embeddings", json={"input": {"text": "a"}}).json()["error"]
        assert error["param"] == "input" and error["message"].count("input") == 1 and len(error["message"]) < 120
    # the same checks, the same status, on both embedding routes
    with TestClient(model_app(registry, max_embed_items=1), base_url="http://localhost") as client:
        ours = client.post("/api/v1/embed", json={"items": [{"text": "a"}] * 2})
        theirs = client.post("/v1/embeddings", json={"input": ["a"] * 2})
        assert ours.status_code == theirs.status_code == 422
        assert ours.json()["error"] == theirs.json()["error"]["code"] == "too_many_items"
        ours = client.post("/api/v1/embed", json={"items": [{"text": "a"}], "kind": "candidate", "task": "x"})
        theirs = client.post("/v1/embeddings", json={"input": "a", "input_type": "document", "task": "x"})
        assert ours.status_code == theirs.status_code == 422


def test_docs_schema_is_served_offline(registry):
    with TestClient(model_app(registry), base_url="http://localhost") as client:
        schema = client.get("/openapi.json").json()
        request = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert request["$ref"].endswith("OpenAIEmbeddingRequest")
        assert "input_type" in schema["components"]["schemas"]["OpenAIEmbeddingRequest"]["properties"]
        assert "/v1/models" in schema["paths"] and "/metrics" in schema["paths"] and "/health" in schema["paths"]
        page = client.get("/docs").text
        assert "cdn" not in page.lower() and "/static/docs.js" in page


def test_rerank_without_an_index(registry):
    from test_serve_api import ImagesFirstReranker

    app = create_app(EmbeddingModel(QueryMarkingToy(), registry, reranker=ImagesFirstReranker(top_k=5)),
                     encoder_spec="toy")
    with TestClient(app, base_url="http://localhost") as client:
        body = client.post("/v1/rerank", json={"query": "red", "documents": ["a", "abcd", "ab"]}).json()
        assert [r["index"] for r in body["results"]] == [1, 2, 0]
