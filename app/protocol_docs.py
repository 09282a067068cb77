"""How the serving protocols' routes appear in /openapi.json: their error body, health answers, request bodies.

Their routes read the raw body themselves (the binary tensor data extension is JSON then bytes, and every
size is checked before parsing), so FastAPI cannot describe those bodies from a parameter: each route
names its request model here, and app.openapi adds the models to the document's components.
"""

from typing import Any

from pydantic import BaseModel, Field

from app.open_inference import InferenceRequest
from app.openapi import request_body
from app.tfserving import PredictRequest


class ProtocolError(BaseModel):
    error: str = Field(examples=["Input 'images' has datatype FP32; this model takes UINT8 pixels ..."])


ERROR_DESCRIPTIONS = {
    400: "A body the model cannot take: not JSON, nested too deeply, a tensor whose datatype, shape or byte "
         "count is off the model's, a binary header length past the body, an image file that is empty or broken.",
    404: "No such model or version here; the message names the one served.",
    408: "The request body did not arrive within the read deadline.",
    413: "Body over the byte limit, too many images or JSON values, or an image over the pixel limit.",
    415: "An encoded image in a format the service does not take, or a compressed body.",
    422: "An unknown accuracy level (the message lists the valid ones).",
    503: "Model warming up or queue full; see Retry-After.",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ProtocolError, "description": text} for status, text in ERROR_DESCRIPTIONS.items()}
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Yes.", "content": {"application/json": {"schema": {"type": "object"}}}},
    400: {"model": ProtocolError, "description": "No: warming up, or stopping."},
    404: ERROR_RESPONSES[404],
    422: ERROR_RESPONSES[422],
}
# Request bodies described by reference: app.openapi puts these models in components.schemas.
REQUEST_MODELS: tuple[type[BaseModel], ...] = (InferenceRequest, PredictRequest)


def json_request_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body is ``model``."""
    return request_body("application/json", model.__name__, description)
