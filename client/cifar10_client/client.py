"""Client and AsyncClient: the same calls, blocking or awaitable, over one httpx connection pool.

Both share what is not I/O (_Calls): where each call goes, when a 503 or 429 is retried, how an answer
becomes a typed result or an exception. Only sending and waiting differ between the two.
"""

import asyncio
import email.utils
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from cifar10_client.errors import (
    APIError,
    ClientError,
    ServiceUnavailable,
    ServiceUnreachable,
    UnexpectedAnswer,
    transport_error,
)
from cifar10_client.models import JSON, ExplainedPrediction, Health, Metadata, Prediction
from cifar10_client.uploads import Source, Upload, describe, read_upload

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 3
# The service asks for 1 s; a far longer Retry-After (from a proxy, say) is not worth blocking a caller for.
MAX_RETRY_WAIT_S = 30.0
# A 503 or 429 without Retry-After (from a proxy in front of the service) is retried after this long.
DEFAULT_RETRY_WAIT_S = 1.0
# Answers worth waiting out: 503 the service is warming up or at capacity, 429 this client is over its
# rate limit at the proxy (deploy/nginx.conf). Both say when to come back in Retry-After.
RETRIED_STATUSES = frozenset({429, 503})
# predict_many bounds the requests in flight itself; the pool must never be what makes them wait.
POOL_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=64)

Result = TypeVar("Result")
OnResult = Callable[[int, "FileResult"], None]


@dataclass(frozen=True)
class FileResult:
    """One source of ``predict_many``: its prediction, or the error that file alone met."""

    source: str
    prediction: Prediction | None = None  # an ExplainedPrediction from predict_many(explain=True)
    error: ClientError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    retry: bool = True  # 503/429 are answers to retry for uploads, and 503 the answer itself for /readyz
    ok_statuses: frozenset[int] = frozenset({200})
    params: dict[str, str] | None = None
    upload: Upload | None = None

    def request_args(self) -> dict[str, Any]:
        files = {"file": (self.upload.filename, self.upload.content, self.upload.media_type)} if self.upload else None
        return {"params": self.params, "files": files}


def retry_after_s(value: str | None) -> float:
    """Retry-After in seconds: delta-seconds or an HTTP date (RFC 9110); anything else gets the default."""
    if value is None:
        return DEFAULT_RETRY_WAIT_S
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_WAIT_S
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"]
    return response.text.strip()[:300] or response.reason_phrase


def check_service_url(url: str) -> None:
    """ValueError unless ``url`` is an http(s) address with a host: ``localhost:8000`` (no scheme) or a port that
    is not a number would otherwise fail on every call, as if the service had broken the connection."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise ValueError(f"{url!r} is not a URL ({error}); expected http://host:port, e.g. {DEFAULT_URL}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{url!r} is not an http(s) address; expected http://host:port, e.g. {DEFAULT_URL}")


class _Calls:
    """Everything but the I/O, shared by Client and AsyncClient."""

    def __init__(self, url: str, retries: int, max_retry_wait_s: float, api_key: str | None) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        check_service_url(url)
        self.url = url.rstrip("/")
        self.retries = retries
        self.max_retry_wait_s = max_retry_wait_s
        # Sent with every call: the open routes ignore it, and one header is simpler than knowing which.
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else None

    def _retry_delay(self, call: Call, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before sending ``call`` again, or None to keep this answer."""
        if not call.retry or response.status_code not in RETRIED_STATUSES or attempt >= self.retries:
            return None
        return min(retry_after_s(response.headers.get("retry-after")), self.max_retry_wait_s)

    def _transport_error(self, error: httpx.TransportError, call: Call, timeout: httpx.Timeout) -> ClientError:
        return transport_error(error, self.url, self.url + call.path, timeout.read)

    def _answer(self, call: Call, response: httpx.Response, attempts: int, parse: Callable[[JSON], Result]) -> Result:
        url = self.url + call.path
        if response.status_code not in call.ok_statuses:
            if response.status_code in RETRIED_STATUSES and call.retry:
                raise ServiceUnavailable(_detail(response), url, attempts, response.status_code)
            raise APIError(response.status_code, _detail(response), url)
        try:
            return parse(response.json())
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UnexpectedAnswer(url, f"{type(error).__name__}: {error}") from error

    @staticmethod
    def _predict_call(upload: Upload, preview: bool) -> Call:
        return Call("POST", "/predict", params={"preview": "true"} if preview else None, upload=upload)

    @staticmethod
    def _explain_call(upload: Upload, label: str | None) -> Call:
        return Call("POST", "/explain", params={"label": label} if label else None, upload=upload)

    HEALTH = Call("GET", "/readyz", retry=False, ok_statuses=frozenset({200, 503}))
    METADATA = Call("GET", "/metadata")


def _check_concurrency(concurrency: int) -> None:
    if concurrency < 1:
        raise ValueError(f"concurrency must be 1 or more, not {concurrency}")


class Client(_Calls):
    """Blocking client. ``with Client(url) as client: client.predict("cat.jpg")``.

    ``http_client`` replaces the httpx.Client it would make (proxies, certificates, a test transport):
    its own timeout then applies instead of ``timeout_s``, and the caller closes it."""

    def __init__(self, url: str = DEFAULT_URL, *, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, max_retry_wait_s: float = MAX_RETRY_WAIT_S,
                 http_client: httpx.Client | None = None, api_key: str | None = None) -> None:
        super().__init__(url, retries, max_retry_wait_s, api_key)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(limits=POOL_LIMITS, timeout=timeout_s)

    def _send(self, call: Call, parse: Callable[[JSON], Result]) -> Result:
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, self.url + call.path, headers=self.headers,
                                              **call.request_args())
            except httpx.TransportError as error:
                raise self._transport_error(error, call, self._http.timeout) from error
            delay = self._retry_delay(call, response, attempt)
            if delay is None:
                return self._answer(call, response, attempt + 1, parse)
            time.sleep(delay)
            attempt += 1

    def predict(self, source: Source, *, preview: bool = False) -> Prediction:
        """Classify one image: a path, bytes, or a file opened in binary mode."""
        return self._send(self._predict_call(read_upload(source), preview), Prediction.from_json)

    def explain(self, source: Source, *, label: str | None = None) -> ExplainedPrediction:
        """Classify one image at the fast level and show where the model looked: an occlusion map of the
        predicted class (or ``label``), as numbers and as a PNG overlay (``.explanation.overlay_png()``)."""
        return self._send(self._explain_call(read_upload(source), label), ExplainedPrediction.from_json)

    def predict_many(self, sources: Iterable[Source], *, concurrency: int = 4, preview: bool = False,
                     on_result: OnResult | None = None, explain: bool = False) -> list[FileResult]:
        """Classify every source, ``concurrency`` requests at a time; results in the order of ``sources``.

        A file's own failure (unreadable, refused by the service, timed out) is its result's ``error``;
        a service that cannot be reached at all raises ServiceUnreachable. ``on_result(index, result)``
        is called in this thread as each file finishes. ``explain``: through ``/explain`` instead, each
        prediction an ExplainedPrediction."""
        _check_concurrency(concurrency)
        items = list(sources)
        results: list[FileResult | None] = [None] * len(items)
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cifar10-client") as pool:
            futures = {pool.submit(self._predict_file, item, preview, explain): index
                       for index, item in enumerate(items)}
            try:
                for future in as_completed(futures):
                    index = futures[future]
                    results[index] = result = future.result()
                    if on_result is not None:
                        on_result(index, result)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return [result for result in results if result is not None]

    def _predict_file(self, source: Source, preview: bool, explain: bool = False) -> FileResult:
        try:
            answer = self.explain(source) if explain else self.predict(source, preview=preview)
            return FileResult(describe(source), prediction=answer)
        except ServiceUnreachable:
            raise
        except ClientError as error:
            return FileResult(describe(source), error=error)

    def health(self) -> Health:
        """Readiness: ``.ready`` once the model is loaded and warm (``status`` says why not)."""
        return self._send(self.HEALTH, Health.from_json)

    def metadata(self) -> Metadata:
        return self._send(self.METADATA, Metadata.from_json)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class AsyncClient(_Calls):
    """Awaitable client. ``async with AsyncClient(url) as client: await client.predict("cat.jpg")``."""

    def __init__(self, url: str = DEFAULT_URL, *, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, max_retry_wait_s: float = MAX_RETRY_WAIT_S,
                 http_client: httpx.AsyncClient | None = None, api_key: str | None = None) -> None:
        super().__init__(url, retries, max_retry_wait_s, api_key)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(limits=POOL_LIMITS, timeout=timeout_s)

    async def _send(self, call: Call, parse: Callable[[JSON], Result]) -> Result:
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, self.url + call.path, headers=self.headers,
                                                    **call.request_args())
            except httpx.TransportError as error:
                raise self._transport_error(error, call, self._http.timeout) from error
            delay = self._retry_delay(call, response, attempt)
            if delay is None:
                return self._answer(call, response, attempt + 1, parse)
            await asyncio.sleep(delay)
            attempt += 1

    async def predict(self, source: Source, *, preview: bool = False) -> Prediction:
        """Classify one image: a path, bytes, or a file opened in binary mode."""
        # Reading a file can block on a slow disk or network share: not on the event loop.
        upload = await asyncio.to_thread(read_upload, source) if isinstance(source, str | os.PathLike) \
            else read_upload(source)
        return await self._send(self._predict_call(upload, preview), Prediction.from_json)

    async def explain(self, source: Source, *, label: str | None = None) -> ExplainedPrediction:
        """As Client.explain."""
        upload = await asyncio.to_thread(read_upload, source) if isinstance(source, str | os.PathLike) \
            else read_upload(source)
        return await self._send(self._explain_call(upload, label), ExplainedPrediction.from_json)

    async def predict_many(self, sources: Iterable[Source], *, concurrency: int = 4, preview: bool = False,
                           on_result: OnResult | None = None, explain: bool = False) -> list[FileResult]:
        """As Client.predict_many: ``concurrency`` requests in flight, results in the order of ``sources``."""
        _check_concurrency(concurrency)
        items = list(sources)
        results: list[FileResult | None] = [None] * len(items)
        pending = iter(enumerate(items))  # shared by the workers: each takes the next source when free

        async def worker() -> None:
            for index, source in pending:
                results[index] = result = await self._predict_file(source, preview, explain)
                if on_result is not None:
                    on_result(index, result)

        workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(items)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return [result for result in results if result is not None]

    async def _predict_file(self, source: Source, preview: bool, explain: bool = False) -> FileResult:
        try:
            answer = await self.explain(source) if explain else await self.predict(source, preview=preview)
            return FileResult(describe(source), prediction=answer)
        except ServiceUnreachable:
            raise
        except ClientError as error:
            return FileResult(describe(source), error=error)

    async def health(self) -> Health:
        """Readiness: ``.ready`` once the model is loaded and warm (``status`` says why not)."""
        return await self._send(self.HEALTH, Health.from_json)

    async def metadata(self) -> Metadata:
        return await self._send(self.METADATA, Metadata.from_json)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()
