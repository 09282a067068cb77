"""What the service's log says, and what it keeps out.

At the default level (info) an operator reads uvicorn's lines, the access log, and three lines of the
service's own (app.main writes them, through app.main.configure_logging's handler): which model is
served, where the page and the API docs are, and when it is ready.
TensorFlow's C++ start-up notices (oneDNN, CPU instructions, absl's "before InitializeLog") are
written straight to the process's stderr descriptor, below Python's logging: they are dropped there
while TensorFlow is imported, and left alone at LOG_LEVEL=debug (which sets TF_CPP_MIN_LOG_LEVEL=0).
"""

import contextlib
import os
import time
from collections.abc import Iterator

# Where the "ready" line counts from when the kernel's record of the process start cannot be read.
STARTED = time.monotonic()
# TensorFlow's own C++ threshold: 2 keeps its INFO and WARNING lines out, errors still show; 0 shows all.
QUIET_TENSORFLOW_LEVEL = "2"
SHOW_TENSORFLOW_LEVEL = "0"


def seconds_since_start() -> float:
    """Seconds since this process started, from the kernel's record (Linux), else since STARTED."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            # Field 22 is the start time in clock ticks after boot; fields counted after the ")" of the name.
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            seconds_up = float(uptime.read().split()[0])
        return seconds_up - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - STARTED


def quiet_tensorflow(log_level: str) -> None:
    """Before TensorFlow is imported: its C++ INFO and WARNING lines only at LOG_LEVEL=debug.
    An operator's own TF_CPP_MIN_LOG_LEVEL wins."""
    if not os.environ.get("TF_CPP_MIN_LOG_LEVEL"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = SHOW_TENSORFLOW_LEVEL if log_level == "debug" else QUIET_TENSORFLOW_LEVEL


@contextlib.contextmanager
def tensorflow_notices_hidden() -> Iterator[None]:
    """Around ``import tensorflow``: drop what it writes to file descriptor 2, unless TF_CPP_MIN_LOG_LEVEL=0.

    TF_CPP_MIN_LOG_LEVEL does not reach the notices absl prints before its logging is initialised
    (oneDNN's, twice, and the CPU-instruction one, all during the import), so they are caught at the
    descriptor. Only the import: Python's own stderr writes (log lines) in the block would go too.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == SHOW_TENSORFLOW_LEVEL:
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def page_urls(host: str, port: int) -> tuple[str, str]:
    """The addresses a person can open: a wildcard bind address is reached through localhost."""
    shown = "localhost" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
    base = f"http://{shown}:{port}"
    return f"{base}/", f"{base}/docs"
