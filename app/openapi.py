"""The OpenAPI document, written so that client generators can upload images.

FastAPI describes an upload field in OpenAPI 3.1 as ``{"type": "string", "contentMediaType":
"application/octet-stream"}``. Generators such as openapi-python-client recognise a file only by
``format: binary`` (the OpenAPI 3.0 spelling), so without it a generated client sends the image as a
text part and the service answers 422. Every upload field gets ``format: binary`` beside what FastAPI
writes.

Operation ids are the route functions' names (``predict``, ``predict_batch``, ...), so a generated
client's calls read ``api.predict.predict`` rather than ``api.predict.predict_predict_post``.
"""

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

UPLOAD_MEDIA_TYPE = "application/octet-stream"
COMPONENTS = "#/components/schemas/"


def operation_id(route: APIRoute) -> str:
    return route.name


def mark_uploads_binary(node: Any) -> None:
    """Add ``format: binary`` to every schema in ``node`` (walked whole) that FastAPI wrote for an upload."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("contentMediaType") == UPLOAD_MEDIA_TYPE:
            node["format"] = "binary"
        for value in node.values():
            mark_uploads_binary(value)
    elif isinstance(node, list):
        for value in node:
            mark_uploads_binary(value)


def add_models(document: dict[str, Any], models: Iterable[type[BaseModel]]) -> None:
    """Put ``models`` (and the models they use) in the document's components, for routes that refer to them."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template=f"{COMPONENTS}{{model}}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema


def install_openapi(app: FastAPI, request_models: Iterable[type[BaseModel]] = ()) -> None:
    """Make ``app``'s /openapi.json (built once, on first use, as FastAPI does) mark its uploads and hold
    ``request_models``, the bodies of routes that read their request themselves."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()  # FastAPI caches what it built in app.openapi_schema
            mark_uploads_binary(document)
            add_models(document, request_models)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
