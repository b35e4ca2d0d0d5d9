"""Filters and hybrid search through the service: the HTTP API, the Python client, mmembed search --server."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from test_serve_api import assert_error, build_index, search  # noqa: E402
from test_serve_server import running_server  # noqa: E402
from toy import ToyEncoder  # noqa: E402

from mmembed.cli.main import main  # noqa: E402
from mmembed.retrieval import Retriever  # noqa: E402
from mmembed.serve.app import create_app  # noqa: E402
from mmembed.serve.settings import ServeSettings  # noqa: E402


@pytest.fixture
def retriever(toy_dir, tmp_path):
    return Retriever.load(build_index(toy_dir, tmp_path / "index"), encoder=ToyEncoder())


def test_http_filters_equal_the_library_and_bad_ones_name_the_field(retriever):
    from fastapi.testclient import TestClient

    app = create_app(retriever, ServeSettings(allowed_hosts=["testserver"]), encoder_spec="toy")
    with TestClient(app) as client:
        body = search(client, text="blue colour", k=5, modality="image").json()
        expected = retriever.search("blue colour", k=5, modality="image")
        assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
        assert body["hits"] and all(h["modality"] == "image" for h in body["hits"])
        one = search(client, text="blue colour", k=5, where=f'id == "{expected[1].id}"').json()
        assert [h["id"] for h in one["hits"]] == [expected[1].id]
        fused = search(client, text="a blue square", k=3, hybrid="rrf").json()
        assert [h["id"] for h in fused["hits"]] == [h.id for h in retriever.search("a blue square", k=3,
                                                                                   hybrid="rrf")]
        assert_error(search(client, text="blue", where="shade == 1"), 422, "invalid_filter", "unknown field 'shade'")
        assert_error(search(client, text="blue", modality="video"), 422, "invalid_request", "modality")
        assert_error(search(client, text="blue", hybrid="max"), 422, "invalid_request", "hybrid")


def test_remote_cli_search_with_filters(retriever, capsys):
    with running_server(create_app(retriever, encoder_spec="toy")) as url:
        assert main(["search", "--server", url, "--text", "blue colour", "--modality", "image", "-k", "3"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 3 and all(" image " in line for line in lines)
        assert main(["search", "--server", url, "--text", "blue", "--where", "shade == 1"]) == 2
        assert "unknown field 'shade'" in capsys.readouterr().err
        assert main(["search", "--server", url, "--text", "a red square", "--hybrid", "bm25", "-k", "1"]) == 0
        assert "a red square" in capsys.readouterr().out


def test_the_page_restricts_candidates_by_modality(toy_dir, tmp_path):
    pytest.importorskip("playwright")
    from playwright.sync_api import expect, sync_playwright
    from test_serve_browser import CHROMIUM, TIMEOUT_MS

    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed")
    retriever = Retriever.load(build_index(toy_dir, tmp_path / "index"), encoder=ToyEncoder())
    with running_server(create_app(retriever, encoder_spec="toy")) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.get_by_label("Query text").fill("a red square")
            page.get_by_label("Number of results").fill("12")
            page.get_by_label("Candidates").select_option("image")
            page.get_by_label("Query text").press("Enter")
            expect(page.locator("#results .card")).to_have_count(6)  # the toy pool's 6 images, no text
            assert page.locator("#results .badge-text").count() == 0
            page.get_by_label("Candidates").select_option("")
            page.get_by_label("Query text").press("Enter")
            expect(page.locator("#results .card")).to_have_count(12)
        finally:
            browser.close()
