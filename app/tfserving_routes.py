"""TensorFlow Serving REST API routes: thin, over app.tfserving and ClassifierService."""

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from app.access import API_KEY
from app.image_inputs import Limits, request_body
from app.protocol_docs import ERROR_RESPONSES, json_request_body
from app.routes import Service
from app.tfserving import (
    ModelMetadataResponse,
    ModelStatus,
    PredictRequest,
    PredictResponse,
    model_metadata,
    model_status,
    predict_response,
    read_predict_request,
)

router = APIRouter(prefix="/v1/models", tags=["TensorFlow Serving REST API"])
ModelName = Annotated[str, Path(description="The served model's name (its metadata.json `name`).")]
Version = Annotated[str, Path(description="A model version; only the served one answers.")]
PREDICT_DOC = {
    "responses": {**ERROR_RESPONSES, 200: {"model": PredictResponse}},
    "openapi_extra": json_request_body(PredictRequest, "A predict request in the row (`instances`) or columnar "
                                       "(`inputs`) form."),
    "response_class": JSONResponse,
}


@router.get("/{model_name}", response_model=ModelStatus, responses=ERROR_RESPONSES, summary="Model version status")
async def tfs_model_status(service: Service, model_name: ModelName) -> ModelStatus:
    return status(service, model_name)


@router.get("/{model_name}/versions/{model_version}", response_model=ModelStatus, responses=ERROR_RESPONSES,
            summary="One version's status")
async def tfs_model_version_status(service: Service, model_name: ModelName, model_version: Version) -> ModelStatus:
    return status(service, model_name, model_version)


@router.get("/{model_name}/metadata", response_model=ModelMetadataResponse, responses=ERROR_RESPONSES,
            summary="The model's signatures")
async def tfs_model_metadata(service: Service, model_name: ModelName) -> ModelMetadataResponse:
    return metadata(service, model_name)


@router.get("/{model_name}/versions/{model_version}/metadata", response_model=ModelMetadataResponse,
            responses=ERROR_RESPONSES, summary="One version's signatures")
async def tfs_model_version_metadata(service: Service, model_name: ModelName,
                                     model_version: Version) -> ModelMetadataResponse:
    return metadata(service, model_name, model_version)


@router.post("/{model_name}:predict",
             dependencies=[API_KEY], summary="Classify images (row or columnar form)", **PREDICT_DOC)
async def tfs_predict(request: Request, service: Service, model_name: ModelName) -> JSONResponse:
    return await predict(request, service, model_name)


@router.post("/{model_name}/versions/{model_version}:predict",
             dependencies=[API_KEY], summary="Classify images with one version",
             **PREDICT_DOC)
async def tfs_version_predict(request: Request, service: Service, model_name: ModelName,
                              model_version: Version) -> JSONResponse:
    return await predict(request, service, model_name, model_version)


async def predict(request: Request, service: Service, model_name: str,
                  model_version: str | None = None) -> JSONResponse:
    service.model_named(model_name, model_version)
    body = await request_body(request)
    deadline = service.batcher.deadline()  # INFERENCE_TIMEOUT_S counts from here: parsing and decoding wait too
    call = await service.off_loop(deadline, len(body), read_predict_request, body,
                                  Limits.from_settings(service.settings))
    answer = await service.classify_inputs(call.inputs, call.level, deadline)
    return JSONResponse(predict_response(call, answer.probabilities))


def status(service: Service, model_name: str, model_version: str | None = None) -> ModelStatus:
    model = service.model_named(model_name, model_version)
    state = "UNLOADING" if service.stopping.is_set() else "AVAILABLE" if service.ready.is_set() else "LOADING"
    return model_status(model.version, state)


def metadata(service: Service, model_name: str, model_version: str | None = None) -> ModelMetadataResponse:
    model = service.model_named(model_name, model_version)
    return model_metadata(model.name, model.version, model.level_names)
