"""POST /explain: the occlusion map, its overlay, the class asked for, bad input, and the cap on
explanations running at once (a real uvicorn server)."""

import asyncio
import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.overlay import normalised
from app.saliency import Occlusion
from app.settings import Settings
from core.contract import CLASS_NAMES
from tests.servers import ready_test_client, running_server
from tests.synthetic import PALETTE


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def off_centre_shape(label: int) -> tuple[bytes, tuple[int, int, int, int]]:
    """A class's shape, small, in the top-left quarter of a dark image; and its box (x0, y0, x1, y1)."""
    image = Image.new("RGB", (32, 32), (20, 20, 30))
    box = (2, 2, 17, 17)
    ImageDraw.Draw(image).rectangle(box, fill=PALETTE[label])
    return png(image), box


@pytest.fixture(scope="module")
def client(trained_model_dir: Path):
    with ready_test_client(Settings(model_dir=trained_model_dir, inference_threads=2, decode_threads=2)) as test_client:
        yield test_client


def decode_data_url(url: str) -> Image.Image:
    header, _, payload = url.partition(",")
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_the_occlusion_batch_hides_each_patch_once() -> None:
    image = np.full((32, 32, 3), 200, dtype=np.uint8)
    image[:16] = 0
    occlusion = Occlusion()
    batch = occlusion.batch(image)
    assert batch.shape == (26, 32, 32, 3) and occlusion.batch_size == 26
    np.testing.assert_array_equal(batch[0], image)
    changed = (batch[1:] != image).any(axis=-1)  # (25, 32, 32): where each copy differs
    assert changed.sum(axis=(1, 2)).max() <= 64  # at most one 8x8 patch each
    assert changed.any(axis=0).all()  # together they cover every pixel
    # A patch that hides the class (its probability falls from 0.9 to 0.1) makes the map's peak there.
    probabilities = np.full((26, 10), 0.0)
    probabilities[:, 3] = 0.9
    probabilities[1 + occlusion.windows.index((12, 12)), 3] = 0.1
    saliency = occlusion.saliency(probabilities, 3)
    assert saliency.shape == (32, 32)
    assert saliency[12:20, 12:20].min() > 0 and saliency[:8, :8].max() == 0
    assert saliency[13, 13] == pytest.approx(0.8 / 4)  # four patches cover that pixel, one of them mattered
    assert saliency[16, 16] == pytest.approx(0.8)  # only that patch covers this one


def test_explain_answers_the_fast_prediction_a_map_and_an_overlay(client) -> None:
    upload, (x0, y0, x1, y1) = off_centre_shape(2)
    response = client.post("/explain", files={"file": ("shape.png", upload, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    predicted = client.post("/predict", files={"file": ("shape.png", upload, "image/png")},
                            params={"level": "fast"}).json()
    assert body["model"]["level"] == "fast"
    np.testing.assert_allclose(list(body["probabilities"].values()), list(predicted["probabilities"].values()),
                               atol=1e-6)
    assert body["ood_score"] == pytest.approx(predicted["ood_score"], rel=1e-5)
    explanation = body["explanation"]
    assert explanation["label"] == body["label"] and explanation["method"] == "occlusion"
    saliency = np.array(explanation["map"])
    assert saliency.shape == (32, 32) and np.isfinite(saliency).all()
    # Hiding the shape matters more than hiding the empty background.
    inside = np.zeros((32, 32), dtype=bool)
    inside[y0:y1 + 1, x0:x1 + 1] = True
    assert saliency[inside].mean() > saliency[~inside].mean() + 0.01, (saliency[inside].mean(),
                                                                      saliency[~inside].mean())
    overlay = decode_data_url(explanation["overlay"])
    assert overlay.size == (128, 128) and overlay.mode == "RGB"
    # Where the map is highest the overlay is red; where it is lowest, blue (each model pixel a 4x4 block).
    pixels = np.asarray(overlay, dtype=float)
    redness = pixels[..., 0] - pixels[..., 2]
    heat = normalised(saliency)
    hot, cold = np.unravel_index(heat.argmax(), heat.shape), np.unravel_index(heat.argmin(), heat.shape)
    assert redness[hot[0] * 4, hot[1] * 4] > redness[cold[0] * 4, cold[1] * 4] + 100
    assert "Red" in explanation["legend"]


def test_explain_a_class_the_caller_names(client) -> None:
    upload, _ = off_centre_shape(5)
    predicted = client.post("/explain", files={"file": ("s.png", upload, "image/png")}).json()["label"]
    other = next(name for name in CLASS_NAMES if name != predicted)
    body = client.post("/explain", files={"file": ("s.png", upload, "image/png")}, params={"label": other}).json()
    assert body["label"] == predicted and body["explanation"]["label"] == other


def test_bad_input_is_a_clear_4xx(client) -> None:
    text = client.post("/explain", files={"file": ("notes.txt", b"hello, not an image", "text/plain")})
    assert text.status_code == 415 and "detail" in text.json()
    upload, _ = off_centre_shape(1)
    unknown = client.post("/explain", files={"file": ("s.png", upload, "image/png")}, params={"label": "unicorn"})
    assert unknown.status_code == 422 and "label" in unknown.json()["detail"]
    assert client.post("/explain").status_code == 422
    assert client.get("/explain").status_code == 405


def test_openapi_documents_explain_and_the_ood_fields(client) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/explain"]["post"]
    assert {"200", "415", "503"} <= set(operation["responses"])
    label = next(p for p in operation["parameters"] if p["name"] == "label")
    assert all(name in str(label["schema"]) for name in CLASS_NAMES)
    prediction = schema["components"]["schemas"]["Prediction"]["properties"]
    assert {"ood_score", "in_distribution"} <= set(prediction)
    assert {"map", "overlay", "legend"} <= set(schema["components"]["schemas"]["Explanation"]["properties"])


def test_explanations_beyond_the_cap_get_503_with_retry_after(trained_model_dir: Path, tmp_path: Path) -> None:
    """One explanation at a time; the first is held 1 s in the batcher (MAX_BATCH_DELAY_MS waits for a fuller
    batch), so the second arrives while it runs."""
    upload, _ = off_centre_shape(3)

    async def two_at_once(url: str) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            first = asyncio.create_task(http.post("/explain", files={"file": ("a.png", upload, "image/png")}))
            await asyncio.sleep(0.3)
            second = await http.post("/explain", files={"file": ("b.png", upload, "image/png")})
            predicted = await http.post("/predict", files={"file": ("c.png", upload, "image/png")})
            return await first, second, predicted

    with running_server(trained_model_dir, tmp_path / "server.log", MAX_CONCURRENT_EXPLANATIONS="1",
                        MAX_BATCH_DELAY_MS="1000") as server:
        first, second, predicted = asyncio.run(two_at_once(server.url))
        third = httpx.post(f"{server.url}/explain", files={"file": ("d.png", upload, "image/png")}, timeout=30)
    assert first.status_code == 200
    assert second.status_code == 503 and second.headers["Retry-After"] == "1"
    assert "MAX_CONCURRENT_EXPLANATIONS" in second.json()["detail"]
    assert predicted.status_code == 200  # /predict is not held back by the cap
    assert third.status_code == 200  # the slot is free again once the first is answered
