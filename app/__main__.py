"""``python -m app`` / ``cifar10-serve``: run uvicorn with the settings from the environment."""

import signal
from types import FrameType

import uvicorn

from app.settings import get_settings

# Seconds uvicorn waits for in-flight requests after SIGTERM/SIGINT before cutting them off.
GRACEFUL_SHUTDOWN_S = 30


def _drained(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises the stop signal once it has drained; by then the stop was clean, so exit 0."""


def main() -> None:
    settings = get_settings()
    signal.signal(signal.SIGTERM, _drained)
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


if __name__ == "__main__":
    main()
