"""What the routes call: decode off the event loop, predict through the batcher, shape the answer."""

import asyncio
import base64
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from app.batching import MicroBatcher
from app.contract import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from app.errors import NotReadyError
from app.metrics import Metrics
from app.model import LoadedModel
from app.preprocessing import image_bytes_to_array
from app.schemas import ClassProbability, ModelInfo, Prediction
from app.settings import Settings


@dataclass
class ClassifierService:
    settings: Settings
    model: LoadedModel
    batcher: MicroBatcher
    metrics: Metrics
    decoder: ThreadPoolExecutor
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def decode(self, data: bytes) -> np.ndarray:
        """Bytes -> uint8 (32, 32, 3) in the decode pool: Pillow releases the GIL while decoding."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.decoder, image_bytes_to_array, data, self.settings.max_image_pixels)

    async def classify(self, images: np.ndarray) -> np.ndarray:
        if not self.ready.is_set():
            raise NotReadyError()
        return await self.batcher.predict(images)

    def warm_up(self) -> None:
        """One batch of the largest size through the signature, so the first client pays nothing."""
        blank = np.zeros((self.settings.max_batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        for size in sorted({1, self.settings.max_batch_size}):
            self.model.predict(blank[:size])

    def to_prediction(self, probabilities: np.ndarray, image: np.ndarray | None = None) -> Prediction:
        values = [float(p) for p in probabilities[:NUM_CLASSES]]
        order = sorted(range(NUM_CLASSES), key=lambda i: values[i], reverse=True)
        best = order[0]
        self.metrics.predicted.labels(CLASS_NAMES[best]).inc()
        return Prediction(
            label=CLASS_NAMES[best],
            confidence=values[best],
            probabilities=dict(zip(CLASS_NAMES, values, strict=True)),
            top=[ClassProbability(label=CLASS_NAMES[i], probability=values[i]) for i in order],
            model=ModelInfo(name=self.model.name, version=self.model.version),
            preview=png_data_url(image) if image is not None else None,
        )


def png_data_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
