"""The service's answers as typed objects, mirroring the response models in app/schemas.py.

Plain dataclasses, so the client needs httpx alone. Keys a newer service adds are kept in ``extra``
instead of being refused, so this client keeps working against a service that has grown.
"""

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
    extra: JSON = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        known, extra = _split(cls, data)
        return cls(
            label=str(known["label"]),
            confidence=float(known["confidence"]),
            probabilities={str(label): float(value) for label, value in known["probabilities"].items()},
            top=[ClassProbability.from_json(item) for item in known["top"]],
            model=ModelInfo.from_json(known["model"]),
            preview=known.get("preview"),
            extra=extra,
        )


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
    adapt_queue_images: int = 0  # load adaptation's queue depth; 0 (or a server before levels): off
    adapt_level: str | None = None
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
