"""``python -m app`` / ``cifar10-serve``: run uvicorn with the settings from the environment."""

import signal
from types import FrameType

import uvicorn

from app.settings import get_settings

# Seconds uvicorn waits for in-flight requests after SIGTERM/SIGINT before cutting them off.
GRACEFUL_SHUTDOWN_S = 30


def _ignore_reraised_sigterm(signum: int, frame: FrameType | None) -> None:
    """Does nothing, on purpose: see main()."""


def main() -> None:
    settings = get_settings()
    # uvicorn handles SIGTERM itself while it serves: it stops accepting, drains the requests in flight,
    # then restores the handler found here and raises SIGTERM again. With Python's default handler that
    # second SIGTERM would kill the process (exit status -15) after a clean stop; with this no-op the
    # process returns from uvicorn.run and exits 0, which is what orchestrators read as a clean stop.
    # (A Python handler, not SIG_IGN: worker processes would inherit an ignored SIGTERM.)
    signal.signal(signal.SIGTERM, _ignore_reraised_sigterm)
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
