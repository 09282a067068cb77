"""The OpenAPI document, written so that client generators can upload images.

The upload routes read their multipart bodies themselves (app.uploads), so their bodies are added here as
the components FastAPI would have written (``Body_predict``...). Each file field carries both spellings
of "a file": ``contentMediaType: application/octet-stream`` (OpenAPI 3.1, what FastAPI writes) and
``format: binary`` (OpenAPI 3.0), which generators such as openapi-python-client need to send a file
rather than a text part.

Operation ids are the route functions' names (``predict``, ``predict_batch``, ...), so a generated
client's calls read ``api.predict.predict`` rather than ``api.predict.predict_predict_post``.
"""

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from app.access import document_keys

COMPONENTS = "#/components/schemas/"


def operation_id(route: APIRoute) -> str:
    return route.name


def request_body(media_type: str, component: str, description: str | None = None) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body itself: the schema ``component`` of the document's
    components, sent as ``media_type``."""
    described = {"description": description} if description else {}
    return {"requestBody": {"required": True, **described, "content": {
        media_type: {"schema": {"$ref": COMPONENTS + component}}}}}


def add_models(document: dict[str, Any], models: Iterable[type[BaseModel]]) -> None:
    """Put ``models`` (and the models they use) in the document's components, for routes that refer to them."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template=f"{COMPONENTS}{{model}}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema


def install_openapi(app: FastAPI, request_models: Iterable[type[BaseModel]] = (),
                    request_schemas: dict[str, dict[str, Any]] | None = None) -> None:
    """Make ``app``'s /openapi.json (built once, on first use, as FastAPI does) hold the bodies of the routes
    that read their request themselves: ``request_models`` (JSON bodies) and ``request_schemas`` (the upload
    forms of app.uploads, by component name)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()  # FastAPI caches what it built in app.openapi_schema
            add_models(document, request_models)
            document["components"]["schemas"].update(request_schemas or {})
            document_keys(document, app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
