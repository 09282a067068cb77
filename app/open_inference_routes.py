"""Open Inference Protocol (KServe v2) REST routes: thin, over app.open_inference and ClassifierService."""

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from app import __version__
from app.access import API_KEY
from app.image_inputs import Limits, request_body
from app.open_inference import (
    BINARY_MEDIA_TYPE,
    EXTENSIONS,
    HEADER_LENGTH,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ServerMetadata,
    infer_response,
    model_metadata,
    read_infer_request,
)
from app.protocol_docs import ERROR_RESPONSES, HEALTH_RESPONSES, json_request_body
from app.routes import Service

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (v2)"])
ModelName = Annotated[str, Path(description="The served model's name (its metadata.json `name`).")]
Version = Annotated[str, Path(description="A model version; only the served one answers.")]
SERVER_NAME = "cifar10-service"
INFER_DOC = {
    "responses": {**ERROR_RESPONSES, 200: {
        "model": InferenceResponse,
        "description": "Probabilities (and labels); with binary outputs asked for, the JSON header then the raw "
                       "tensors, its length in Inference-Header-Content-Length.",
        "content": {BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}},
    "openapi_extra": json_request_body(InferenceRequest, "An inference request. With the binary tensor data "
                                       "extension the body is this JSON, then the tensors' bytes, and the "
                                       "Inference-Header-Content-Length header gives the JSON's length."),
    "response_class": Response,
}


@router.get("/health/live", responses=HEALTH_RESPONSES, summary="The server is alive")
async def v2_live() -> JSONResponse:
    return JSONResponse({})


@router.get("/health/ready", responses=HEALTH_RESPONSES, summary="The model is loaded and warm (400 until then)")
async def v2_ready(service: Service) -> JSONResponse:
    return readiness(service)


@router.get("", response_model=ServerMetadata, responses=ERROR_RESPONSES, summary="Server metadata")
async def v2_server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


@router.get("/models/{model_name}", response_model=ModelMetadata, responses=ERROR_RESPONSES,
            summary="Model metadata: inputs and outputs")
async def v2_model_metadata(service: Service, model_name: ModelName) -> ModelMetadata:
    return metadata(service, model_name)


@router.get("/models/{model_name}/versions/{model_version}", response_model=ModelMetadata,
            responses=ERROR_RESPONSES, summary="Model metadata of one version")
async def v2_model_version_metadata(service: Service, model_name: ModelName, model_version: Version) -> ModelMetadata:
    return metadata(service, model_name, model_version)


@router.get("/models/{model_name}/ready", responses=HEALTH_RESPONSES, summary="The model is ready (400 until then)")
async def v2_model_ready(service: Service, model_name: ModelName) -> JSONResponse:
    service.model_named(model_name)
    return readiness(service)


@router.get("/models/{model_name}/versions/{model_version}/ready", responses=HEALTH_RESPONSES,
            summary="The model version is ready (400 until then)")
async def v2_model_version_ready(service: Service, model_name: ModelName, model_version: Version) -> JSONResponse:
    service.model_named(model_name, model_version)
    return readiness(service)


@router.post("/models/{model_name}/infer",
             dependencies=[API_KEY], summary="Classify images (UINT8 pixels or BYTES image files)", **INFER_DOC)
async def v2_infer(request: Request, service: Service, model_name: ModelName) -> Response:
    return await infer(request, service, model_name)


@router.post("/models/{model_name}/versions/{model_version}/infer",
             dependencies=[API_KEY], summary="Classify images with one version",
             **INFER_DOC)
async def v2_version_infer(request: Request, service: Service, model_name: ModelName,
                           model_version: Version) -> Response:
    return await infer(request, service, model_name, model_version)


async def infer(request: Request, service: Service, model_name: str, model_version: str | None = None) -> Response:
    service.model_named(model_name, model_version)
    body = await request_body(request)
    deadline = service.batcher.deadline()  # INFERENCE_TIMEOUT_S counts from here: parsing and decoding wait too
    call = await service.off_loop(deadline, len(body), read_infer_request, body, request.headers.get(HEADER_LENGTH),
                                  Limits.from_settings(service.settings))
    answer = await service.classify_inputs(call.inputs, call.level, deadline)
    content, headers, media_type = infer_response(call, answer)
    return Response(content, headers=headers, media_type=media_type)


def metadata(service: Service, model_name: str, model_version: str | None = None) -> ModelMetadata:
    model = service.model_named(model_name, model_version)
    return model_metadata(model.name, model.version, model.level_names, model.default_level)


def readiness(service: Service) -> JSONResponse:
    """200 ``{}`` when ready; the protocol's 4xx for not ready, with the reason."""
    if service.stopping.is_set():
        return JSONResponse({"error": "The server is stopping."}, status_code=400)
    if not service.ready.is_set():
        return JSONResponse({"error": "The model is still warming up."}, status_code=400)
    return JSONResponse({})
