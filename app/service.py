"""What the routes call: decode off the event loop, predict through the batcher, shape the answer."""

import asyncio
import base64
import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from app.batching import Answer, MicroBatcher
from app.errors import ExplainBusyError, ModelNotServedError, NotReadyError, TooManyFilesError, image_error_status
from app.image_inputs import ImageInputs
from app.metrics import Metrics
from app.model_watcher import ServedModel
from app.overlay import LEGEND, overlay
from app.saliency import Occlusion
from app.schemas import (
    BatchPrediction,
    ClassProbability,
    ExplainedPrediction,
    Explanation,
    FileError,
    FilePrediction,
    LevelFigures,
    ModelInfo,
    Prediction,
)
from app.settings import Settings
from app.uploads import UploadedFile
from core import ood
from core.contract import CLASS_NAMES, FLOAT32, NUM_CLASSES
from core.preprocessing import ImageError, image_bytes_to_array, open_image, opened_image_to_array
from core.versions import LoadedModel, check_answers

T = TypeVar("T")


@dataclass
class ClassifierService:
    settings: Settings
    served: ServedModel
    batcher: MicroBatcher
    metrics: Metrics
    decoder: ThreadPoolExecutor
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Set on SIGTERM (app.shutdown): /readyz answers 503 from then on, while requests are still served.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    explaining: int = 0  # explanations being computed now, capped by MAX_CONCURRENT_EXPLANATIONS

    async def predict(self, data: bytes, preview: bool = False, level: str | None = None) -> Prediction:
        """One upload -> its prediction at ``level`` (None: the default). An unusable image raises ImageError,
        an unknown level UnknownLevelError, which app.errors maps."""
        self.check_level(level)  # an unknown level is refused before the upload is decoded
        deadline = self.batcher.deadline()  # INFERENCE_TIMEOUT_S counts from here: decoding waits too
        image = await self.decode(data, deadline)
        answer = await self.infer(image[np.newaxis], level, deadline)
        return self.to_prediction(answer.probabilities[0], answer, image if preview else None)

    async def predict_batch(self, uploads: Sequence[UploadedFile], preview: bool = False,
                            level: str | None = None) -> BatchPrediction:
        """Several uploads -> one entry each, in upload order: a prediction, or that file's own error.

        The files that decode go to the model together, as one request to the batcher, at one level."""
        if len(uploads) > self.settings.max_batch_files:
            raise TooManyFilesError(len(uploads), self.settings.max_batch_files)
        self.check_level(level)
        deadline = self.batcher.deadline()
        decoded = [await self._decode_or_refuse(upload, deadline) for upload in uploads]
        good = [item for item in decoded if isinstance(item, np.ndarray)]
        if not good:
            return BatchPrediction(results=decoded)
        answer = await self.infer(np.stack(good), level, deadline)  # one request to the batcher: one model answers all
        probabilities = iter(answer.probabilities)
        results: list[FilePrediction | FileError] = []
        for upload, item in zip(uploads, decoded, strict=True):
            if isinstance(item, FileError):
                results.append(item)
                continue
            prediction = self.to_prediction(next(probabilities), answer, item if preview else None)
            results.append(FilePrediction(**prediction.model_dump(), filename=upload.filename))
        return BatchPrediction(results=results)

    async def explain(self, data: bytes, label: str | None = None, preview: bool = False) -> ExplainedPrediction:
        """One upload -> its prediction at the cheapest level and an occlusion map of ``label`` (None: the
        predicted class), computed as one batch through the batcher (app.saliency)."""
        if self.explaining >= self.settings.max_concurrent_explanations:  # refused before any decoding
            raise ExplainBusyError(self.settings.max_concurrent_explanations)
        self.explaining += 1
        try:
            deadline = self.batcher.deadline()
            image = await self.decode(data, deadline)
            occlusion = Occlusion()
            levels = self.served.current.level_table
            level = EXPLAIN_LEVEL if EXPLAIN_LEVEL in levels.names else None  # a model without levels: its one
            answer = await self.classify(occlusion.batch(image), level, deadline)
        finally:
            self.explaining -= 1
        prediction = self.to_prediction(answer.probabilities[0], answer, image if preview else None)
        explained = label or prediction.label
        saliency = occlusion.saliency(answer.probabilities[:, :NUM_CLASSES], CLASS_NAMES.index(explained))
        explanation = Explanation(label=explained, method="occlusion", patch=occlusion.patch, stride=occlusion.stride,
                                  map=saliency.round(5).tolist(), overlay=png_data_url(overlay(image, saliency)),
                                  legend=LEGEND)
        return ExplainedPrediction(**prediction.model_dump(), explanation=explanation)

    async def _decode_or_refuse(self, upload: UploadedFile, deadline: float | None) -> np.ndarray | FileError:
        """The decoded image, or the entry that reports why this one file was refused."""
        try:
            return await self.decode(upload.data, deadline)
        except ImageError as error:
            return FileError(filename=upload.filename, status=image_error_status(error), detail=error.message)

    async def decode(self, data: bytes, deadline: float | None) -> np.ndarray:
        """Bytes -> uint8 (32, 32, 3): small images inline, larger ones in the decode pool, by the request's
        ``deadline``.

        A full queue refuses the upload before any decoding is spent on it. Every refused image is
        counted here, whichever route it came through."""
        self.batcher.ensure_room(1)
        max_pixels = self.settings.max_image_pixels
        try:
            if len(data) > INLINE_DECODE_MAX_BYTES:  # even reading its header may take a while: all in the pool
                return await self.in_pool(deadline, image_bytes_to_array, data, max_pixels)
            image = open_image(data, max_pixels)  # opened once: its header decides where it is decoded
            if is_small_image(image):
                return opened_image_to_array(image, max_pixels)
            return await self.in_pool(deadline, opened_image_to_array, image, max_pixels)
        except ImageError as error:
            self.metrics.rejected.labels(error.kind).inc()
            raise

    async def classify_inputs(self, inputs: ImageInputs, level: str | None, deadline: float | None) -> Answer:
        """A protocol request's images (pixels, or encoded files decoded here as /predict's are) -> one answer,
        by the request's ``deadline``.

        The first file that cannot be used refuses the whole request with its ImageError, naming it."""
        self.check_level(level)
        if inputs.pixels is not None:
            return await self.infer(inputs.pixels, level, deadline)
        images = []
        for index, data in enumerate(inputs.files):
            try:
                images.append(await self.decode(data, deadline))
            except ImageError as error:
                if inputs.count == 1:
                    raise
                raise ImageError(error.kind, f"Image {index + 1} of {inputs.count}: {error.message}") from None
        return await self.infer(np.stack(images), level, deadline)

    async def infer(self, images: np.ndarray, level: str | None, deadline: float | None) -> Answer:
        """uint8 ``(n, 32, 32, 3)`` -> the batcher's answer at ``level``; each image's top class is counted."""
        answer = await self.classify(images, level, deadline)
        for best in np.argmax(answer.probabilities[:, :NUM_CLASSES], axis=1):
            self.metrics.predicted.labels(CLASS_NAMES[best]).inc()
        return answer

    async def classify(self, images: np.ndarray, level: str | None, deadline: float | None) -> Answer:
        if not self.ready.is_set():
            raise NotReadyError()
        return await self.batcher.predict(images, level, deadline)

    def check_level(self, level: str | None) -> None:
        """UnknownLevelError now if the served model lacks ``level``, before any work is spent on the request."""
        self.served.current.level_table.resolve(level)

    def model_named(self, name: str, version: str | None = None) -> LoadedModel:
        """The served model when ``name`` (and ``version``, if given) are its own; else ModelNotServedError."""
        model = self.served.current
        if name != model.name or (version is not None and version != str(model.version)):
            asked = f"model '{name}'" + (f" version {version}" if version is not None else "")
            raise ModelNotServedError(f"{asked} is not served here; this server serves model '{model.name}' "
                                      f"version {model.version}.")
        return model

    async def off_loop(self, deadline: float | None, size: int, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the event loop for a small body (``size`` bytes), in the decode pool for a
        large one: parsing megabytes of JSON must not hold up every other request."""
        if size <= INLINE_DECODE_MAX_BYTES:
            return function(*args)
        return await self.in_pool(deadline, function, *args)

    async def in_pool(self, deadline: float | None, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in the decode pool, by ``deadline``: a flood of large uploads queues there, and a
        request must not wait for it longer than for the model. One not yet started is dropped on the deadline."""
        return await self.batcher.by_deadline(
            deadline, asyncio.get_running_loop().run_in_executor(self.decoder, function, *args))

    def warm_up(self) -> None:
        """A batch of each warm-up size through the signature (checked), so the first client pays nothing."""
        check_answers(self.served.current, warm_up_sizes(self.settings))

    def level_figures(self) -> list[LevelFigures]:
        """The levels the served model offers, with the figures its export measured."""
        levels = self.served.current.level_table
        return [LevelFigures(name=name, default=name == levels.default,
                             **{key: figures.get(key) for key in LevelFigures.model_fields
                                if key not in ("name", "default")})
                for name, figures in levels.figures.items()]

    def ood_threshold(self, answer: Answer, score: str) -> float | None:
        """OOD_THRESHOLD if set, else the threshold the answering model's export fitted for this score, level and
        the precision the level runs in here (None without one: the answer then says neither in nor out)."""
        if self.settings.ood_threshold is not None:
            return self.settings.ood_threshold
        levels = getattr(answer.model, "level_table", None)
        precision = levels.precision(answer.level) if levels is not None else FLOAT32
        return ood.model_threshold(getattr(answer.model, "metadata", {}), score, answer.level, precision)

    def to_prediction(self, row: np.ndarray, answer: Answer, image: np.ndarray | None = None) -> Prediction:
        """``row``: one image's ten probabilities, then its OOD score if the model computes one. ``answer`` says
        which model and level computed it: the answer names both."""
        values = [float(p) for p in row[:NUM_CLASSES]]
        score = float(ood.ood_scores(row[np.newaxis])[0])
        order = sorted(range(NUM_CLASSES), key=lambda i: values[i], reverse=True)
        best = order[0]
        return Prediction(
            label=CLASS_NAMES[best],
            confidence=values[best],
            probabilities=dict(zip(CLASS_NAMES, values, strict=True)),
            top=[ClassProbability(label=CLASS_NAMES[i], probability=values[i]) for i in order],
            model=ModelInfo(name=answer.model.name, version=answer.model.version, level=answer.level),
            preview=png_data_url(image) if image is not None else None,
            ood_score=score,
            in_distribution=ood.is_in_distribution(score, self.ood_threshold(answer, ood.served_score(row))),
        )


# Explanations run at the cheapest level: one explanation is a batch of 26 images (app.saliency).
EXPLAIN_LEVEL = "fast"


def warm_up_sizes(settings: Settings) -> list[int]:
    """The batch sizes a model runs once before it serves: the smallest and the largest the batcher forms."""
    return sorted({1, settings.max_batch_size})


# Decoding a CIFAR-sized upload (32x32 JPEG, ~1 KB) takes ~0.07 ms and reading its header ~0.02 ms:
# about what a hop to the decode pool costs the event loop alone (~0.09 ms), and under load each GIL
# hand-over between the loop and a decode thread can wait up to the interpreter's switch interval
# (5 ms). Images up to this many pixels (and bytes) are decoded on the event loop; anything larger,
# where decoding and resizing take milliseconds, goes to the decode pool so it never blocks others.
INLINE_DECODE_MAX_PIXELS = 64 * 64
INLINE_DECODE_MAX_BYTES = 64 * 1024


def is_small_image(image: Image.Image) -> bool:
    """True when the opened ``image`` (its header, read by open_image) has at most INLINE_DECODE_MAX_PIXELS."""
    width, height = image.size
    return width * height <= INLINE_DECODE_MAX_PIXELS


def png_data_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
