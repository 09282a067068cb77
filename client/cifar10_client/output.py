"""What ``cifar10-client predict`` prints: one line per file on stdout (table, JSON or CSV), written
in the order the files were given as soon as each is known, and a progress bar on stderr."""

import csv
import json
import time
from typing import TextIO

from cifar10_client.client import FileResult
from cifar10_client.errors import APIError, ClientError, UnreadableFile
from cifar10_client.models import as_json

# The file column of the table grows with the longest name up to this, then rows simply run longer.
MAX_FILE_COLUMN = 60
LABEL_COLUMN = 10
# A JSON row holds the service's answer but the sorted `top` (the same numbers again), `preview` and an
# explanation's map (its overlay PNG is written to a file, named in `overlay_file`).
JSON_FIELDS = ("label", "confidence", "probabilities", "model", "ood_score", "in_distribution", "overlay_file")


def error_text(error: ClientError) -> str:
    """The reason alone: the row already names the file."""
    if isinstance(error, APIError):
        return f"{error.status} {error.detail}"
    if isinstance(error, UnreadableFile):
        return error.reason
    return str(error)


class TableWriter:
    def __init__(self, stream: TextIO, names: list[str]) -> None:
        self.stream = stream
        self.width = min(MAX_FILE_COLUMN, max((len(name) for name in names), default=4))

    def begin(self) -> None:
        self.stream.write(f"{'file':<{self.width}}  {'label':<{LABEL_COLUMN}}  confidence\n")

    def row(self, result: FileResult) -> None:
        start = f"{result.source:<{self.width}}  "
        if result.prediction is not None:
            line = f"{start}{result.prediction.label:<{LABEL_COLUMN}}  {result.prediction.confidence:>10.3f}"
        else:
            assert result.error is not None
            line = f"{start}{'ERROR':<{LABEL_COLUMN}}  {error_text(result.error)}"
        self.stream.write(line + "\n")

    def end(self) -> None:
        pass


class JsonWriter:
    """One JSON array, written element by element so a long run streams (and stays valid if cut short
    by an unreachable service: ``end`` closes it)."""

    def __init__(self, stream: TextIO, names: list[str]) -> None:
        self.stream = stream
        self.first = True

    def begin(self) -> None:
        self.stream.write("[")

    def row(self, result: FileResult) -> None:
        if result.prediction is not None:
            answer = as_json(result.prediction)
            item = {"file": result.source, **{key: answer[key] for key in JSON_FIELDS if key in answer}}
        else:
            assert result.error is not None
            status = result.error.status if isinstance(result.error, APIError) else None
            item = {"file": result.source, "error": error_text(result.error), "status": status}
        self.stream.write(("\n" if self.first else ",\n") + json.dumps(item))
        self.first = False

    def end(self) -> None:
        self.stream.write("\n]\n" if not self.first else "]\n")


class CsvWriter:
    def __init__(self, stream: TextIO, names: list[str]) -> None:
        self.writer = csv.writer(stream, lineterminator="\n")

    def begin(self) -> None:
        self.writer.writerow(["file", "label", "confidence", "error"])

    def row(self, result: FileResult) -> None:
        if result.prediction is not None:
            self.writer.writerow([result.source, result.prediction.label, result.prediction.confidence, ""])
        else:
            assert result.error is not None
            self.writer.writerow([result.source, "", "", error_text(result.error)])

    def end(self) -> None:
        pass


WRITERS = {"table": TableWriter, "json": JsonWriter, "csv": CsvWriter}
Writer = TableWriter | JsonWriter | CsvWriter


class Progress:
    """``[#######.............]  35/100 files  31.2/s  1 failed`` on one stderr line, redrawn at most
    ten times a second; ``clear`` wipes it before a result line goes to the same terminal."""

    BAR = 30
    REDRAW_S = 0.1

    def __init__(self, stream: TextIO, total: int, enabled: bool) -> None:
        self.stream, self.total, self.enabled = stream, total, enabled
        self.done = self.failed = 0
        self.started = time.monotonic()
        self.drawn_at = 0.0

    def advance(self, result: FileResult) -> None:
        self.done += 1
        self.failed += not result.ok
        now = time.monotonic()
        if self.enabled and (now - self.drawn_at >= self.REDRAW_S or self.done == self.total):
            self.draw(now)

    def draw(self, now: float) -> None:
        filled = self.BAR * self.done // max(self.total, 1)
        rate = self.done / max(now - self.started, 1e-9)
        failed = f"  {self.failed} failed" if self.failed else ""
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.BAR - filled)}]  {self.done}/{self.total} files  "
                          f"{rate:.1f}/s{failed}\x1b[K")
        self.stream.flush()
        self.drawn_at = now

    def clear(self) -> None:
        if self.enabled and self.drawn_at:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn_at = 0.0

    def finish(self) -> None:
        if self.enabled:
            self.draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
