"""The OpenAPI page at ``GET /docs``, served whole by the app: no request leaves the host.

FastAPI's own /docs loads Swagger UI from a CDN, a blank page on a host without internet. This is
FastAPI's documented self-hosting recipe (docs_url=None, then a /docs route calling
``get_swagger_ui_html`` with local asset URLs), the assets coming from the ``swagger-ui-bundle-v2``
package (Swagger UI's own files and Apache-2.0 licence, pinned in the locks). There is no ReDoc page:
it would be a second, read-only rendering of the same schema.
"""

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

DOCS_URL = "/docs"
ASSET_PREFIX = "/static/swagger-ui"
# An explicit list, as app.pages does: nothing else from the package can be served.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}
# The page's own favicon, so Swagger UI's tab does not fetch FastAPI's from its website either.
FAVICON_URL = "/static/favicon.svg"
SWAGGER_UI_PARAMETERS = {
    # Swagger UI would send the schema to validator.swagger.io for a badge: nothing is to leave the host.
    "validatorUrl": None,
}
# Versioned by the lock: revalidate rather than risk an old script after an upgrade.
NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - API documentation",
        swagger_js_url=f"{ASSET_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSET_PREFIX}/swagger-ui.css",
        swagger_favicon_url=FAVICON_URL,
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )


@router.get(ASSET_PREFIX + "/{name}")
async def swagger_ui_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"No Swagger UI file named '{name}'.")
    return FileResponse(swagger_ui_path / name, media_type=media_type, headers=NO_CACHE)
