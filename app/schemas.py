"""Response models: they document /docs and keep every answer in one shape."""

from typing import Literal, get_args

from pydantic import BaseModel, Field

from core.contract import CLASS_NAMES, IMAGE_SIZE
from core.preprocessing import UnsupportedFormatError


class ClassProbability(BaseModel):
    label: str = Field(examples=["cat"])
    probability: float = Field(ge=0.0, le=1.0, examples=[0.91])


class ModelInfo(BaseModel):
    name: str = Field(examples=["cifar10"])
    version: int = Field(examples=[1])
    level: str = Field(description="The accuracy level that computed this answer: the one asked for, else the "
                       "default, or the cheaper one load adaptation chose.", examples=["accurate"])


class Prediction(BaseModel):
    label: str = Field(description="The most probable class.", examples=["cat"])
    confidence: float = Field(ge=0.0, le=1.0, description="Probability of `label`.", examples=[0.91])
    probabilities: dict[str, float] = Field(
        description="All ten classes in CIFAR-10 order; the values sum to 1.",
        examples=[dict(zip(CLASS_NAMES, (0.01, 0.0, 0.02, 0.91, 0.01, 0.03, 0.01, 0.01, 0.0, 0.0), strict=True))],
    )
    top: list[ClassProbability] = Field(description="The ten classes, most probable first.")
    model: ModelInfo
    preview: str | None = Field(
        None, description="With ?preview=true: the 32x32 RGB image the model saw, as a PNG data URL."
    )
    ood_score: float = Field(
        description="How little the image looks like any of the ten classes, in (0, 1]: the model's own score "
        "where its export computes one (from the statistics of its deepest feature maps; versions 5-9: 1 / (1 + the "
        "norm of its penultimate features)), else 1 - the highest probability. Higher means less like them; "
        "`in_distribution` says where the model's threshold lies (docs/ood.md).", examples=[0.2])
    in_distribution: bool | None = Field(
        description="False when `ood_score` is above the threshold (fitted at export so that 95% of validation "
        "images are within it, or OOD_THRESHOLD): the image does not look like any of the ten classes. Null "
        "when the model has no fitted threshold and OOD_THRESHOLD is unset.", examples=[True])


# The ten class names as a type, so /openapi.json lists them for /explain's `label`.
ClassName = Literal["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
assert get_args(ClassName) == CLASS_NAMES


class Explanation(BaseModel):
    label: str = Field(description="The class explained: the predicted one, or the one asked for with ?label=.",
                       examples=["cat"])
    method: str = Field(description="How the map was computed.", examples=["occlusion"])
    patch: int = Field(description="Side of the square hidden at a time, in model pixels.", examples=[8])
    stride: int = Field(description="Step between hidden squares, in model pixels.", examples=[6])
    map: list[list[float]] = Field(
        description=f"{IMAGE_SIZE}x{IMAGE_SIZE} numbers, row by row over the image the model saw: the mean drop in "
        "`label`'s probability when a square covering that pixel is hidden (negative: hiding it made `label` "
        "more likely).", min_length=IMAGE_SIZE, max_length=IMAGE_SIZE)
    overlay: str = Field(description="The map over the 32x32 image, enlarged 4x, as a PNG data URL: red where "
                         "hiding the area lowers `label`'s probability most, blue where it changes little.")
    legend: str = Field(description="The overlay's colours in one sentence.")


class ExplainedPrediction(Prediction):
    explanation: Explanation


class FilePrediction(Prediction):
    filename: str | None = Field(None, description="The uploaded file's name, as the client sent it.")


class FileError(BaseModel):
    filename: str | None = Field(None, description="The uploaded file's name, as the client sent it.")
    status: int = Field(description="The HTTP status this file alone would have had.", examples=[415])
    detail: str = Field(examples=[UnsupportedFormatError("PDF").message])


class BatchPrediction(BaseModel):
    results: list[FilePrediction | FileError] = Field(description="One entry per file, in upload order.")


class ErrorMessage(BaseModel):
    detail: str = Field(examples=["The file is empty: send the bytes of an image."])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class ServingLimits(BaseModel):
    max_upload_bytes: int
    max_image_pixels: int
    max_batch_files: int
    accepted_formats: list[str]
    accepted_media_types: list[str]
    image_size: int
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue_images: int
    adapt_queue_images: int = Field(description="Images waiting or being computed above which load adaptation "
                                    "answers at `adapt_level`; 0: off.")
    adapt_level: str
    api_key_required: bool = Field(False, description="Whether the prediction routes need an API key "
                                   "(`Authorization: Bearer <key>` or `X-API-Key`).")


class LevelFigures(BaseModel):
    name: str = Field(examples=["accurate"])
    views: int | None = Field(None, description="Test-time views averaged per image.", examples=[6])
    description: str | None = None
    precision: str | None = Field(None, description="What this level computes in on this server: float32, "
                                  "bfloat16 or int8.", examples=["int8"])
    val_accuracy: float | None = Field(None, description="Validation accuracy of this level in its precision.",
                                       examples=[0.9178])
    val_ece: float | None = Field(None, description="Expected calibration error (15 bins) on validation, in this "
                                  "level's precision.")
    images_per_second: dict[str, float] | None = Field(
        None, description="In-process images/s at batch 1 and 64 in this level's precision, measured at export.")
    default: bool = Field(description="Answers requests that name no level.")


class Metadata(BaseModel):
    model: dict[str, object] = Field(
        description="The model's metadata.json as written by the training command, plus the served `version`."
    )
    levels: list[LevelFigures] = Field(description="The accuracy levels a request may ask for with `?level=`.")
    serving: ServingLimits
