"""What the client raises: one base class, so ``except ClientError`` catches every failure it knows."""

import httpx


class ClientError(Exception):
    """Base of every error this client raises."""


class APIError(ClientError):
    """The service answered with an error status; ``detail`` is its message, meant for a person."""

    def __init__(self, status: int, detail: str, url: str) -> None:
        super().__init__(f"{status} from {url}: {detail}")
        self.status = status
        self.detail = detail
        self.url = url


class ServiceUnavailable(APIError):
    """503 (warming up or at capacity) or 429 (over this client's rate limit) still after every retry the
    client was allowed; ``status`` says which."""

    def __init__(self, detail: str, url: str, attempts: int, status: int = 503) -> None:
        super().__init__(status, f"{detail} (gave up after {attempts} attempts)", url)
        self.attempts = attempts


class ServiceUnreachable(ClientError):
    """No connection could be made: the service is down, or the URL is wrong."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the service at {url} ({reason}). Is it running? Start it with "
                         "`make serve`, or pass the URL where it listens (--url / CIFAR10_URL).")
        self.url = url


class RequestTimeout(ClientError):
    """Connected, but the answer did not come within the timeout."""

    def __init__(self, url: str, timeout_s: float | None) -> None:
        within = f" within {timeout_s:g} s" if timeout_s else ""
        super().__init__(f"no answer from {url}{within}; retry later or raise the timeout (--timeout).")
        self.url = url


class ConnectionLost(ClientError):
    """The connection broke before a whole answer arrived."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"the connection to {url} broke before an answer arrived ({reason}).")
        self.url = url


class UnexpectedAnswer(ClientError):
    """A 2xx answer that is not what this service sends: the URL points at something else."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url} did not answer as the CIFAR-10 service does ({reason}); check the URL.")
        self.url = url


class UnreadableFile(ClientError):
    """A local file to upload could not be read (missing, a folder, no permission)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.path = path
        self.reason = reason


class OverlayNotWritten(ClientError):
    """An explanation arrived, but its overlay PNG could not be written (a full disk, a bad overlay)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot write the overlay {path}: {reason}")
        self.path = path


def transport_error(error: httpx.TransportError, service_url: str, url: str, timeout_s: float | None) -> ClientError:
    """httpx's transport failures, as the three cases a caller handles differently."""
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return ServiceUnreachable(service_url, str(error) or type(error).__name__)
    if isinstance(error, httpx.TimeoutException):
        return RequestTimeout(url, timeout_s)
    return ConnectionLost(url, str(error) or type(error).__name__)
