"""Dynamic micro-batching: concurrent requests share one model call.

One worker task owns the model. It takes every image already queued (up to
``max_batch_size``) and runs them as one batch in a dedicated inference thread, so the
event loop never blocks. While that call runs, new requests queue up and form the next
batch: under load batches grow by themselves, and an idle server answers a lone request
at once, with no delay (TensorFlow Serving's and Triton's greedy batching). A positive
``max_delay_s`` additionally waits that long for stragglers when a batch is not full.
With ``concurrency`` above 1, that many batches may be handed to the model at once, each in its own
inference thread (TensorFlow Serving's ``num_batch_threads``): while the event loop answers one batch and
gathers the next, another is already with the model, so its threads are not left idle between batches.
The queue is bounded in images; past the bound :class:`QueueFullError` is raised at once.
Requests whose client has gone away (cancelled futures) are dropped from a batch, not computed.

Accuracy levels: a batch runs at one level. The oldest queued request decides it, and every queued
request at that level joins it (others keep their place for the next batch). A request that named
no level runs at the model's default, except under load: while more than ``adapt_queue_images``
images are waiting or being computed, such requests run at the cheaper ``adapt_level``, which drains the
queue several times faster; once the load is back at or under that many, they get the default again.
Counting the batches in flight keeps the threshold's meaning whatever ``concurrency`` is. A request
that named its level always gets it. The model is asked for once per batch (``current_model``),
and every answer carries the model and the level that computed it. After a swap, the new model's first
batch starts only once the old model's batches are done, so no client gets an answer from the old model
after another got one from the new.

Faults never leave a request waiting. If the worker task itself dies (a bug in this loop, not a model error,
which goes to the requests of its batch), every queued request fails with :class:`BatcherFailedError`, which
names the cause, and the worker is started again: it holds no state but the queue, which the failure has
emptied, and the model stays loaded and warm. With ``answer_timeout_s`` set, a request that has no answer
within it (queue and computation) gets :class:`AnswerTimeoutError` and is dropped from the queue.
"""

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

logger = logging.getLogger("app.batching")
T = TypeVar("T")


class QueueFullError(RuntimeError):
    """More images are waiting for the model than the configured bound."""


class BatcherFailedError(RuntimeError):
    """The batching worker stopped on an unexpected error; the requests that were waiting for it get this."""

    def __init__(self, cause: BaseException) -> None:
        reason = (str(cause).strip().splitlines() or [""])[0][:200]
        super().__init__(f"the batching worker failed ({type(cause).__name__}{': ' + reason if reason else ''}) "
                         "and was restarted")
        self.cause = cause


class AnswerTimeoutError(TimeoutError):
    """A request had no answer within the deadline (waiting to be decoded, decoding, queue and computation)."""

    def __init__(self, timeout_s: float, queued_images: int) -> None:
        super().__init__(f"no answer from the model within {timeout_s:g} s ({queued_images} images were waiting)")
        self.timeout_s = timeout_s


class BatchModel(Protocol):
    """What the batcher runs: ``predict`` maps uint8 ``(n, 32, 32, 3)`` to float32 ``(n, 10)`` at a level."""

    name: str
    version: int

    @property
    def default_level(self) -> str: ...

    @property
    def level_names(self) -> tuple[str, ...]: ...

    def predict(self, images: np.ndarray, level: str | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class Answer:
    """One request's rows of a batch, and the model and level that computed them."""

    probabilities: np.ndarray
    model: BatchModel
    level: str


@dataclass
class _Pending:
    images: np.ndarray
    level: str | None  # None: the request named none, so the default or load adaptation decides
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(
        self,
        current_model: Callable[[], BatchModel],
        max_batch_size: int,
        max_delay_s: float,
        max_queue_images: int,
        on_batch: Callable[[int, str], None] | None = None,
        adapt_queue_images: int = 0,
        adapt_level: str | None = None,
        concurrency: int = 1,
        answer_timeout_s: float | None = None,
        on_restart: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._current_model = current_model
        self.adapt_queue_images = adapt_queue_images
        self.adapt_level = adapt_level
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_images = max_queue_images
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_images = 0
        self._in_flight_images = 0  # in the batches being computed
        self._wakeup = asyncio.Event()
        self.concurrency = concurrency
        # One single-thread executor per inference thread, and a batch goes to the first free one: lone requests
        # always run on the same thread. One shared pool hands work to its idle threads in turn, so once any
        # burst had started the second thread, lone requests alternated between two threads (issue 24).
        self._executors = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"inference-{index}")
                           for index in range(concurrency)]
        self._free_threads = list(range(concurrency))
        self._worker: asyncio.Task | None = None
        self._in_flight: set[asyncio.Task] = set()
        self._in_flight_model: BatchModel | None = None
        self.answer_timeout_s = answer_timeout_s
        self._on_restart = on_restart
        self.restarts = 0

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")
        self._worker.add_done_callback(self._worker_ended)

    def _worker_ended(self, worker: asyncio.Task) -> None:
        """The worker loops until stop() cancels it: any other end is a fault. Fail what waits, start again."""
        if worker.cancelled():
            return
        cause = worker.exception() or RuntimeError("the worker returned")
        failure = BatcherFailedError(cause)
        waiting = [pending for pending in self._queue if not pending.future.done()]
        self._queue.clear()
        self._queued_images = 0
        for pending in waiting:
            pending.future.set_exception(failure)
        self.restarts += 1
        logger.error("batching worker failed; %d waiting requests answered 503, worker restarted (restart %d)",
                     len(waiting), self.restarts, exc_info=cause)
        if self._on_restart is not None:
            with contextlib.suppress(Exception):  # a metrics fault must not stop the restart
                self._on_restart(cause)
        self.start()

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker (called on shutdown, after requests drain)."""
        while self._queue:
            await asyncio.sleep(0.01)
        if self._in_flight:
            await asyncio.wait(self._in_flight)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for executor in self._executors:
            executor.shutdown(wait=True)

    def ensure_room(self, count: int) -> None:
        """Raise :class:`QueueFullError` now if ``count`` more images would not fit in the queue.

        The service also calls this before decoding, so an overloaded server refuses an upload
        without spending CPU on it first."""
        if self._queued_images + count > self.max_queue_images:
            raise QueueFullError(f"{self._queued_images} images are waiting for the model (limit "
                                 f"{self.max_queue_images})")

    def deadline(self) -> float | None:
        """The event loop time by which a request that starts now must have its answer (None: no deadline)."""
        return None if self.answer_timeout_s is None else asyncio.get_running_loop().time() + self.answer_timeout_s

    async def predict(self, images: np.ndarray, level: str | None = None, deadline: float | None = None) -> Answer:
        """Probabilities for ``images`` (uint8 ``(k, 32, 32, 3)``) at ``level`` (None: the default, or the
        adaptation level under load), computed in some shared batch; by ``deadline`` (a request's, which began
        before its images were decoded), else within the answer timeout from now."""
        deadline = self.deadline() if deadline is None else deadline
        count = len(images)
        self.ensure_room(count)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(images, level, future))
        self._queued_images += count
        self._wakeup.set()
        # On the deadline the future is cancelled: a batch not yet formed skips it.
        return await self.by_deadline(deadline, future)

    async def by_deadline(self, deadline: float | None, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, or AnswerTimeoutError at ``deadline`` (None: no deadline), which cancels it."""
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                return await awaitable
        except TimeoutError:
            if not timeout.expired():  # the awaited work's own TimeoutError, not the deadline
                raise
            raise AnswerTimeoutError(self.answer_timeout_s or 0.0, self._queued_images) from None

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            while len(self._in_flight) >= self.concurrency:  # every inference thread is busy
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            if self.max_delay_s > 0 and self._queued_images < self.max_batch_size:
                await self._wait_for_more(self.max_delay_s)
            model = self._current_model()  # read once: the whole batch runs on, and reports, this model
            if self._in_flight and model is not self._in_flight_model:
                await asyncio.wait(self._in_flight)  # swapped: the old model's batches answer first
            batch, level = self._take_batch(self._unnamed_level(model))
            if batch:
                self._in_flight_model = model
                thread = min(self._free_threads)  # one is free: fewer than `concurrency` batches are in flight
                self._free_threads.remove(thread)
                image_count = sum(len(pending.images) for pending in batch)
                self._in_flight_images += image_count  # until _run_batch ends, whatever its outcome
                task = asyncio.get_running_loop().create_task(self._run_batch(batch, image_count, model, level,
                                                                              thread))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    def _unnamed_level(self, model: BatchModel) -> str:
        """The level for requests that named none: the adaptation level while many images wait or compute."""
        load = self._queued_images + self._in_flight_images
        deep = self.adapt_queue_images > 0 and load > self.adapt_queue_images
        if deep and self.adapt_level in model.level_names:
            return self.adapt_level
        return model.default_level

    async def _run_batch(self, batch: list[_Pending], image_count: int, model: BatchModel, level: str,
                         thread: int) -> None:
        try:  # whatever fails here goes to the batch's requests: none may be left waiting
            images = np.concatenate([p.images for p in batch]) if len(batch) > 1 else batch[0].images
            probabilities = await asyncio.get_running_loop().run_in_executor(self._executors[thread], model.predict,
                                                                             images, level)
        except Exception as error:  # handed to every waiting request
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        finally:
            self._free_threads.append(thread)
            self._in_flight_images -= image_count
        start = 0
        for pending in batch:
            stop = start + len(pending.images)
            if not pending.future.done():  # the client may have gone away meanwhile
                pending.future.set_result(Answer(probabilities[start:stop], model, level))
            start = stop
        if self._on_batch is not None:
            try:
                self._on_batch(len(images), level)
            except Exception:  # a metrics fault must not stop the worker: every later request would hang
                logger.exception("batch callback failed")

    def _take_batch(self, unnamed_level: str) -> tuple[list[_Pending], str]:
        """The oldest queued request's level, and the queued requests at that level, oldest first, up to
        ``max_batch_size`` images (a lone larger request goes alone). ``unnamed_level`` is the level of
        requests that named none. Requests at other levels keep their place in the queue."""
        batch: list[_Pending] = []
        kept: deque[_Pending] = deque()
        level = unnamed_level
        size = 0
        while self._queue:
            head = self._queue.popleft()
            if head.future.done():  # cancelled: its client went away, computing it would only delay others
                self._queued_images -= len(head.images)
                continue
            head_level = head.level or unnamed_level
            if not batch:
                level = head_level
            elif head_level != level:
                kept.append(head)
                continue
            elif size + len(head.images) > self.max_batch_size:
                kept.append(head)
                break
            self._queued_images -= len(head.images)
            batch.append(head)
            size += len(head.images)
        kept.extend(self._queue)
        self._queue = kept
        return batch, level

    async def _wait_for_more(self, delay_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + delay_s
        while self._queued_images < self.max_batch_size:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
