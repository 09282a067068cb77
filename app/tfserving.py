"""TensorFlow Serving's REST API: predict bodies in, images out; answers, model status and metadata out.

The model's signatures are those of its SavedModel: ``serving_default`` (the server's default level) and
one per accuracy level (``fast``, ``balanced``, ``accurate``), each ``images`` uint8 ``[-1, 32, 32, 3]`` ->
``probabilities`` float ``[-1, 10]``; ``signature_name`` picks one. A request is in the row form
(``instances``: one entry per image) or the columnar form (``inputs``: the whole tensor), each image as
nested pixel numbers ``[32][32][3]`` or, as the API encodes binary values, ``{"b64": "..."}`` holding an
encoded image file (JPEG, PNG, ...) that is decoded as /predict decodes an upload. An instance may also
name the input: ``{"images": ...}``. The answer mirrors the form: ``predictions`` or ``outputs``.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.errors import BadRequestError
from app.image_inputs import IMAGE_SHAPE, SHAPE_TEXT, ImageInputs, Limits, b64_file, check_count, pixels_from_json
from app.json_body import parse_json
from app.open_inference import describe
from core.contract import INPUT_NAME, NUM_CLASSES, OUTPUT_NAME, SIGNATURE_NAME

B64 = "b64"
PREDICT_METHOD = "tensorflow/serving/predict"
IMAGE_TEXT = "an image: " + "".join(f"[{size}]" for size in IMAGE_SHAPE) + ' pixel numbers or {"b64": "<image file>"}'


class PredictRequest(BaseModel):
    model_config = ConfigDict(strict=True)
    signature_name: str | None = Field(None, description="serving_default (the server's default level), fast, "
                                       "balanced or accurate.", examples=["fast"])
    instances: list[Any] | None = Field(None, description="Row form: one image per entry, [32][32][3] pixel "
                                        'numbers or {"b64": "<base64 image file>"}, optionally as {"images": ...}.')
    inputs: list[Any] | dict[str, Any] | None = Field(None, description="Columnar form: the images tensor, or "
                                                      '{"images": tensor}.')


class PredictResponse(BaseModel):
    predictions: list[list[float]] | None = Field(None, description="Row-form answer: ten probabilities per image.")
    outputs: list[list[float]] | None = Field(None, description="Columnar-form answer.")


class VersionState(BaseModel):
    error_code: str = "OK"
    error_message: str = ""


class VersionStatus(BaseModel):
    version: str
    state: str = Field(examples=["AVAILABLE"])
    status: VersionState


class ModelStatus(BaseModel):
    model_version_status: list[VersionStatus]


class ModelSpec(BaseModel):
    name: str
    signature_name: str
    version: str


class ModelMetadataResponse(BaseModel):
    model_spec: ModelSpec
    metadata: dict[str, Any] = Field(description="`signature_def`: each signature's inputs and outputs.")


@dataclass(frozen=True)
class PredictCall:
    inputs: ImageInputs
    level: str | None
    columnar: bool


def read_predict_request(body: bytes, limits: Limits) -> PredictCall:
    """Parse and check a predict body; every fault is a BadRequestError (or TooManyImagesError)."""
    try:
        request = PredictRequest.model_validate(parse_json(body, limits.max_json_values, limits.max_json_depth))
    except ValidationError as error:
        raise BadRequestError(f"The predict request is not valid: {describe(error)}.") from None
    if (request.instances is None) == (request.inputs is None):
        raise BadRequestError("Send the images in 'instances' (row form) or in 'inputs' (columnar form): one of "
                              "the two, not both.")
    level = None if request.signature_name in (None, SIGNATURE_NAME) else request.signature_name
    if request.instances is not None:
        return PredictCall(images_from_rows(request.instances, limits), level, columnar=False)
    return PredictCall(images_from_columns(request.inputs, limits), level, columnar=True)


def images_from_rows(instances: list[Any], limits: Limits) -> ImageInputs:
    check_count(len(instances), limits)
    images = [named_input(instance, f"Instance {index}") for index, instance in enumerate(instances)]
    return images_of(images, "Instance", limits)


def images_from_columns(inputs: list[Any] | dict[str, Any], limits: Limits) -> ImageInputs:
    tensor = named_input(inputs, "'inputs'") if isinstance(inputs, dict) else inputs
    if isinstance(tensor, dict):  # one {"b64": ...}
        tensor = [tensor]
    if not isinstance(tensor, list):
        raise BadRequestError(f"'inputs' must hold a list of images, each {IMAGE_TEXT}.")
    check_count(len(tensor), limits)
    return images_of(tensor, "Image", limits)


def named_input(value: Any, where: str) -> Any:
    """``value`` itself, or its ``images`` entry when it names the input: ``{"images": ...}``."""
    if not isinstance(value, dict) or set(value) == {B64}:
        return value
    if set(value) != {INPUT_NAME}:
        names = ", ".join(repr(name) for name in value)
        raise BadRequestError(f"{where} names the inputs {names}; this model has one input, '{INPUT_NAME}', "
                              f"{IMAGE_TEXT}.")
    return value[INPUT_NAME]


def images_of(images: list[Any], what: str, limits: Limits) -> ImageInputs:
    """Images all given as {"b64": ...} (encoded files), or all as pixel numbers; ``what`` names one in errors."""
    for index, image in enumerate(images):
        if not isinstance(image, dict | list):
            kind = "a string" if isinstance(image, str) else "a number" if isinstance(image, int | float) else "empty"
            raise BadRequestError(f"{what} {index} is {kind}; each is {IMAGE_TEXT}.")
    encoded = [isinstance(image, dict) for image in images]
    if all(encoded):
        return ImageInputs(files=[b64_file(image.get(B64), f"Image {index}'s b64") for index, image in
                                  enumerate(images)])
    if any(encoded):
        raise BadRequestError('Send every image of a request the same way: all as {"b64": ...}, or all as '
                              f"pixel numbers, {SHAPE_TEXT}.")
    return ImageInputs(pixels=pixels_from_json(images, None, limits))


def predict_response(call: PredictCall, probabilities: np.ndarray) -> dict[str, Any]:
    rows = np.asarray(probabilities[:, :NUM_CLASSES], dtype=np.float32).tolist()
    return {"outputs": rows} if call.columnar else {"predictions": rows}


def model_status(version: int, state: str) -> ModelStatus:
    return ModelStatus(model_version_status=[VersionStatus(version=str(version), state=state,
                                                           status=VersionState())])


def model_metadata(name: str, version: int, levels: tuple[str, ...]) -> ModelMetadataResponse:
    """The signatures as TensorFlow Serving's metadata API shows a SavedModel's ``signature_def``."""
    def shape(*sizes: int) -> dict[str, Any]:
        return {"dim": [{"size": str(size), "name": ""} for size in sizes], "unknown_rank": False}

    def signature(name: str) -> dict[str, Any]:
        return {"inputs": {INPUT_NAME: {"dtype": "DT_UINT8", "tensor_shape": shape(-1, *IMAGE_SHAPE),
                                        "name": f"{name}_{INPUT_NAME}:0"}},
                "outputs": {OUTPUT_NAME: {"dtype": "DT_FLOAT", "tensor_shape": shape(-1, NUM_CLASSES),
                                          "name": "StatefulPartitionedCall:0"}},
                "method_name": PREDICT_METHOD}

    signatures = {name: signature(name) for name in (SIGNATURE_NAME, *levels)}
    return ModelMetadataResponse(model_spec=ModelSpec(name=name, signature_name="", version=str(version)),
                                 metadata={"signature_def": {"signature_def": signatures}})
