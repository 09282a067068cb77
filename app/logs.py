"""What the service's log says, and what it keeps out.

At the default level (info) an operator reads uvicorn's lines, the access log, and three lines of the
service's own (app.main writes them, through app.main.configure_logging's handler): which model is
served, where the page and the API docs are, and when it is ready.
Serving imports no TensorFlow, so none of its C++ start-up notices can appear; LOG_LEVEL=debug adds the
runtime's line (OpenVINO, where each level came from, its precision and threads).
"""

import os
import time

# Where the "ready" line counts from when the kernel's record of the process start cannot be read.
STARTED = time.monotonic()
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


def page_urls(host: str, port: int) -> tuple[str, str]:
    """The addresses a person can open: a wildcard bind address is reached through localhost."""
    shown = "localhost" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
    base = f"http://{shown}:{port}"
    return f"{base}/", f"{base}/docs"
