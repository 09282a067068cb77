"""Debian's headless Chromium driven by Playwright (no browser is downloaded), with the network off.

Only the test server's own address resolves: every other host name maps to "not found" inside
Chromium, and :class:`OffHostRequests` records any request that tries to leave the host anyway.
Without /usr/bin/chromium the browser tests fail, never skip (``apt-get install chromium
chromium-driver``, as `make test` does, or set CHROMIUM).
"""

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

# Screenshots for a person to look at (gitignored).
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# Chromium as root on a machine with no outside network: no sandbox, no GPU, none of the background
# connections (updates, sync, safe browsing), and no name but the loopback address resolves.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


@contextmanager
def headless_chromium() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium and chromium-driver "
                    "(`apt-get install chromium chromium-driver`, as `make test` does) or set CHROMIUM.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        # The system's browser, not one Playwright fetched for itself.
        assert chromium.version in subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout
        try:
            yield chromium
        finally:
            chromium.close()


class OffHostRequests(list):
    """Every URL a page asked for outside ``base`` (its scheme, host and port); each is aborted."""

    def __init__(self, context, base: str) -> None:
        super().__init__()
        origin = urlsplit(base)

        def route(route) -> None:
            target = urlsplit(route.request.url)
            if target.scheme in ("data", "blob") or (target.scheme, target.netloc) == (origin.scheme, origin.netloc):
                route.continue_()
            else:
                self.append(route.request.url)
                route.abort("internetdisconnected")

        context.route("**/*", route)
