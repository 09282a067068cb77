"""The page at GET / against a server that requires API keys (API_KEYS_FILE), in Debian's Chromium.

As tests/test_web_page.py does it: a real uvicorn server, the page driven through Playwright. The page
shows its key field when /metadata says a key is required, says in words when the key is missing or
wrong (the server's own message after it), and once a key is pasted sends it with every image.
"""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.access import hash_line
from tests.browser import ARTIFACTS
from tests.servers import running_server
from tests.test_web_page import OpenPage, card, shape_file

KEY = "page-test-key-" + "k" * 32
KEY_LABEL = "API key (only if this server asks for one)"


@pytest.fixture(scope="module")
def keyed_server(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("keyed")
    (folder / "api-keys").write_text(hash_line("page", KEY) + "\n")
    with running_server(trained_model_dir, folder / "uvicorn.log", API_KEYS_FILE=str(folder / "api-keys"),
                        INFERENCE_THREADS="1", DECODE_THREADS="1") as running:
        yield running.url


def pick(page, name: str, data: bytes) -> None:
    page.locator("#file-input").set_input_files([{"name": name, "mimeType": "image/png", "buffer": data}])


def test_the_page_asks_for_a_key_says_why_in_words_and_sends_a_pasted_one(browser, keyed_server: str) -> None:
    opened = OpenPage(browser, keyed_server, allow_statuses=frozenset({401, 403}),
                      viewport={"width": 1280, "height": 900})
    try:
        page = opened.page
        # /metadata says a key is required: the field is shown before anything is sent.
        assert page.locator("#key-box").evaluate("box => box.open") is True
        key_field = page.get_by_label(KEY_LABEL)
        assert key_field.get_attribute("type") == "password" and key_field.input_value() == ""

        image = shape_file(0, seed=11)
        without = httpx.post(f"{keyed_server}/predict/batch", files={"files": ("x.png", image, "image/png")})
        assert without.status_code == 401
        pick(page, "no-key.png", image)
        page.locator("#status").filter(has_text="no-key.png: API key needed.").wait_for()
        assert card(page, "no-key.png").locator(".error-detail").inner_text() == without.json()["detail"]
        assert page.evaluate("document.activeElement.id") == "api-key"  # where the key goes, focused

        key_field.fill("not-the-key")
        pick(page, "wrong-key.png", image)
        page.locator("#status").filter(has_text="wrong-key.png: API key refused.").wait_for()
        assert "not accepted" in card(page, "wrong-key.png").locator(".error-detail").inner_text()

        key_field.fill(KEY)
        pick(page, "right-key.png", image)
        card(page, "right-key.png").locator(".chart").wait_for()
        expected = httpx.post(f"{keyed_server}/predict", files={"file": ("x.png", image, "image/png")},
                              headers={"X-API-Key": KEY}).json()
        assert card(page, "right-key.png").locator(".verdict .label").inner_text() == expected["label"]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "web-page-api-key.png", full_page=True)

        # The key stays for this tab (a reload keeps it), and is never put in the address or the page.
        page.reload()
        page.locator("#model-info").filter(has_text="validation accuracy").wait_for()
        assert page.get_by_label(KEY_LABEL).input_value() == KEY
        assert KEY not in page.url and KEY not in page.content()
        pick(page, "after-reload.png", image)
        card(page, "after-reload.png").locator(".chart").wait_for()
        assert opened.problems == [] and list(opened.off_host) == []
    finally:
        opened.close()


def test_without_keys_the_field_stays_folded(browser, trained_model_dir: Path, tmp_path: Path) -> None:
    with running_server(trained_model_dir, tmp_path / "uvicorn.log", INFERENCE_THREADS="1",
                        DECODE_THREADS="1") as server:
        opened = OpenPage(browser, server.url)
        try:
            assert opened.page.locator("#key-box").evaluate("box => box.open") is False
            assert opened.page.get_by_label(KEY_LABEL).is_hidden()
        finally:
            opened.close()
