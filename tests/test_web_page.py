"""End-to-end tests of the page at GET / in a real headless Chromium, against a real uvicorn server.

The browser is Debian's Chromium (``apt-get install chromium chromium-driver``; .ci/run installs it),
driven by Playwright's Python package through its executable path: no browser is downloaded. Without
it these tests fail, never skip: a page nobody tested in a browser is not done.

Screenshots land in ``test-artifacts/`` (gitignored) for a person to look at.
"""

import base64
import io
import re
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from core.contract import CLASS_NAMES
from tests.browser import ARTIFACTS, OffHostRequests
from tests.servers import running_server
from tests.synthetic import shape_image

# Small, so a test can send a file over it without making a huge one; the page reads it from /metadata.
MAX_UPLOAD_BYTES = 1024 * 1024
BLUE = "rgb(29, 78, 216)"
RED = "rgb(185, 28, 28)"
TRUTH_LABEL = "True class (optional)"
CHOOSER_ATTEMPTS = 3


# ---- Fixtures: a server, a browser, and files to send ---------------------------------------------

@pytest.fixture(scope="module")
def server(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real uvicorn server (``python -m app``) serving the test model, ready (model warm) before yielding."""
    log_path = tmp_path_factory.mktemp("server") / "uvicorn.log"
    with running_server(trained_model_dir, log_path, MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
                        INFERENCE_THREADS="1", DECODE_THREADS="1") as running:
        yield running.url


class OpenPage:
    """A fresh browser context on the page, recording script errors, console errors (CSP violations
    among them) and every response of 400 or more, but those of a status in ``allow_statuses``."""

    def __init__(self, browser, base: str, allow_statuses: frozenset[int] = frozenset(), **context_options) -> None:
        self.context = browser.new_context(**context_options)
        self.off_host = OffHostRequests(self.context, base)
        self.page = self.context.new_page()
        self.problems: list[str] = []

        def on_console(message) -> None:
            # A failed load is logged without its address; on_response below names it.
            if message.type == "error" and not message.text.startswith("Failed to load resource"):
                self.problems.append(message.text)

        def on_response(response) -> None:
            if response.status >= 400 and response.status not in allow_statuses:
                self.problems.append(f"{response.status} from {response.url}")

        self.page.on("console", on_console)
        self.page.on("response", on_response)
        self.page.on("pageerror", lambda error: self.problems.append(str(error)))
        self.page.set_default_timeout(30_000)
        self.page.goto(f"{base}/")
        # The page is ready once /metadata has answered and the model line is filled in.
        self.page.locator("#model-info").filter(has_text="validation accuracy").wait_for()

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser, server) -> Iterator:
    opened: list[OpenPage] = []

    def _open(**context_options) -> OpenPage:
        page = OpenPage(browser, server, **context_options)
        opened.append(page)
        return page

    yield _open
    problems = [problem for page in opened for problem in page.problems]
    problems += [f"request off the host: {url}" for page in opened for url in page.off_host]
    for page in opened:
        page.close()
    assert problems == [], f"the page logged errors: {problems}"


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def shape_file(label: int, seed: int, fmt: str = "PNG") -> bytes:
    """A generated picture of class ``label``, wider than tall so the centre crop matters."""
    square = shape_image(label, np.random.default_rng(seed), size=96)
    canvas = Image.new("RGB", (144, 96), square.getpixel((0, 0)))
    canvas.paste(square, (24, 0))
    return png_bytes(canvas, fmt)


def noise_png(side: int) -> bytes:
    """Random pixels barely compress: a valid PNG over MAX_UPLOAD_BYTES."""
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels))


def size_in_words(size: int) -> str:
    """As the page writes sizes: KB under one MB, else MB to one decimal (a no-break space before the unit)."""
    if size < 2**20:
        return f"{round(size / 1024)}\u00a0KB"
    return f"{size / 2**20:.1f}".removesuffix(".0") + "\u00a0MB"


def api_predict(base: str, name: str, data: bytes, media_type: str) -> httpx.Response:
    return httpx.post(f"{base}/predict?preview=true", files={"file": (name, data, media_type)}, timeout=60)


def card(page, name: str):
    return page.locator("#results > li.card").filter(has=page.locator(".card-title", has_text=name))


def percent_value(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d)?)%", text.strip())
    assert match, f"not a percentage: {text!r}"
    return float(match.group(1))


def assert_card_matches_api(page, name: str, expected: dict) -> None:
    """Label, confidence, the ten bars (values and drawn widths) and the 32x32 preview match /predict."""
    found = card(page, name)
    found.locator(".chart").wait_for()
    assert found.locator(".verdict .label").inner_text() == expected["label"]
    shown_confidence = percent_value(found.locator(".verdict .confidence").inner_text())
    assert abs(shown_confidence - expected["confidence"] * 100) <= 0.05 + 1e-6

    rows = found.locator(".chart .bar-row")
    assert rows.count() == 10
    assert [rows.nth(i).get_attribute("data-label") for i in range(10)] == list(CLASS_NAMES)
    for i, name_ in enumerate(CLASS_NAMES):
        row = rows.nth(i)
        probability = expected["probabilities"][name_]
        assert row.locator(".bar-label").inner_text() == name_
        assert float(row.get_attribute("data-probability")) == pytest.approx(probability, abs=1e-5)
        assert abs(percent_value(row.locator(".bar-value").inner_text()) - probability * 100) <= 0.05 + 1e-6
        fill = row.locator(".bar-fill").bounding_box()
        track = row.locator(".bar-track").bounding_box()
        assert fill["width"] / track["width"] == pytest.approx(probability, abs=0.01)
    top = found.locator(".chart .bar-row.top")
    assert top.count() == 1 and top.get_attribute("data-label") == expected["label"]

    preview = found.locator("img.preview")
    assert preview.get_attribute("src") == expected["preview"]
    assert preview.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [32, 32]
    assert preview.evaluate("img => getComputedStyle(img).imageRendering") == "pixelated"


def bar_colour(page, name: str, label: str) -> str:
    fill = card(page, name).locator(f'.bar-row[data-label="{label}"] .bar-fill')
    return fill.evaluate("element => getComputedStyle(element).backgroundColor")


# ---- The page as served --------------------------------------------------------------------------

def test_page_and_assets_are_served_under_the_strict_policy(server: str) -> None:
    page = httpx.get(f"{server}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/page.js"' in page.text and "<script>" not in page.text
    script = httpx.get(f"{server}/static/page.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    style = httpx.get(f"{server}/static/page.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    icon = httpx.get(f"{server}/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    missing = httpx.get(f"{server}/static/index.html.bak")
    assert missing.status_code == 404 and "detail" in missing.json()
    # The page is for people; the API's schema stays about the API.
    assert "/" not in httpx.get(f"{server}/openapi.json").json()["paths"]


# ---- In the browser ------------------------------------------------------------------------------

def test_picked_images_show_label_bars_and_preview_matching_predict(open_page, server: str) -> None:
    opened = open_page(viewport={"width": 1280, "height": 900})
    page = opened.page
    metadata = httpx.get(f"{server}/metadata").json()
    info = page.locator("#model-info").inner_text()
    assert f"validation accuracy {metadata['model']['val_accuracy'] * 100:.1f}%" in info
    assert page.get_by_role("link", name="API documentation").get_attribute("href") == "/docs"
    assert page.get_by_role("link", name="Model metadata (JSON)").get_attribute("href") == "/metadata"

    plane, cat = shape_file(0, seed=1), shape_file(3, seed=2, fmt="JPEG")
    page.locator("#file-input").set_input_files([
        {"name": "plane.png", "mimeType": "image/png", "buffer": plane},
        {"name": "cat.jpg", "mimeType": "image/jpeg", "buffer": cat},
    ])
    page.locator("#status").filter(has_text="Done: 2 classified.").wait_for()
    expected_plane = api_predict(server, "plane.png", plane, "image/png").json()
    expected_cat = api_predict(server, "cat.jpg", cat, "image/jpeg").json()
    assert_card_matches_api(page, "plane.png", expected_plane)
    assert_card_matches_api(page, "cat.jpg", expected_cat)
    # The served version comes with each prediction and joins the model line.
    assert f"version {expected_plane['model']['version']}" in page.locator("#model-info").inner_text()
    # The newest drop sits at the top, in the order given.
    assert page.locator("#results .card-title").all_inner_texts() == ["plane.png", "cat.jpg"]
    assert card(page, "plane.png").locator("img.original").evaluate("img => img.naturalWidth") == 144

    # The true class: the top bar turns blue when right; red when wrong, with the true class's bar blue.
    predicted = expected_plane["label"]
    other = next(name for name in CLASS_NAMES if name != predicted)
    truth = card(page, "plane.png").get_by_label(TRUTH_LABEL)
    # The control says what it does before it is used, and a screen reader hears it with the control.
    help_text = page.locator(f"#{truth.get_attribute('aria-describedby')}")
    assert help_text.is_visible() and card(page, "plane.png").locator(".truth-help").count() == 1
    assert "blue when it is right and red when it is wrong" in " ".join(help_text.inner_text().split())
    truth.select_option(predicted)
    assert bar_colour(page, "plane.png", predicted) == BLUE
    assert card(page, "plane.png").locator(".truth-note").inner_text() == f"Right: the model said {predicted}."
    truth.select_option(other)
    assert bar_colour(page, "plane.png", predicted) == RED
    assert bar_colour(page, "plane.png", other) == BLUE
    assert "Wrong" in card(page, "plane.png").locator(".truth-note").inner_text()
    # Colouring must not move anything: the ten rows stay evenly spaced.
    tops = [row.bounding_box()["y"] for row in card(page, "plane.png").locator(".bar-row").all()]
    steps = [b - a for a, b in pairwise(tops)]
    assert max(steps) - min(steps) < 1, f"uneven rows: {steps}"
    # Leave the cat card marked right, for the screenshot: one of each.
    card(page, "cat.jpg").get_by_label(TRUTH_LABEL).select_option(expected_cat["label"])

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "web-page-desktop.png", full_page=True)


def test_files_the_server_would_refuse_are_refused_before_sending_in_words(open_page, server: str) -> None:
    opened = open_page(viewport={"width": 1280, "height": 900})
    page = opened.page
    sent: list[bytes] = []
    page.on("request", lambda request: sent.append(request.post_data_buffer or b"")
            if "/predict" in request.url else None)
    text, big, good = b"just some notes, not a picture\n", noise_png(700), shape_file(1, seed=3)
    assert len(big) > MAX_UPLOAD_BYTES
    page.locator("#file-input").set_input_files([
        {"name": "good.png", "mimeType": "image/png", "buffer": good},
        {"name": "huge.png", "mimeType": "image/png", "buffer": big},
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": text},
        {"name": "empty.png", "mimeType": "image/png", "buffer": b""},
    ])
    done = "Done: 1 classified, 3 rejected (huge.png, notes.txt, empty.png)."
    page.locator("#status").filter(has_text=done).wait_for()
    # Only the good image went to the server: one request, without the others' bytes.
    assert len(sent) == 1 and good in sent[0] and big[:4096] not in sent[0] and text not in sent[0]

    largest = MAX_UPLOAD_BYTES - 1024  # the page leaves room for the part's multipart headers
    expected = {
        "huge.png": ("Too large, not sent",
                     f"The file is {size_in_words(len(big))} ({len(big):,} bytes); the server takes at most "
                     f"{size_in_words(largest)} ({largest:,} bytes) per image. Scale the image down or save it "
                     "as JPEG, then try again."),
        "notes.txt": ("Not an image the model takes, not sent",
                      "This file (the browser calls it text/plain) is not BMP, GIF, JPEG, PNG, TIFF or WEBP: its "
                      "first bytes say so, whatever its name. Convert it to one of these formats, or pick another "
                      "file."),
        "empty.png": ("Empty file, not sent",
                      "The file has no bytes. Pick the image file itself, or save the image again."),
    }
    for name, (title, detail) in expected.items():
        shown = card(page, name)
        assert shown.locator(".error-title").inner_text() == title
        assert shown.locator(".error-detail").inner_text() == detail
        assert shown.locator(".chart").is_hidden() and shown.locator("img.preview").is_hidden()
        assert shown.locator(".error-title").evaluate("element => getComputedStyle(element).color") == RED
    assert_card_matches_api(page, "good.png", api_predict(server, "good.png", good, "image/png").json())
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "web-page-refused.png", full_page=True)


def test_a_file_the_server_rejects_says_so_in_words_with_its_message(open_page, server: str) -> None:
    # A PNG's signature and nothing after it: the page cannot tell, the server can (400).
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    page = open_page(viewport={"width": 1280, "height": 900}).page
    page.locator("#file-input").set_input_files([{"name": "broken.png", "mimeType": "image/png", "buffer": broken}])
    answer = api_predict(server, "broken.png", broken, "image/png")
    assert answer.status_code == 400
    page.locator("#status").filter(has_text="broken.png: Could not be read as an image.").wait_for()
    shown = card(page, "broken.png")
    assert shown.locator(".error-title").inner_text() == "Could not be read as an image"
    assert shown.locator(".error-detail").inner_text() == answer.json()["detail"]
    assert "Rejected (" not in shown.inner_text()  # words, not a status code
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "web-page-errors.png", full_page=True)


def test_pasted_and_dropped_images_are_classified(open_page, server: str) -> None:
    page = open_page(viewport={"width": 1280, "height": 900}).page
    pasted, dropped = shape_file(2, seed=4), shape_file(8, seed=5)
    make_transfer = """([data, name]) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/png"}));
        return transfer;
    }"""
    paste = page.evaluate_handle(make_transfer, [base64.b64encode(pasted).decode(), "image.png"])
    page.evaluate("transfer => document.dispatchEvent(new ClipboardEvent('paste', "
                  "{clipboardData: transfer, bubbles: true, cancelable: true}))", paste)
    card(page, "Pasted image 1").locator(".chart").wait_for()
    assert_card_matches_api(page, "Pasted image 1", api_predict(server, "image.png", pasted, "image/png").json())

    drop = page.evaluate_handle(make_transfer, [base64.b64encode(dropped).decode(), "ship.png"])
    page.locator("#drop-zone").dispatch_event("dragenter", {"dataTransfer": drop})
    assert "dragging" in page.locator("#drop-zone").get_attribute("class")
    page.locator("#drop-zone").dispatch_event("drop", {"dataTransfer": drop})
    assert_card_matches_api(page, "ship.png", api_predict(server, "ship.png", dropped, "image/png").json())
    assert "dragging" not in page.locator("#drop-zone").get_attribute("class")
    assert page.locator("#results .card-title").all_inner_texts() == ["ship.png", "Pasted image 1"]


def test_a_file_that_cannot_be_read_is_its_own_refusal_and_the_rest_are_sent(open_page, server: str) -> None:
    page = open_page(viewport={"width": 1280, "height": 900}).page
    # As the browser fails a file moved or deleted since it was picked: reading it rejects (NotReadableError).
    page.evaluate("""() => {
        const slice = Blob.prototype.slice;
        Blob.prototype.slice = function (...args) {
            const part = slice.apply(this, args);
            if (this.name === "gone.png") {
                part.arrayBuffer = () => Promise.reject(new DOMException("It is gone", "NotReadableError"));
            }
            return part;
        };
    }""")
    good = shape_file(3, seed=6)
    page.locator("#file-input").set_input_files([
        {"name": "gone.png", "mimeType": "image/png", "buffer": shape_file(1, seed=7)},
        {"name": "cat.png", "mimeType": "image/png", "buffer": good}])
    assert_card_matches_api(page, "cat.png", api_predict(server, "cat.png", good, "image/png").json())
    gone = card(page, "gone.png")
    assert gone.locator(".error-title").inner_text() == "Could not be read, not sent"
    assert "moved or deleted since it was picked" in gone.locator(".error-detail").inner_text()


def test_text_pasted_into_the_key_field_is_not_taken_for_a_missing_image(open_page) -> None:
    page = open_page(viewport={"width": 1280, "height": 900}).page
    page.locator("#key-box summary").click()
    before = page.locator("#status").inner_text()
    page.evaluate("""() => {
        const transfer = new DataTransfer();
        transfer.setData("text/plain", "a-key");
        document.querySelector("#api-key").dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true}));
    }""")
    assert page.locator("#status").inner_text() == before
    # Pasted anywhere else, text is still told apart from an image.
    page.evaluate("""() => {
        const transfer = new DataTransfer();
        transfer.setData("text/plain", "https://example.com/cat.jpg");
        document.body.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true}));
    }""")
    page.locator("#status").filter(has_text="The clipboard holds no image to classify").wait_for()


def test_a_hidden_overlay_takes_no_room(open_page) -> None:
    # The overlay of a failed explanation is hidden; the figure rule's display: block must not undo that.
    page = open_page(viewport={"width": 1280, "height": 900}).page
    assert page.evaluate("""() => {
        const overlay = document.createElement("img");
        overlay.className = "overlay";
        overlay.hidden = true;
        document.body.appendChild(overlay);
        return getComputedStyle(overlay).display;
    }""") == "none"


def test_keyboard_alone_picks_a_file_and_sets_the_true_class(open_page, server: str) -> None:
    page = open_page(viewport={"width": 1280, "height": 900}).page
    assert page.locator("#status").get_attribute("aria-live") == "polite"
    # Tab order: the two links, the folded API key field's summary, then the picker button.
    for _ in range(3):
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "API key"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "pick-button"
    image = shape_file(5, seed=6)
    # Space activates a focused button as Enter does. Headless Chromium 156 now and then swallows the
    # first activation on a page that has been idle (Enter more often than Space; under CPU load either),
    # so the key is pressed again, from the keyboard still, when no chooser has opened within 5 s.
    file_chooser = None
    for _ in range(CHOOSER_ATTEMPTS):
        try:
            with page.expect_file_chooser(timeout=5_000) as chooser:
                page.keyboard.press("Space")
            file_chooser = chooser.value
            break
        except PlaywrightTimeoutError:
            assert page.evaluate("document.activeElement.id") == "pick-button"
    assert file_chooser is not None, f"Space on the picker opened no file chooser in {CHOOSER_ATTEMPTS} tries"
    file_chooser.set_files([{"name": "dog.png", "mimeType": "image/png", "buffer": image}])
    expected = api_predict(server, "dog.png", image, "image/png").json()
    page.locator("#status").filter(has_text=f"dog.png: {expected['label']}").wait_for()
    assert_card_matches_api(page, "dog.png", expected)

    page.keyboard.press("Tab")  # the "Clear results" button, then the true-class picker
    assert page.evaluate("document.activeElement.textContent") == "Clear results"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "truth-select"
    page.keyboard.press("ArrowDown")  # the first class after "not set"
    note = card(page, "dog.png").locator(".truth-note")
    assert note.inner_text() in (f"Right: the model said {expected['label']}.",
                                 f"Wrong: the model said {expected['label']}, the true class is airplane.")

    page.get_by_role("button", name="Clear results").click()
    assert page.locator("#results > li").count() == 0
    assert page.locator("#empty-note").is_visible()


def assert_explained_beside_preview(page, name: str, server: str, data: bytes) -> None:
    """The overlay of /explain's answer, beside the 32x32 preview, with its one-line legend."""
    found = card(page, name)
    overlay = found.locator("img.overlay")
    overlay.wait_for()
    expected = httpx.post(f"{server}/explain", files={"file": (name, data, "image/png")}, timeout=60).json()
    assert overlay.get_attribute("src") == expected["explanation"]["overlay"]
    assert overlay.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [128, 128]
    assert found.locator(".explain-caption").inner_text() == f"Where the model looked ({expected['label']})"
    legend = found.locator(".legend")
    assert legend.is_visible() and legend.inner_text() == expected["explanation"]["legend"]
    assert "\n" not in legend.inner_text()


def test_the_overlay_shows_beside_the_preview_and_none_of_these_only_when_out(open_page, server: str) -> None:
    page = open_page(viewport={"width": 1280, "height": 900}).page
    image = shape_file(4, seed=11)
    page.locator("#file-input").set_input_files([{"name": "deer.png", "mimeType": "image/png", "buffer": image}])
    assert_explained_beside_preview(page, "deer.png", server, image)
    preview = card(page, "deer.png").locator("img.preview").bounding_box()
    overlay = card(page, "deer.png").locator("img.overlay").bounding_box()
    assert overlay["x"] >= preview["x"] + preview["width"] and abs(overlay["y"] - preview["y"]) < 2  # beside it
    expected = api_predict(server, "deer.png", image, "image/png").json()
    assert card(page, "deer.png").locator(".ood-note").is_visible() == (expected["in_distribution"] is False)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "web-page-explain.png", full_page=True)


def test_an_image_out_of_distribution_says_none_of_these(browser, trained_model_dir: Path,
                                                         tmp_path: Path) -> None:
    """OOD_THRESHOLD=0 puts every image out (every score is above 0): the page says so in words."""
    with running_server(trained_model_dir, tmp_path / "uvicorn.log", OOD_THRESHOLD="0",
                        INFERENCE_THREADS="1", DECODE_THREADS="1") as running:
        opened = OpenPage(browser, running.url)
        try:
            page = opened.page
            image = shape_file(2, seed=12)
            page.locator("#file-input").set_input_files([{"name": "odd.png", "mimeType": "image/png",
                                                          "buffer": image}])
            note = card(page, "odd.png").locator(".ood-note")
            note.wait_for()
            assert "this does not look like any of the ten classes" in note.inner_text().lower()
            page.locator("#status").filter(has_text="does not look like any of the ten classes").wait_for()
            assert_explained_beside_preview(page, "odd.png", running.url, image)
            assert opened.problems == [] and list(opened.off_host) == []
        finally:
            opened.close()


def test_phone_viewport_fits_without_sideways_scrolling(open_page, server: str) -> None:
    width = 390
    page = open_page(viewport={"width": width, "height": 844}, is_mobile=True, has_touch=True,
                     device_scale_factor=2).page
    image = shape_file(7, seed=7)
    page.locator("#file-input").set_input_files([{"name": "horse.png", "mimeType": "image/png", "buffer": image}])
    expected = api_predict(server, "horse.png", image, "image/png").json()
    assert_card_matches_api(page, "horse.png", expected)
    card(page, "horse.png").get_by_label(TRUTH_LABEL).select_option("horse")

    assert page.evaluate("document.documentElement.scrollWidth") <= width
    card(page, "horse.png").locator("img.overlay").wait_for()
    for selector in (".bar-row", "img.preview", "img.original", "img.overlay", ".truth-select"):
        for box in (element.bounding_box() for element in card(page, "horse.png").locator(selector).all()):
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, f"{selector} sticks out: {box}"
    # The pictures sit side by side above the chart.
    original = card(page, "horse.png").locator("img.original").bounding_box()
    preview = card(page, "horse.png").locator("img.preview").bounding_box()
    chart = card(page, "horse.png").locator(".chart").bounding_box()
    assert preview["x"] > original["x"] + original["width"] - 1
    assert chart["y"] >= original["y"] + original["height"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "web-page-phone.png", full_page=True)
