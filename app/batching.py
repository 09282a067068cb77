"""Dynamic micro-batching: concurrent requests share one model call.

One worker task owns the model. It takes every image already queued (up to
``max_batch_size``) and runs them as one batch in a dedicated inference thread, so the
event loop never blocks. The model is asked for once per batch (``current_model``), so a
batch runs whole on one model even if a newer one is swapped in meanwhile, and every
answer carries the model that computed it. While that call runs, new requests queue up and form the next
batch: under load batches grow by themselves, and an idle server answers a lone request
at once, with no delay (TensorFlow Serving's and Triton's greedy batching). A positive
``max_delay_s`` additionally waits that long for stragglers when a batch is not full.
The queue is bounded in images; past the bound :class:`QueueFullError` is raised at once.
Requests whose client has gone away (cancelled futures) are dropped from a batch, not computed.
"""

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

logger = logging.getLogger("app.batching")


class QueueFullError(RuntimeError):
    """More images are waiting for the model than the configured bound."""


class BatchModel(Protocol):
    """What the batcher runs: ``predict`` maps uint8 ``(n, 32, 32, 3)`` to float32 ``(n, 10)``."""

    name: str
    version: int

    def predict(self, images: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Answer:
    """One request's rows of a batch, and the model that computed them."""

    probabilities: np.ndarray
    model: BatchModel


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(
        self,
        current_model: Callable[[], BatchModel],
        max_batch_size: int,
        max_delay_s: float,
        max_queue_images: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._current_model = current_model
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_images = max_queue_images
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_images = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task | None = None

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker (called on shutdown, after requests drain)."""
        while self._queue:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)

    def ensure_room(self, count: int) -> None:
        """Raise :class:`QueueFullError` now if ``count`` more images would not fit in the queue.

        The service also calls this before decoding, so an overloaded server refuses an upload
        without spending CPU on it first."""
        if self._queued_images + count > self.max_queue_images:
            raise QueueFullError(f"{self._queued_images} images are waiting for the model (limit "
                                 f"{self.max_queue_images})")

    async def predict(self, images: np.ndarray) -> Answer:
        """Probabilities for ``images`` (uint8 ``(k, 32, 32, 3)``), computed in some shared batch."""
        count = len(images)
        self.ensure_room(count)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(images, future))
        self._queued_images += count
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_delay_s > 0 and self._queued_images < self.max_batch_size:
                await self._wait_for_more(self.max_delay_s)
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        images = np.concatenate([p.images for p in batch]) if len(batch) > 1 else batch[0].images
        model = self._current_model()  # read once: the whole batch runs on, and reports, this model
        try:
            probabilities = await asyncio.get_running_loop().run_in_executor(self._executor, model.predict, images)
        except Exception as error:  # handed to every waiting request
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        start = 0
        for pending in batch:
            stop = start + len(pending.images)
            if not pending.future.done():  # the client may have gone away meanwhile
                pending.future.set_result(Answer(probabilities[start:stop], model))
            start = stop
        if self._on_batch is not None:
            try:
                self._on_batch(len(images))
            except Exception:  # a metrics fault must not stop the worker: every later request would hang
                logger.exception("batch callback failed")

    def _take_batch(self) -> list[_Pending]:
        """Queued requests, oldest first, up to ``max_batch_size`` images (a lone larger request goes alone)."""
        batch: list[_Pending] = []
        size = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # cancelled: its client went away, computing it would only delay others
                self._queue.popleft()
                self._queued_images -= len(head.images)
                continue
            if batch and size + len(head.images) > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_images -= len(head.images)
            batch.append(head)
            size += len(head.images)
        return batch

    async def _wait_for_more(self, delay_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + delay_s
        while self._queued_images < self.max_batch_size:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
