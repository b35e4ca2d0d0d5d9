"""The search page in a real browser: Debian's chromium, headless, driven by Playwright for Python.

No browser is downloaded: Playwright launches the system chromium (``executable_path``), which
``make setup`` installs (scripts/system_deps.sh). Screenshots are saved under
``test-artifacts/serve-browser/`` (or ``$MMEMBED_TEST_ARTIFACTS``); the test prints where.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_serve_api import ImagesFirstReranker, build_index
from test_serve_server import running_server
from toy import COLOURS, ToyEncoder

from mmembed.retrieval import Retriever
from mmembed.serve.app import create_app

CHROMIUM = next((p for p in (os.environ.get("MMEMBED_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"))
                 if p and Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs "
                                                         "it; or apt-get install chromium)")
TIMEOUT_MS = 30_000
ALL_THUMBNAILS_LOADED = """() => {
  const images = [...document.querySelectorAll('#results img.thumb')];
  return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


@pytest.fixture
def artifacts() -> Path:
    root = Path(os.environ.get("MMEMBED_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
    out = root / "serve-browser"
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {out}")
    return out


@pytest.fixture
def service_url(toy_dir: Path, tmp_path: Path):
    index = build_index(toy_dir, tmp_path / "index")
    retriever = Retriever.load(index, encoder=ToyEncoder(), reranker=ImagesFirstReranker(top_k=12))
    with running_server(create_app(retriever, encoder_spec="toy")) as url:
        yield url


@pytest.fixture
def page(service_url: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.problems = []  # type: ignore[attr-defined]
            page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
            page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
            page.goto(service_url)
            yield page
        finally:
            browser.close()


def focus_order(page, steps: int) -> list[str]:
    page.locator("h1").click()  # start from the top of the page
    order = []
    for _ in range(steps):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    return order


def test_search_page_in_chromium(page, tmp_path, artifacts):
    from playwright.sync_api import expect

    expect(page.locator("#index-info")).to_contain_text("12 candidates")
    expect(page.locator("#task option")).to_have_count(4)
    expect(page.get_by_label("Rerank the top results")).to_be_enabled()
    assert focus_order(page, 6) == ["query-text", "query-image", "task", "instruction", "k", "rerank"]

    # Type a query, add an image, press Enter: results with loaded thumbnails and badges.
    Image.new("RGB", (48, 48), COLOURS["red"]).save(tmp_path / "red.png")
    page.get_by_label("Query text").press_sequentially("a red square")
    page.get_by_label("Query image").set_input_files(tmp_path / "red.png")
    expect(page.locator("#image-preview")).to_be_visible()
    page.get_by_label("Number of results").fill("12")
    page.get_by_label("Query text").press("Enter")
    expect(page.locator("#status")).to_contain_text("results 1–12 in")
    expect(page.locator("#status")).to_contain_text("encode")
    expect(page.locator("#results .card")).to_have_count(12)
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    assert page.locator("#results .card").first.locator(".badge").inner_text() == "image"
    assert page.locator("#results .badge-text").count() == 6
    page.screenshot(path=artifacts / "search.png", full_page=True)

    # Rerank with the keyboard (Space toggles, Enter in the query field submits).
    page.get_by_label("Rerank the top results").focus()
    page.keyboard.press("Space")
    page.get_by_label("Query text").press("Enter")
    expect(page.locator("#status")).to_contain_text("reranked")
    expect(page.locator("#results .card").first.locator(".scores")).to_contain_text("rerank 1.000")
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    page.screenshot(path=artifacts / "search-reranked.png", full_page=True)
    assert page.problems == []  # type: ignore[attr-defined]


def test_search_page_on_a_narrow_screen(page, artifacts):
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 360, "height": 740})
    expect(page.locator("#index-info")).to_contain_text("12 candidates")
    page.get_by_label("Task").select_option("toy:text->image")
    expect(page.locator("#task-help")).to_contain_text("Find the image of this colour.")
    page.get_by_label("Query text").fill("blue")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#results .card")).to_have_count(12)
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    form_width = page.locator("#search-form").bounding_box()["width"]
    assert page.get_by_label("Query text").bounding_box()["width"] > 0.8 * form_width - 40  # one column
    page.screenshot(path=artifacts / "narrow.png", full_page=True)
    assert page.problems == []  # type: ignore[attr-defined]


def test_search_page_reports_errors(page, tmp_path):
    from playwright.sync_api import expect

    expect(page.locator("#index-info")).to_contain_text("12 candidates")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#status")).to_contain_text("Type a query, choose an image, or both.")
    page.get_by_label("Query text").fill("red")
    page.get_by_label("Number of results").fill("4")
    page.get_by_label("Query text").press("Enter")
    expect(page.locator("#status")).to_contain_text("Query: text; no instruction")
    expect(page.locator("#results .card")).to_have_count(4)
    page.get_by_role("button", name="More results").click()  # the next page is appended
    expect(page.locator("#results .card")).to_have_count(8)
    expect(page.locator("#status")).to_contain_text("results 5–8")
    page.get_by_label("Query text").fill("x" * 2001)
    page.get_by_label("Query text").press("Enter")
    expect(page.locator("#status")).to_contain_text("Search failed: text is 2001 characters long")
    expect(page.locator("#results .card")).to_have_count(0)  # no stale results under an error
    (tmp_path / "notes.txt").write_text("not an image")
    page.get_by_label("Query image").set_input_files(tmp_path / "notes.txt")
    expect(page.locator("#status")).to_contain_text("“notes.txt” is a text/plain file")
    expect(page.locator("#image-preview")).to_be_hidden()


def test_a_refused_file_clears_the_results_it_would_seem_to_describe(page, tmp_path):
    from playwright.sync_api import expect

    page.get_by_label("Query text").fill("red")
    page.get_by_label("Number of results").fill("4")
    page.get_by_label("Query text").press("Enter")
    expect(page.locator("#results .card")).to_have_count(4)
    (tmp_path / "notes.txt").write_text("not an image")
    page.get_by_label("Query image").set_input_files(tmp_path / "notes.txt")
    expect(page.locator("#status")).to_contain_text("“notes.txt” is a text/plain file")
    expect(page.locator("#results .card")).to_have_count(0)  # was left on screen by refuseNonImage
    expect(page.locator("#more-results")).to_be_hidden()
    assert page.problems == []


def test_the_page_of_a_service_without_an_index_says_search_needs_one(toy_dir):
    from playwright.sync_api import expect, sync_playwright

    from mmembed.serve.backend import EmbeddingModel

    with running_server(create_app(EmbeddingModel(ToyEncoder()), encoder_spec="toy")) as url, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            expect(page.locator("#index-info")).to_contain_text("without an index: search needs one")
            expect(page.get_by_role("button", name="Search")).to_be_disabled()
            page.goto(f"{url}/docs")
            expect(page.locator("body")).to_contain_text("OpenAIEmbeddingRequest")
            expect(page.locator("body")).to_contain_text("input_type")
        finally:
            browser.close()
