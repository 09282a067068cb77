"""The common way to serve a Keras model from FastAPI, for comparison in bench/serve.py.

What it does, deliberately, the way most tutorials do it:
- loads the SavedModel the Keras 3 way: ``keras.layers.TFSMLayer(path, call_endpoint="serving_default")``
  inside a one-layer functional ``keras.Model`` (Keras 3's ``load_model`` cannot read a SavedModel);
- per request, in an ``async def`` endpoint: reads the upload, decodes it with Pillow
  (``convert("RGB").resize((32, 32))``), and calls ``model.predict(x, verbose=0)`` on that one image;
- no batching, no thread pool: ``model.predict`` runs on the event loop, so requests are served
  one after another, and every call pays Keras' per-call set-up (data adapter, step function);
- answers ``{"label", "confidence", "probabilities"}`` built from a plain dict.

Run: ``NAIVE_MODEL_DIR=models/cifar10/3 uvicorn --app-dir bench naive_app:app``. Only the benchmark uses it.
"""

import io
import os
from pathlib import Path

import keras
import numpy as np
from fastapi import FastAPI, File, UploadFile
from PIL import Image

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _version_dir(model_dir: Path) -> Path:
    if (model_dir / "saved_model.pb").is_file():
        return model_dir
    return max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


model_path = _version_dir(Path(os.environ.get("NAIVE_MODEL_DIR", "models/cifar10")))
inputs = keras.Input(shape=(32, 32, 3), dtype="uint8", name="images")
outputs = keras.layers.TFSMLayer(str(model_path), call_endpoint="serving_default")(inputs)
model = keras.Model(inputs, outputs["probabilities"] if isinstance(outputs, dict) else outputs)

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@app.post("/predict")
async def predict(file: UploadFile = File(...)) -> dict:  # noqa: B008 - FastAPI's documented idiom
    contents = await file.read()
    image = Image.open(io.BytesIO(contents)).convert("RGB").resize((32, 32))
    x = np.expand_dims(np.array(image), axis=0)
    probabilities = model.predict(x, verbose=0)[0]
    best = int(np.argmax(probabilities))
    return {
        "label": CLASS_NAMES[best],
        "confidence": float(probabilities[best]),
        "probabilities": {name: float(p) for name, p in zip(CLASS_NAMES, probabilities, strict=True)},
    }
