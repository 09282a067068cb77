"""The accuracy levels one served model offers, and the precision each level runs in.

A model exported with levels (core.contract.LEVELS) lists them in metadata.json with their figures, one
float32 signature per level in its SavedModel and, since the OpenVINO runtime, the precision the export
chose per level for OpenVINO (metadata.json ``openvino.precision``: bfloat16 or int8 only where it measured
faster with accuracy and ECE at most 0.1 points worse than float32). bfloat16 is used only on a CPU with bfloat16
instructions (AVX512-BF16 or AMX) and when the settings allow it; int8 (a quantized IR, which OpenVINO runs on
any x86 CPU) when the settings allow it; every other level runs in float32.
A model exported before levels offers one level, its ``serving_default``.
"""

import re
from dataclasses import dataclass, field, replace
from typing import Any

from core.contract import (
    BFLOAT16,
    DEFAULT_LEVEL,
    FLOAT32,
    INT8,
    LEVEL_NAMES,
    SIGNATURE_NAME,
    TTA_NAMES,
    level_for_tta,
    level_signature,
)

# metadata.json's section written by training/openvino_export.py: IR files, precision and figures per level.
OPENVINO_SECTION = "openvino"
# In it: IR file -> its sha256 (written by core.openvino_runtime.ir_digests, checked by core.versions.check_ir_files).
IR_SHA256_KEY = "sha256"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class LevelTableError(ValueError):
    """metadata.json describes levels the service cannot serve (wrong types, no known level, a default level it
    does not offer): the message says which key."""


# Figures a level may carry, with the types /metadata shows them as (app.schemas.LevelFigures), and in words.
FIGURE_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "views": ((int,), "a whole number"), "description": ((str,), "text"), "val_accuracy": ((int, float), "a number"),
    "val_ece": ((int, float), "a number"), "images_per_second": ((dict,), "an object of numbers")}


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_levels(metadata: dict[str, Any]) -> None:
    """LevelTableError unless metadata.json's ``levels``, ``default_level`` and ``openvino`` sections have the
    shapes level_table reads: else a bad value surfaced as a TypeError at start-up, or as a 500 from /metadata
    after a swap, or a default level the model lacks answered every request without ``?level=`` with 422."""
    levels = metadata["levels"]
    known = [name for name in LEVEL_NAMES if name in levels]
    if not known:
        raise LevelTableError(f"'levels' names none of {', '.join(LEVEL_NAMES)} (it has {', '.join(levels)})")
    for name in known:
        figures = levels[name]
        if not isinstance(figures, dict):
            raise LevelTableError(f"'levels.{name}' must be an object of figures, not {figures!r}")
        for key, (kinds, in_words) in FIGURE_TYPES.items():
            value = figures.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds) or (
                    isinstance(value, dict) and not all(map(is_number, value.values())))):
                raise LevelTableError(f"'levels.{name}.{key}' is {value!r}: it must be {in_words}")
    default = metadata.get("default_level")
    if default is not None and default not in known:
        raise LevelTableError(f"'default_level' is {default!r}, but the levels are {', '.join(known)}")
    check_openvino_section(metadata)


def check_openvino_section(metadata: dict[str, Any]) -> None:
    """LevelTableError unless the ``openvino`` section, where there is one, has the shape level_table and
    core.versions.check_ir_files read (a model exported before levels is checked too: its IR is read)."""
    openvino = metadata.get(OPENVINO_SECTION)
    if openvino is None:
        return
    if not isinstance(openvino, dict):
        raise LevelTableError(f"'{OPENVINO_SECTION}' must be an object, not {openvino!r}")
    for key in ("precision", "levels"):
        if not isinstance(openvino.get(key) or {}, dict):
            raise LevelTableError(f"'{OPENVINO_SECTION}.{key}' must be an object, not {openvino[key]!r}")
    for name, precision in (openvino.get("precision") or {}).items():
        if not isinstance(precision, str):
            raise LevelTableError(f"'{OPENVINO_SECTION}.precision.{name}' must be a precision's name, not "
                                  f"{precision!r}")
    for name, measured in (openvino.get("levels") or {}).items():
        if not isinstance(measured, dict) or not all(isinstance(entry, dict) for entry in measured.values()):
            raise LevelTableError(f"'{OPENVINO_SECTION}.levels.{name}' must map each precision to its figures")
    digests = openvino.get(IR_SHA256_KEY)
    if digests is not None and not (isinstance(digests, dict) and all(
            isinstance(value, str) and SHA256_HEX.fullmatch(value) for value in digests.values())):
        raise LevelTableError(f"'{OPENVINO_SECTION}.{IR_SHA256_KEY}' must map each IR file to its sha256 "
                              "(64 hexadecimal digits)")


class UnknownLevelError(ValueError):
    """A request named a level this model does not offer."""

    def __init__(self, level: str, offered: tuple[str, ...]) -> None:
        super().__init__(f"Unknown level {level!r}: this model offers {', '.join(repr(n) for n in offered)}.")
        self.level, self.offered = level, offered


@dataclass(frozen=True)
class LevelSettings:
    """What the service's settings say about levels, applied to every model it loads."""

    default_level: str | None = None  # None: the model's own default
    allow_bfloat16: bool = True
    allow_int8: bool = True
    cpu_flags: frozenset[str] | None = None  # None: this machine's (tests pass a CPU's flags to try another)


MODEL_LEVELS = LevelSettings()  # the model's own default level, the export's precisions where the CPU has them
FLOAT32_LEVELS = LevelSettings(allow_bfloat16=False, allow_int8=False)  # every level in float32: parity checks


@dataclass(frozen=True)
class LevelTable:
    default: str
    figures: dict[str, dict[str, Any]]  # level -> its metadata.json entry, with the served precision's figures
    reduced_precision: dict[str, str] = field(default_factory=dict)  # level -> bfloat16 or int8; others float32
    legacy: bool = False  # exported before levels: its one level is serving_default

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.figures)

    def resolve(self, level: str | None) -> str:
        """``level``, or the default when None; :class:`UnknownLevelError` if the model lacks it."""
        if level is None:
            return self.default
        if level not in self.figures:
            raise UnknownLevelError(level, self.names)
        return level

    def precision(self, level: str) -> str:
        """float32, bfloat16 or int8: what ``level`` computes in on this CPU under these settings."""
        return self.reduced_precision.get(level, FLOAT32)

    def signature(self, level: str) -> str:
        """The SavedModel signature that computes ``level`` in float32 (what OpenVINO converts)."""
        return SIGNATURE_NAME if self.legacy else level_signature(level)

    def signatures(self) -> set[str]:
        """Every signature this table may convert."""
        return {self.signature(level) for level in self.names}


def served_figures(level: dict[str, Any], measured: dict[str, dict[str, Any]], precision: str) -> dict[str, Any]:
    """A level's metadata.json entry with the accuracy, ECE and images/s the OpenVINO export measured in the
    precision it is served in (``measured``: its ``openvino.levels`` entry, by precision). The entry's own
    figures are TensorFlow's float32 ones; without OpenVINO figures for ``precision`` they stand."""
    served = {key: value for key, value in (measured.get(precision) or {}).items()
              if key in ("val_accuracy", "val_ece", "images_per_second")}
    return {**level, **served, "precision": precision}


def level_table(metadata: dict[str, Any], bfloat16: bool, int8: bool = True, default: str | None = None) -> LevelTable:
    """The levels metadata.json describes; bfloat16 levels only if ``bfloat16`` (the CPU has it and the
    settings allow it), int8 levels only if ``int8`` (the settings allow it). ``default`` overrides the model's
    default level; it must be one the model offers."""
    levels = metadata.get("levels")
    if not isinstance(levels, dict) or not levels:
        only = level_for_tta(metadata["tta"]) if metadata.get("tta") in TTA_NAMES else DEFAULT_LEVEL
        figures = {only: {**{key: metadata[key] for key in ("val_accuracy", "val_ece") if key in metadata},
                          "precision": FLOAT32}}
        check_openvino_section(metadata)
        table = LevelTable(default=only, figures=figures, legacy=True)
    else:
        check_levels(metadata)
        openvino = metadata.get(OPENVINO_SECTION) or {}
        usable = {BFLOAT16: bfloat16, INT8: int8}
        reduced = {name: precision for name, precision in (openvino.get("precision") or {}).items()
                   if name in levels and usable.get(precision)}
        figures = {name: served_figures(levels[name], (openvino.get("levels") or {}).get(name) or {},
                                        reduced.get(name, FLOAT32))
                   for name in LEVEL_NAMES if name in levels}
        default_level = metadata.get("default_level") or (DEFAULT_LEVEL if DEFAULT_LEVEL in figures else next(
            iter(figures)))
        table = LevelTable(default=default_level, figures=figures, reduced_precision=reduced)
    if default is not None:
        table = replace(table, default=table.resolve(default))
    return table
