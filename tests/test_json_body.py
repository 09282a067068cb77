"""app.json_body.parse_json's depth limit at its edges, in process: the count of opening brackets only
decides whether the depth is scanned, never what is refused."""

import json

import pytest

from app.errors import BadRequestError
from app.json_body import json_depth, parse_json

MAX_VALUES = 1_000


def nested(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


@pytest.mark.parametrize("depth", [1, 9, 10])
def test_nesting_up_to_the_limit_is_accepted(depth: int) -> None:
    assert json_depth(nested(depth)) == depth
    assert parse_json(nested(depth), MAX_VALUES, max_depth=10) == json.loads(nested(depth))


@pytest.mark.parametrize("depth", [11, 40])
def test_nesting_past_the_limit_is_refused_with_its_depth(depth: int) -> None:
    with pytest.raises(BadRequestError, match=f"nests arrays or objects {depth} deep; the limit is 10"):
        parse_json(nested(depth), MAX_VALUES, max_depth=10)


def test_many_shallow_brackets_and_brackets_in_strings_are_scanned_and_accepted() -> None:
    text = json.dumps({"a": [[1], [2], [3], [4], [5], [6]], "b": "[[[[[[[[[[[[{{{{", "c": [{"d": []}] * 4}).encode()
    assert text.count(b"[") + text.count(b"{") > 10  # past the shortcut: the depth is really scanned
    assert parse_json(text, MAX_VALUES, max_depth=4) == json.loads(text)
    with pytest.raises(BadRequestError, match="4 deep; the limit is 3"):
        parse_json(text, MAX_VALUES, max_depth=3)
