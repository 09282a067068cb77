"""Shutdown in two steps, so the routing layer hears first.

On SIGTERM, /readyz answers 503 at once while every request is still served, for SHUTDOWN_GRACE_S;
only then does the server's own SIGTERM handling run (uvicorn: stop accepting, drain the requests in
flight, exit). Load balancers and healthchecks that watch /readyz stop sending work during the grace;
a proxy that does not (nginx in docker-compose.yml) keeps getting answers until the listener closes,
then retries elsewhere at once. It is what a Kubernetes preStop sleep does, from inside the process.

A second SIGTERM during the grace stops without waiting; SIGINT (Ctrl-C) never waits.
"""

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger("app")


def hold_sigterm(grace_s: float, on_sigterm: Callable[[], None]) -> Callable[[], None]:
    """Put a grace period in front of the SIGTERM handler the server installed. Returns the undo.

    Call it from the running event loop, after the server installed its handlers (an ASGI lifespan
    startup is such a place: uvicorn installs them before it starts the app). on_sigterm runs in the
    event loop as soon as SIGTERM arrives; the server's handler runs grace_s later. Without a grace,
    or outside the main thread (where no signal is ever delivered), nothing changes.
    """
    if grace_s <= 0 or threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    server_handler = signal.getsignal(signal.SIGTERM)
    received = False

    def hand_on(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, server_handler)
        if callable(server_handler):
            server_handler(signum, frame)
        else:  # the default action (or ignore): as if this hold had never been there
            signal.raise_signal(signum)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        if received:  # a second SIGTERM: the sender wants it gone now
            hand_on(signum, frame)
            return
        received = True
        # A signal handler may interrupt the event loop anywhere: only call_soon_threadsafe is safe here.
        loop.call_soon_threadsafe(on_sigterm)
        loop.call_soon_threadsafe(loop.call_later, grace_s, hand_on, signum, frame)
        logger.info("SIGTERM: /readyz answers 503; still serving for %.3g s, then draining", grace_s)

    signal.signal(signal.SIGTERM, on_signal)

    def undo() -> None:
        if signal.getsignal(signal.SIGTERM) is on_signal:
            signal.signal(signal.SIGTERM, server_handler)

    return undo
