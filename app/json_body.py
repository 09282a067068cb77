"""JSON request bodies of the serving protocols, parsed within limits.

The body itself is already capped at MAX_UPLOAD_BYTES by the middleware; what these limits add is that
the Python objects parsed from it stay small too. A JSON array of ten million ``0``s fits in 20 MB of
text but would take 80 MB as a Python list, so the values are counted in the text (its commas: every
value but the last of each array or object is followed by one) before anything is parsed. Nesting is
bounded twice: json's own recursion guard stops absurd depths while parsing (a ``RecursionError``,
refused here), and the depth of what parsed is then checked against ``max_depth``, since no request
of either protocol nests deeper than a tensor of images inside its envelope.
"""

import json
import re
from typing import Any

import numpy as np

from app.errors import BadRequestError

# A JSON string, escapes included (the unrolled form: linear on text that json has already accepted).
JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
BRACKETS = b"[]{}"
NOT_BRACKETS = bytes(set(range(256)) - set(BRACKETS))


def parse_json(text: bytes, max_values: int, max_depth: int) -> Any:
    """``text`` parsed, or :class:`BadRequestError`: 413 when it holds more than ``max_values`` values, 400
    when it is not JSON or nests deeper than ``max_depth`` arrays and objects."""
    if not text.strip():
        raise BadRequestError("The request body is empty: send a JSON object.")
    values = text.count(b",") + 1
    if values > max_values:
        raise BadRequestError(f"The JSON body holds about {values:,} values; this server reads at most "
                              f"{max_values:,} in one request. Send fewer images per request.", status=413)
    try:
        parsed = json.loads(text)
    except RecursionError:
        raise BadRequestError(f"The JSON body nests arrays or objects too deeply (the limit is {max_depth}).") from None
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8/16/32
        raise BadRequestError(f"The request body is not valid JSON ({_short(error)}).") from None
    # Nesting is no deeper than the count of opening brackets, so a small envelope needs no scan: the
    # scan's fixed cost was 6% of the event loop's time per /v2 request of one binary image.
    if text.count(b"[") + text.count(b"{") > max_depth:
        depth = json_depth(text)
        if depth > max_depth:
            raise BadRequestError(f"The JSON body nests arrays or objects {depth} deep; the limit is {max_depth}.")
    return parsed


def json_depth(text: bytes) -> int:
    """The deepest nesting of arrays and objects in ``text``, valid JSON (brackets inside strings ignored)."""
    brackets = np.frombuffer(JSON_STRING.sub(b"", text).translate(None, NOT_BRACKETS), dtype=np.uint8)
    if not brackets.size:
        return 0
    opening = (brackets == ord("[")) | (brackets == ord("{"))
    return int(np.cumsum(np.where(opening, 1, -1), dtype=np.int32).max())


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:160] if str(error) else type(error).__name__
