"""HTTP routes: thin, they hand work to ClassifierService and let app.errors map failures.

Three routers: ``predict_router`` for every route that classifies or explains an image (it needs an API key
when API_KEYS_FILE is set: app/access.py), ``router`` for what stays open (health, metadata) and
``metrics_router`` for /metrics (on PORT, or on METRICS_PORT instead). A new classifying route goes on
``predict_router``, or carries ``dependencies=[API_KEY]`` if it lives on a router of its own;
tests/test_access.py fails for any POST route without it.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.access import API_KEY
from app.errors import BodyTooLargeError
from app.schemas import (
    BatchPrediction,
    ClassName,
    ErrorMessage,
    ExplainedPrediction,
    Health,
    Metadata,
    Prediction,
    ServingLimits,
)
from app.service import ClassifierService
from app.settings import Settings
from app.uploads import BATCH_FORM, EXPLAIN_FORM, PREDICT_FORM
from core.contract import IMAGE_SIZE, LEVELS, LevelName
from core.preprocessing import (
    ACCEPTED_FORMATS,
    ACCEPTED_FORMATS_TEXT,
    ALLOWED_FORMATS,
    ALLOWED_MEDIA_TYPES,
    DEFAULT_MAX_PIXELS,
    EmptyImageError,
    TooManyPixelsError,
    UndecodableImageError,
    UnsupportedFormatError,
)

router = APIRouter()
predict_router = APIRouter(dependencies=[API_KEY])
metrics_router = APIRouter()


async def get_service(request: Request) -> ClassifierService:
    # async: a plain function dependency would cost a thread-pool hop on every request
    return request.app.state.service


Service = Annotated[ClassifierService, Depends(get_service)]
Preview = Annotated[bool, Query(description="Also return the 32x32 image the model saw, as a PNG data URL.")]
LEVEL_TRADE_OFF = (
    "Accuracy level: how many test-time views of the image the model averages. More views, more accurate, slower. "
    + "; ".join(f"`{level.name}`: {level.views} view{'s' if level.views > 1 else ''}, {level.description}"
                for level in LEVELS)
    + ". Omitted: the server's default level (DEFAULT_LEVEL if set, else the model's own; under heavy load the "
    "server may answer such requests at a cheaper level, and `model.level` in the answer says which). A level "
    "named here is always kept. Which level is the default, and the served model's accuracy and speed at each: "
    "GET /metadata, `levels`."
)
Level = Annotated[LevelName | None, Query(description=LEVEL_TRADE_OFF)]


def _errors(*statuses: int) -> dict[int | str, dict]:
    descriptions = {
        400: f"A {ACCEPTED_FORMATS_TEXT} file that is empty, truncated or cannot be decoded, or a malformed "
             "multipart body.",
        408: "The request body did not arrive within the read deadline.",
        413: "Body over the byte limit, image over the pixel limit, or too many files.",
        415: f"Not an image in a format the service takes ({', '.join(ACCEPTED_FORMATS)}), told by the file's "
             "first bytes, whatever its name or declared type: a text file, a PDF, an ICO…",
        422: "The form field is missing or repeated, or a query parameter is invalid (an unknown `level` is "
             "answered with the list of valid ones).",
        503: "Model warming up, queue full, the batching worker failed (restarted at once), or (/explain) as "
             "many explanations running as the server allows; see Retry-After.",
        504: "No answer from the model within INFERENCE_TIMEOUT_S (queue and computation).",
    }
    # The very messages the code sends (built by the same classes), so the docs and the code cannot differ.
    examples = {
        400: {"empty file": EmptyImageError(),
              "broken PNG": UndecodableImageError("it starts like a PNG file, but its data is broken")},
        413: {"body over the limit": BodyTooLargeError(Settings.model_fields["max_upload_bytes"].default),
              "too many pixels": TooManyPixelsError(DEFAULT_MAX_PIXELS, 9000, 6000)},
        415: {"text or unknown bytes": UnsupportedFormatError(None), "PDF": UnsupportedFormatError("PDF")},
    }
    responses: dict[int | str, dict] = {}
    for status in statuses:
        responses[status] = {"model": ErrorMessage, "description": descriptions[status]}
        if status in examples:
            responses[status]["content"] = {"application/json": {"examples": {
                name: {"value": {"detail": getattr(error, "message", None) or str(error.detail)}}
                for name, error in examples[status].items()}}}
    return responses


IMAGE_ERRORS = _errors(400, 408, 413, 415, 422, 503, 504)


# The images come from app.uploads, not from FastAPI's File(): the cheaper way through the event loop.
@predict_router.post("/predict", response_model=Prediction, responses=IMAGE_ERRORS, tags=["predict"],
                     summary="Classify one image", openapi_extra=PREDICT_FORM.openapi_extra)
async def predict(request: Request, service: Service, preview: Preview = False, level: Level = None) -> Prediction:
    upload = await PREDICT_FORM.read_one(request)
    return await service.predict(upload.data, preview, level)


@predict_router.post("/predict/batch", response_model=BatchPrediction, responses=IMAGE_ERRORS, tags=["predict"],
                     summary="Classify several images; each file succeeds or fails on its own",
                     openapi_extra=BATCH_FORM.openapi_extra)
async def predict_batch(request: Request, service: Service, preview: Preview = False,
                        level: Level = None) -> BatchPrediction:
    return await service.predict_batch(await BATCH_FORM.read(request), preview, level)


EXPLAIN_DESCRIPTION = """Where the model looked: the image's prediction at the `fast` level, plus an occlusion map of
the predicted class (or `label`). A square of 8x8 model pixels is hidden at a time, every 6 pixels (25 copies, run with
the original as one batch of 26); each pixel's number is the mean drop in the class's probability when a square
covering it is hidden. `explanation.overlay` draws the map over the 32x32 image as a PNG data URL. At most
MAX_CONCURRENT_EXPLANATIONS run at once; beyond that 503 with Retry-After."""


@predict_router.post("/explain", response_model=ExplainedPrediction, responses=IMAGE_ERRORS, tags=["predict"],
                     summary="Classify one image and show where the model looked", description=EXPLAIN_DESCRIPTION,
                     openapi_extra=EXPLAIN_FORM.openapi_extra)
async def explain(
    request: Request,
    service: Service,
    label: Annotated[ClassName | None, Query(description="The class to explain (default: the predicted one).")]
    = None,
    preview: Preview = False,
) -> ExplainedPrediction:
    upload = await EXPLAIN_FORM.read_one(request)
    return await service.explain(upload.data, label, preview)


@router.get("/livez", response_model=Health, tags=["health"], summary="The process is alive")
async def livez() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health,
            responses={503: {"model": Health, "description": "Warming up, or stopping (SIGTERM received)."}},
            tags=["health"], summary="The model is loaded and warmed up, and the service is not stopping")
async def readyz(service: Service) -> JSONResponse:
    if service.stopping.is_set():
        return JSONResponse({"status": "stopping"}, status_code=503)
    ready = service.ready.is_set()
    return JSONResponse({"status": "ok" if ready else "warming up"}, status_code=200 if ready else 503)


@router.get("/metadata", response_model=Metadata, tags=["model"], summary="The model's metadata and serving limits")
async def metadata(service: Service) -> Metadata:
    settings = service.settings
    model = service.served.current
    return Metadata(
        model={**model.metadata, "version": model.version},
        levels=service.level_figures(),
        serving=ServingLimits(
            max_upload_bytes=settings.max_upload_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_batch_files=settings.max_batch_files,
            accepted_formats=sorted(ALLOWED_FORMATS),
            accepted_media_types=list(ALLOWED_MEDIA_TYPES),
            image_size=IMAGE_SIZE,
            max_batch_size=settings.max_batch_size,
            max_batch_delay_ms=settings.max_batch_delay_ms,
            max_queue_images=settings.max_queue_images,
            adapt_queue_images=settings.adapt_queue_images,
            adapt_level=settings.adapt_level,
            api_key_required=settings.api_keys_file is not None,
        ),
    )


@metrics_router.get("/metrics", response_class=PlainTextResponse, tags=["health"], summary="Prometheus metrics")
async def metrics(service: Service) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
