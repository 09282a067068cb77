"""The page for people at ``GET /``: plain HTML, CSS and JavaScript served by the app itself.

No CDN and no inline script, so the page works offline and under the strict Content-Security-Policy
that app.middleware sets. The page talks to the same public API as any client (/predict/batch with
?preview=true, /metadata), so it shows exactly what the API answers.
"""

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).parent / "static"
# An explicit list rather than a directory mount: nothing but these files can ever be served from here.
ASSETS = {
    "favicon.svg": "image/svg+xml",
    "page.css": "text/css; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
}
# Assets change with each release and are tiny: revalidate rather than risk a stale script with a new page.
NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=NO_CACHE)


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"No static file named '{name}'.")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=NO_CACHE)
