"""The accuracy levels one served model offers, and which signature computes a batch of each.

A model exported with levels (core.contract.LEVELS) lists them in metadata.json with their figures,
and the batch sizes at which its bfloat16 signatures measured faster than float32 while keeping
every level's accuracy. bfloat16 is used only on a CPU with bfloat16 instructions (AVX512-BF16 or
AMX): elsewhere TensorFlow would emulate it, slower than float32, so such a CPU gets float32 by itself.
A model exported before levels existed offers one level, its ``serving_default``.
"""

import bisect
from dataclasses import dataclass, field
from typing import Any

from core.contract import (
    BFLOAT16,
    DEFAULT_LEVEL,
    FLOAT32,
    LEVEL_NAMES,
    SIGNATURE_NAME,
    TTA_NAMES,
    level_for_tta,
    level_signature,
)


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
    cpu_flags: frozenset[str] | None = None  # None: this machine's (tests pass a CPU's flags to try another)


MODEL_LEVELS = LevelSettings()  # the model's own default level, bfloat16 where the CPU has it


@dataclass(frozen=True)
class LevelTable:
    default: str
    figures: dict[str, dict[str, Any]]  # level -> its metadata.json entry (accuracy, ECE, images/s, ...)
    timed_batch_sizes: tuple[int, ...] = ()
    bfloat16_batch_sizes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # empty: float32 only
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

    def precision(self, level: str, batch_size: int) -> str:
        """float32 or bfloat16 for a batch of ``batch_size``: the choice measured at the largest timed size
        not above it (below the smallest timed size, the smallest's)."""
        chosen = self.bfloat16_batch_sizes.get(level, ())
        if not chosen or not self.timed_batch_sizes:
            return FLOAT32
        index = max(0, bisect.bisect_right(self.timed_batch_sizes, batch_size) - 1)
        return BFLOAT16 if self.timed_batch_sizes[index] in chosen else FLOAT32

    def signature(self, level: str, batch_size: int) -> str:
        if self.legacy:
            return SIGNATURE_NAME
        return level_signature(level, self.precision(level, batch_size))

    def signatures(self) -> set[str]:
        """Every signature this table may call."""
        if self.legacy:
            return {SIGNATURE_NAME}
        names = {level_signature(level) for level in self.names}
        names |= {level_signature(level, BFLOAT16) for level, sizes in self.bfloat16_batch_sizes.items() if sizes}
        return names


def level_table(metadata: dict[str, Any], bfloat16: bool, default: str | None = None) -> LevelTable:
    """The levels metadata.json describes; bfloat16 batch sizes only if ``bfloat16`` (the CPU has it and the
    settings allow it). ``default`` overrides the model's default level; it must be one the model offers."""
    levels = metadata.get("levels")
    if not isinstance(levels, dict) or not levels:
        only = level_for_tta(metadata["tta"]) if metadata.get("tta") in TTA_NAMES else DEFAULT_LEVEL
        figures = {only: {key: metadata[key] for key in ("val_accuracy", "val_ece") if key in metadata}}
        table = LevelTable(default=only, figures=figures, legacy=True)
    else:
        figures = {name: levels[name] for name in LEVEL_NAMES if name in levels}
        precision = metadata.get("precision") or {}
        timed = tuple(sorted(int(size) for size in precision.get("timed_batch_sizes", [])))
        chosen = {name: tuple(int(size) for size in sizes)
                  for name, sizes in (precision.get("bfloat16_batch_sizes") or {}).items()} if bfloat16 else {}
        table = LevelTable(default=str(metadata.get("default_level") or DEFAULT_LEVEL), figures=figures,
                           timed_batch_sizes=timed, bfloat16_batch_sizes=chosen)
    if default is not None:
        table = LevelTable(default=table.resolve(default), figures=table.figures,
                           timed_batch_sizes=table.timed_batch_sizes,
                           bfloat16_batch_sizes=table.bfloat16_batch_sizes, legacy=table.legacy)
    return table
