"""MicroBatcher behaviour with a stand-in model: gathering, row routing, back-pressure, no idle delay.

The stand-in "model" answers each image with a row that names the image (its first pixel value), so a
test can tell whether every request got its own row back, whatever batch it was computed in.
"""

import asyncio
import io
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from app.batching import AnswerTimeoutError, BatcherFailedError, MicroBatcher, QueueFullError
from app.service import is_small_image
from core.preprocessing import open_image


def image(tag: int, count: int = 1) -> np.ndarray:
    """``count`` images whose pixels all equal ``tag``."""
    return np.full((count, 32, 32, 3), tag, dtype=np.uint8)


class StandIn:
    """Records each call's batch size (and level); optionally blocks until released, to let a queue build up."""

    default_level = "accurate"
    level_names = ("fast", "balanced", "accurate")

    name = "stand-in"

    def __init__(self, delay_s: float = 0.0, blocking: bool = False, version: int = 1) -> None:
        self.version = version
        self.calls: list[int] = []
        self.levels: list[str | None] = []
        self.delay_s = delay_s
        self.release = threading.Event()
        if not blocking:
            self.release.set()

    def predict(self, images: np.ndarray, level: str | None = None) -> np.ndarray:
        self.calls.append(len(images))
        self.levels.append(level)
        self.release.wait(10)
        time.sleep(self.delay_s)
        return np.repeat(images[:, 0, 0, :1].astype(np.float32), 10, axis=1)


def run(test: Callable[[], object]) -> object:
    return asyncio.run(asyncio.wait_for(test(), 20))  # type: ignore[arg-type]


async def started(model: StandIn, **kwargs: float) -> MicroBatcher:
    options = {"max_batch_size": 64, "max_delay_s": 0.0, "max_queue_images": 512, "adapt_queue_images": 0, **kwargs}
    batcher = MicroBatcher(lambda: model, int(options["max_batch_size"]), options["max_delay_s"],
                           int(options["max_queue_images"]), adapt_queue_images=int(options["adapt_queue_images"]),
                           adapt_level="fast")
    batcher.start()
    return batcher


async def wait_entered(model: StandIn, calls: int = 1) -> None:
    """Until ``calls`` calls of ``model`` have begun (a blocking stand-in holds them there)."""
    while len(model.calls) < calls:
        await asyncio.sleep(0.001)


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_row() -> None:
    async def scenario() -> None:
        model = StandIn(blocking=True)
        batcher = await started(model)
        # The first request finds the model idle and goes alone at once...
        first = asyncio.ensure_future(batcher.predict(image(0)))
        await wait_entered(model)
        # ...the next 39 arrive while it runs: they queue and share the next call.
        rest = [asyncio.ensure_future(batcher.predict(image(tag))) for tag in range(1, 40)]
        await asyncio.sleep(0.01)
        model.release.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        assert model.calls == [1, 39]
        for tag, answer in enumerate(results):
            assert answer.probabilities.shape == (1, 10)
            assert np.all(answer.probabilities == tag)
            assert answer.model is model and answer.level == "accurate"

    run(scenario)


def test_a_stream_of_requests_is_served_in_far_fewer_calls() -> None:
    async def scenario() -> None:
        model = StandIn(delay_s=0.02)
        batcher = await started(model)
        tasks = []
        for tag in range(40):
            tasks.append(asyncio.ensure_future(batcher.predict(image(tag))))
            await asyncio.sleep(0.002)
        results = await asyncio.gather(*tasks)
        await batcher.stop()
        assert [int(answer.probabilities[0, 0]) for answer in results] == list(range(40))
        assert sum(model.calls) == 40
        assert len(model.calls) <= 20

    run(scenario)


def test_multi_image_requests_get_their_rows_in_order() -> None:
    async def scenario() -> None:
        model = StandIn(blocking=True)
        batcher = await started(model)
        first = asyncio.ensure_future(batcher.predict(image(1)))
        await wait_entered(model)
        pair = np.concatenate([image(7), image(9)])
        rest = [asyncio.ensure_future(batcher.predict(pair)), asyncio.ensure_future(batcher.predict(image(3, 3)))]
        await asyncio.sleep(0.01)
        model.release.set()
        answers = await asyncio.gather(first, *rest)
        await batcher.stop()
        assert model.calls == [1, 5]
        assert answers[1].probabilities[:, 0].tolist() == [7, 9]
        assert answers[2].probabilities[:, 0].tolist() == [3, 3, 3]

    run(scenario)


def test_a_lone_request_on_an_idle_server_is_not_delayed() -> None:
    async def scenario() -> float:
        batcher = await started(StandIn(), max_delay_s=0.0)
        await batcher.predict(image(0))  # first call: thread start-up
        began = time.perf_counter()
        await batcher.predict(image(1))
        elapsed = time.perf_counter() - began
        await batcher.stop()
        return elapsed

    # With no delay configured (the default) the worker takes a request the moment it is queued; the
    # bound only leaves room for a loaded CI machine.
    assert run(scenario) < 0.2


def test_batches_never_exceed_the_max_size_except_a_lone_larger_request() -> None:
    async def scenario() -> None:
        model = StandIn(blocking=True)
        batcher = await started(model, max_batch_size=4)
        first = asyncio.ensure_future(batcher.predict(image(0)))
        await wait_entered(model)
        queued = [asyncio.ensure_future(batcher.predict(image(tag))) for tag in range(1, 11)]
        big = asyncio.ensure_future(batcher.predict(image(99, 6)))
        await asyncio.sleep(0.01)
        model.release.set()
        await asyncio.gather(first, *queued, big)
        await batcher.stop()
        assert model.calls == [1, 4, 4, 2, 6]

    run(scenario)


def test_a_full_queue_refuses_at_once_and_frees_up_after_the_batch() -> None:
    async def scenario() -> None:
        model = StandIn(blocking=True)
        batcher = await started(model, max_queue_images=3)
        running = asyncio.ensure_future(batcher.predict(image(0)))  # taken by the worker: not queued
        await wait_entered(model)
        queued = [asyncio.ensure_future(batcher.predict(image(tag))) for tag in (1, 2, 3)]
        await asyncio.sleep(0)
        assert batcher.queued_images == 3
        began = time.perf_counter()
        with pytest.raises(QueueFullError):
            await batcher.predict(image(4))
        with pytest.raises(QueueFullError):
            batcher.ensure_room(1)
        assert time.perf_counter() - began < 0.05
        model.release.set()
        await asyncio.gather(running, *queued)
        assert batcher.queued_images == 0
        assert (await batcher.predict(image(5))).probabilities[0, 0] == 5
        await batcher.stop()

    run(scenario)


def test_requests_whose_client_left_are_not_computed() -> None:
    async def scenario() -> None:
        model = StandIn(blocking=True)
        batcher = await started(model)
        running = asyncio.ensure_future(batcher.predict(image(0)))
        await wait_entered(model)
        gone = asyncio.ensure_future(batcher.predict(image(1, 5)))
        kept = asyncio.ensure_future(batcher.predict(image(2)))
        await asyncio.sleep(0)
        gone.cancel()
        model.release.set()
        await running
        assert (await kept).probabilities[0, 0] == 2
        await batcher.stop()
        assert model.calls == [1, 1]
        assert batcher.queued_images == 0

    run(scenario)


def test_a_model_error_reaches_every_request_of_its_batch_and_the_worker_goes_on() -> None:
    async def scenario() -> None:
        failures = iter([True])

        class Flaky(StandIn):
            def predict(self, images: np.ndarray, level: str | None = None) -> np.ndarray:
                if next(failures, False):
                    raise RuntimeError("model broke")
                return np.zeros((len(images), 10), dtype=np.float32)

        seen: list[int] = []

        def broken_callback(size: int, level: str) -> None:
            seen.append(size)
            raise ValueError("metrics broke")

        flaky = Flaky()
        batcher = MicroBatcher(lambda: flaky, 64, 0.0, 512, on_batch=broken_callback)
        batcher.start()
        with pytest.raises(RuntimeError, match="model broke"):
            await batcher.predict(image(0))
        # The callback fails on every batch; answers still arrive.
        for _ in range(2):
            assert (await batcher.predict(image(1))).probabilities.shape == (1, 10)
        await batcher.stop()
        assert seen == [1, 1]

    run(scenario)


def test_a_swap_lets_the_running_batch_finish_on_the_old_model_and_sends_the_rest_to_the_new() -> None:
    async def scenario() -> None:
        old, new = StandIn(blocking=True, version=1), StandIn(version=2)
        serving = [old]
        batcher = MicroBatcher(lambda: serving[0], 64, 0.0, 512)
        batcher.start()
        running = asyncio.ensure_future(batcher.predict(image(0)))
        await wait_entered(old)
        queued = [asyncio.ensure_future(batcher.predict(image(tag))) for tag in (1, 2)]
        await asyncio.sleep(0)
        serving[0] = new  # swapped while the old model computes a batch and two requests wait
        old.release.set()
        first, *rest = await asyncio.gather(running, *queued)
        later = await batcher.predict(image(3))
        await batcher.stop()
        assert first.model is old and first.probabilities[0, 0] == 0
        assert [answer.model.version for answer in [*rest, later]] == [2, 2, 2]
        assert old.calls == [1] and new.calls == [2, 1]

    run(scenario)


def test_each_batch_runs_at_one_level_and_requests_keep_their_place() -> None:
    async def scenario() -> None:
        model = StandIn(blocking=True)
        batcher = await started(model)
        first = asyncio.ensure_future(batcher.predict(image(0)))
        await wait_entered(model)
        # Queued while the first runs: default, fast, default, fast, balanced.
        queued = [asyncio.ensure_future(batcher.predict(image(tag), level))
                  for tag, level in ((1, None), (2, "fast"), (3, None), (4, "fast"), (5, "balanced"))]
        await asyncio.sleep(0.01)
        model.release.set()
        answers = await asyncio.gather(first, *queued)
        await batcher.stop()
        # The oldest request picks the level; all queued at that level join it; the rest wait their turn.
        assert list(zip(model.calls, model.levels, strict=True)) == [
            (1, "accurate"), (2, "accurate"), (2, "fast"), (1, "balanced")]
        assert [a.level for a in answers] == ["accurate", "accurate", "fast", "accurate", "fast", "balanced"]
        assert [int(a.probabilities[0, 0]) for a in answers] == [0, 1, 2, 3, 4, 5]

    run(scenario)


def test_a_deep_queue_answers_unnamed_requests_at_the_cheaper_level_then_returns_to_the_default() -> None:
    async def scenario() -> None:
        model = StandIn(blocking=True)
        batcher = await started(model, adapt_queue_images=4, max_batch_size=4)
        first = asyncio.ensure_future(batcher.predict(image(0)))
        await wait_entered(model)
        # 9 queued (> 4): the unnamed ones go fast; the one that asked for accurate keeps it.
        unnamed = [asyncio.ensure_future(batcher.predict(image(tag))) for tag in range(1, 9)]
        named = asyncio.ensure_future(batcher.predict(image(9), "accurate"))
        await asyncio.sleep(0.01)
        model.release.set()
        answers = await asyncio.gather(first, *unnamed, named)
        # Queue at 9, then 5 when the second batch is taken: fast both times. Then 1 left (tag 9) at accurate.
        assert list(zip(model.calls, model.levels, strict=True)) == [
            (1, "accurate"), (4, "fast"), (4, "fast"), (1, "accurate")]
        assert [a.level for a in answers[1:9]] == ["fast"] * 8
        assert answers[9].level == "accurate"
        # Back at a short queue, an unnamed request gets the default level again.
        assert (await batcher.predict(image(10))).level == "accurate"
        await batcher.stop()

    run(scenario)


def test_images_being_computed_count_toward_load_adaptation_as_well_as_queued_ones() -> None:
    """With batches in flight the queue alone understates the load: 6 images computing and 3 queued are 9,
    over a threshold of 8, so the unnamed requests go to the cheaper level; once the load is 8 or under, the
    default again."""
    async def scenario() -> None:
        model = StandIn(blocking=True)
        batcher = MicroBatcher(lambda: model, 64, 0.0, 512, adapt_queue_images=8, adapt_level="fast",
                               concurrency=2)
        batcher.start()
        computing = asyncio.ensure_future(batcher.predict(image(0, count=6)))
        await wait_entered(model)
        unnamed = [asyncio.ensure_future(batcher.predict(image(tag))) for tag in range(1, 4)]
        await wait_entered(model, 2)  # the second thread takes the 3 at once, 6 + 3 counted when it decides
        model.release.set()
        answers = await asyncio.gather(computing, *unnamed)
        assert list(zip(model.calls, model.levels, strict=True)) == [(6, "accurate"), (3, "fast")]
        assert [answer.level for answer in answers[1:]] == ["fast"] * 3
        # Nothing computing now: a lone unnamed request is far under the threshold.
        assert (await batcher.predict(image(4))).level == "accurate"
        await batcher.stop()

    run(scenario)


def jpeg(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (10, 20, 30)).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def test_only_small_images_are_decoded_inline() -> None:
    assert is_small_image(open_image(jpeg(32), max_pixels=40_000_000))
    assert is_small_image(open_image(jpeg(64), max_pixels=40_000_000))
    assert not is_small_image(open_image(jpeg(65), max_pixels=40_000_000))
    assert not is_small_image(open_image(jpeg(512), max_pixels=40_000_000))


class Gate(StandIn):
    """Blocks every call until released, and records how many calls were running at once."""

    def __init__(self, version: int = 1) -> None:
        super().__init__(blocking=True, version=version)
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def predict(self, images: np.ndarray, level: str | None = None) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super().predict(images, level)
        finally:
            with self._lock:
                self.running -= 1


def test_with_concurrency_two_batches_run_at_once_and_a_third_waits_for_a_free_thread() -> None:
    async def scenario() -> None:
        model = Gate()
        batcher = MicroBatcher(lambda: model, 64, 0.0, 512, concurrency=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.predict(image(0)))
        await wait_entered(model)
        second = asyncio.ensure_future(batcher.predict(image(1)))
        await wait_entered(model, calls=2)  # started while the first still runs
        waiting = [asyncio.ensure_future(batcher.predict(image(tag))) for tag in (2, 3)]
        await asyncio.sleep(0.02)
        assert model.calls == [1, 1]  # both threads busy: the rest queue for the next free one
        model.release.set()
        answers = await asyncio.gather(first, second, *waiting)
        await batcher.stop()
        assert model.most_at_once == 2
        assert model.calls == [1, 1, 2]
        assert [int(a.probabilities[0, 0]) for a in answers] == [0, 1, 2, 3]

    run(scenario)


def test_with_concurrency_a_new_model_starts_only_after_the_old_models_batches_answer() -> None:
    async def scenario() -> None:
        old, new = Gate(version=1), StandIn(version=2)
        serving: list[StandIn] = [old]
        answered: list[int] = []

        async def predict(tag: int) -> None:
            answered.append((await batcher.predict(image(tag))).model.version)

        batcher = MicroBatcher(lambda: serving[0], 64, 0.0, 512, concurrency=2)
        batcher.start()
        running = asyncio.ensure_future(predict(0))
        await wait_entered(old)
        serving[0] = new  # swapped while the old model computes; a thread is still free
        later = asyncio.ensure_future(predict(1))
        await asyncio.sleep(0.02)
        assert new.calls == []  # the free thread does not start the new model ahead of the old one's answer
        old.release.set()
        await asyncio.gather(running, later)
        await batcher.stop()
        assert answered == [1, 2]

    run(scenario)


def test_a_worker_that_dies_fails_the_waiting_requests_naming_the_cause_and_is_restarted() -> None:
    async def scenario() -> None:
        model = StandIn(blocking=True)
        broken = [False]
        restarts: list[BaseException] = []

        def current_model() -> StandIn:  # the worker reads it once per batch, in its own loop
            if broken[0]:
                raise LookupError("no model to read")
            return model

        batcher = MicroBatcher(current_model, 64, 0.0, 512, on_restart=restarts.append)
        batcher.start()
        running = asyncio.ensure_future(batcher.predict(image(0)))
        await wait_entered(model)
        waiting = [asyncio.ensure_future(batcher.predict(image(tag))) for tag in (1, 2)]
        await asyncio.sleep(0.01)
        broken[0] = True  # the worker's next turn raises in the loop itself, outside any batch
        model.release.set()
        assert (await running).probabilities[0, 0] == 0  # the batch already computing still answers
        for request in waiting:
            with pytest.raises(BatcherFailedError, match=r"LookupError: no model to read\) and was restarted"):
                await request
        assert batcher.queued_images == 0 and batcher.restarts == 1 and isinstance(restarts[0], LookupError)
        broken[0] = False
        assert (await batcher.predict(image(3))).probabilities[0, 0] == 3  # the restarted worker serves
        await batcher.stop()
        assert model.calls == [1, 1]

    run(scenario)


def test_a_request_past_the_deadline_gets_a_timeout_and_a_queued_one_is_never_computed() -> None:
    async def scenario() -> None:
        model = StandIn(blocking=True)  # a model call that does not return: a hung inference thread
        batcher = MicroBatcher(lambda: model, 64, 0.0, 512, answer_timeout_s=0.2)
        batcher.start()
        began = time.perf_counter()
        running = asyncio.ensure_future(batcher.predict(image(0)))
        await wait_entered(model)
        queued = asyncio.ensure_future(batcher.predict(image(1, 3)))
        for request in (running, queued):
            with pytest.raises(AnswerTimeoutError, match=r"within 0.2 s \(3 images were waiting\)"):
                await request
        assert time.perf_counter() - began < 2
        model.release.set()
        assert (await batcher.predict(image(2))).probabilities[0, 0] == 2
        await batcher.stop()
        assert model.calls == [1, 1]  # the timed-out queued request was dropped, not computed
        assert batcher.queued_images == 0

    run(scenario)


def test_a_batch_that_cannot_be_formed_fails_its_requests_instead_of_leaving_them_waiting() -> None:
    async def scenario() -> None:
        model = StandIn(blocking=True)
        batcher = await started(model)
        running = asyncio.ensure_future(batcher.predict(image(0)))
        await wait_entered(model)
        # Two requests of different image shapes queue for one batch: joining them raises.
        odd = [asyncio.ensure_future(batcher.predict(images)) for images in
               (image(1), np.zeros((1, 16, 16, 3), dtype=np.uint8))]
        await asyncio.sleep(0.01)
        model.release.set()
        await running
        for request in odd:
            with pytest.raises(ValueError):
                await request
        assert (await batcher.predict(image(2))).probabilities[0, 0] == 2
        await batcher.stop()

    run(scenario)


def test_with_concurrency_lone_requests_always_run_on_the_same_inference_thread() -> None:
    async def scenario() -> None:
        model = Gate()
        threads: list[str] = []
        recorded = model.predict

        def predict(images: np.ndarray, level: str | None = None) -> np.ndarray:
            threads.append(threading.current_thread().name)
            return recorded(images, level)

        model.predict = predict  # type: ignore[method-assign]
        batcher = MicroBatcher(lambda: model, 64, 0.0, 512, concurrency=2)
        batcher.start()
        both = [asyncio.ensure_future(batcher.predict(image(0)))]
        await wait_entered(model)
        both.append(asyncio.ensure_future(batcher.predict(image(1))))
        await wait_entered(model, calls=2)  # a burst: both inference threads started
        model.release.set()
        await asyncio.gather(*both)
        threads.clear()
        for tag in range(6):  # then lone requests, one after another
            await batcher.predict(image(tag))
        await batcher.stop()
        # Not handed to the two threads in turn (what one shared pool did): the same thread, warm, every time.
        assert threads == [threads[0]] * 6

    run(scenario)
