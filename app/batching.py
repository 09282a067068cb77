"""Dynamic micro-batching: concurrent requests share one model call.

One worker task owns the model. It takes every image already queued (up to
``max_batch_size``) and runs them as one batch in a dedicated inference thread, so the
event loop never blocks. While that call runs, new requests queue up and form the next
batch: under load batches grow by themselves, and an idle server answers a lone request
at once, with no delay (TensorFlow Serving's and Triton's greedy batching). A positive
``max_delay_s`` additionally waits that long for stragglers when a batch is not full.
The queue is bounded in images; past the bound :class:`QueueFullError` is raised at once.
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFullError(RuntimeError):
    """More images are waiting for the model than the configured bound."""


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        max_delay_s: float,
        max_queue_images: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._predict = predict
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

    async def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for ``images`` (uint8 ``(k, 32, 32, 3)``), computed in some shared batch."""
        count = len(images)
        if self._queued_images + count > self.max_queue_images:
            raise QueueFullError(f"{self._queued_images} images are waiting for the model (limit "
                                 f"{self.max_queue_images})")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(images, future))
        self._queued_images += count
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_delay_s > 0 and self._queued_images < self.max_batch_size:
                await self._wait_for_more(self.max_delay_s)
            batch = self._take_batch()
            images = np.concatenate([p.images for p in batch]) if len(batch) > 1 else batch[0].images
            try:
                probabilities = await loop.run_in_executor(self._executor, self._predict, images)
            except Exception as error:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            if self._on_batch is not None:
                self._on_batch(len(images))
            start = 0
            for pending in batch:
                stop = start + len(pending.images)
                if not pending.future.done():  # the client may have gone away
                    pending.future.set_result(probabilities[start:stop])
                start = stop

    def _take_batch(self) -> list[_Pending]:
        batch = [self._queue.popleft()]
        size = len(batch[0].images)
        while self._queue and size + len(self._queue[0].images) <= self.max_batch_size:
            pending = self._queue.popleft()
            batch.append(pending)
            size += len(pending.images)
        self._queued_images -= size
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
