"""The service's answers as typed objects, mirroring the response models in app/schemas.py.

Plain dataclasses, so the client needs httpx alone. Keys a newer service adds are kept in ``extra``
instead of being refused, so this client keeps working against a service that has grown.
"""

import base64
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Self

JSON = dict[str, Any]


def _split(cls: type, data: JSON) -> tuple[JSON, JSON]:
    """``data``'s keys that are fields of ``cls``, and the rest (what a newer service added)."""
    names = {item.name for item in fields(cls)} - {"extra"}
    known = {key: value for key, value in data.items() if key in names}
    extra = {key: value for key, value in data.items() if key not in names}
    return known, extra


def as_json(value: Any) -> Any:
    """A result back in the service's JSON shape, the keys this client does not know included."""
    if is_dataclass(value) and not isinstance(value, type):
        data = {item.name: as_json(getattr(value, item.name)) for item in fields(value) if item.name != "extra"}
        return {**data, **getattr(value, "extra", {})}
    if isinstance(value, list):
        return [as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class ClassProbability:
    label: str
    probability: float
    extra: JSON = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        known, extra = _split(cls, data)
        return cls(label=str(known["label"]), probability=float(known["probability"]), extra=extra)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    level: str | None = None  # the accuracy level that answered (None from a server before levels)
    extra: JSON = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        known, extra = _split(cls, data)
        level = known.get("level")
        return cls(name=str(known["name"]), version=known["version"], level=None if level is None else str(level),
                   extra=extra)


@dataclass(frozen=True)
class Prediction:
    """One image's answer from ``POST /predict``."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    top: list[ClassProbability]
    model: ModelInfo
    preview: str | None = None
    # "None of these": higher means less like the ten classes; in_distribution False when over the server's
    # threshold, None when it has none (or from a server before the score).
    ood_score: float | None = None
    in_distribution: bool | None = None
    extra: JSON = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        known, extra = _split(cls, data)
        return cls(**_prediction_fields(known), extra=extra)


def _prediction_fields(known: JSON) -> JSON:
    score, inside = known.get("ood_score"), known.get("in_distribution")
    return {
        "label": str(known["label"]),
        "confidence": float(known["confidence"]),
        "probabilities": {str(label): float(value) for label, value in known["probabilities"].items()},
        "top": [ClassProbability.from_json(item) for item in known["top"]],
        "model": ModelInfo.from_json(known["model"]),
        "preview": known.get("preview"),
        "ood_score": None if score is None else float(score),
        "in_distribution": None if inside is None else bool(inside),
    }


@dataclass(frozen=True)
class Explanation:
    """Where the model looked (``POST /explain``): a 32x32 occlusion map of ``label`` and it drawn as a PNG."""

    label: str
    method: str
    patch: int
    stride: int
    map: list[list[float]]  # 32 rows of 32: the mean drop in label's probability when that area is hidden
    overlay: str  # PNG data URL
    legend: str
    extra: JSON = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        known, extra = _split(cls, data)
        return cls(label=str(known["label"]), method=str(known["method"]), patch=int(known["patch"]),
                   stride=int(known["stride"]), map=[[float(v) for v in row] for row in known["map"]],
                   overlay=str(known["overlay"]), legend=str(known["legend"]), extra=extra)

    def overlay_png(self) -> bytes:
        """The overlay's PNG bytes, ready to write to a .png file."""
        header, _, payload = self.overlay.partition(",")
        if header != "data:image/png;base64":
            raise ValueError(f"the overlay is not a PNG data URL ({header[:40]!r})")
        return base64.b64decode(payload, validate=True)


@dataclass(frozen=True)
class ExplainedPrediction(Prediction):
    """``POST /explain``: the prediction at the fast level, and its explanation."""

    explanation: Explanation | None = None

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        known, extra = _split(cls, data)
        return cls(**_prediction_fields(known), explanation=Explanation.from_json(known["explanation"]), extra=extra)


@dataclass(frozen=True)
class Health:
    """``GET /readyz``: ``status`` is "ok" once the model is loaded and warm."""

    status: str
    extra: JSON = field(default_factory=dict, repr=False)

    @property
    def ready(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        known, extra = _split(cls, data)
        return cls(status=str(known["status"]), extra=extra)


@dataclass(frozen=True)
class ServingLimits:
    max_upload_bytes: int
    max_image_pixels: int
    max_batch_files: int
    accepted_formats: list[str]
    accepted_media_types: list[str]
    image_size: int
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue_images: int
    # load adaptation's threshold (images waiting or being computed); 0 (or a server before levels): off
    adapt_queue_images: int = 0
    adapt_level: str | None = None
    api_key_required: bool = False  # the prediction routes need an API key (a server before keys: never)
    extra: JSON = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        known, extra = _split(cls, data)
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class Metadata:
    """``GET /metadata``: the model's metadata.json (free-form, plus the served ``version``), its accuracy
    levels (each with its figures) and the limits."""

    model: JSON
    serving: ServingLimits
    levels: list[JSON] = field(default_factory=list)  # empty from a server before levels
    extra: JSON = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        known, extra = _split(cls, data)
        return cls(model=dict(known["model"]), serving=ServingLimits.from_json(known["serving"]),
                   levels=[dict(level) for level in known.get("levels", [])], extra=extra)
