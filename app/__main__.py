"""``python -m app`` / ``cifar10-serve``: run uvicorn with the settings from the environment."""

import errno
import signal
import socket
import sys
from types import FrameType

import uvicorn

from app.settings import get_settings

# Seconds uvicorn waits for in-flight requests after SIGTERM/SIGINT before cutting them off.
GRACEFUL_SHUTDOWN_S = 30


def _ignore_reraised_sigterm(signum: int, frame: FrameType | None) -> None:
    """Does nothing, on purpose: see main()."""


def address_problem(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on HOST:PORT, in one line that names the setting to change; None if it can.

    Checked before uvicorn starts, which would load the model for seconds and then fail to bind with
    a bare ``[Errno 98]``. (Another process could still take the port in between; uvicorn then
    reports it itself.)"""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return (f"error: PORT {port} is already in use on {host} (another server, or an earlier one still "
                    f"running). Stop it, or set PORT to a free port, e.g. PORT={port + 1} make serve.")
        if error.errno == errno.EACCES:
            return f"error: PORT {port} needs root privileges on this machine. Set PORT above 1023, e.g. PORT=8000."
        return (f"error: cannot listen on HOST {host}, PORT {port} ({error.strerror or error}). Set HOST to an "
                "address of this machine: 127.0.0.1 for this machine only, 0.0.0.0 for every interface.")
    return None


def main() -> None:
    settings = get_settings()
    problem = address_problem(settings.host, settings.port)
    if problem:
        sys.exit(problem)  # the one line on stderr, exit status 1
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
        timeout_keep_alive=settings.keep_alive_s,
    )


if __name__ == "__main__":
    main()
