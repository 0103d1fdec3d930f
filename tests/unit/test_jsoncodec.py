"""hakuriver/jsoncodec.py: whatever encoder runs, the standard library reads back an equal value."""

from __future__ import annotations

import json

import pytest

from hakuriver import jsoncodec

VALUES = [
    {"command": ["python3", "-c", "print('é ✓')"], "env": {"A": "b"}},
    ["arg-\udcff-bytes that were not UTF-8"],  # surrogate-escaped argv: orjson refuses, json escapes
    {"big": 1 << 70, "negative": -(1 << 65)},  # beyond 64 bits
    {1: "int key", "s": [1.5, None, True]},
    [],
]


@pytest.mark.parametrize("value", VALUES)
def test_text_and_bytes_read_back_equal(value) -> None:
    expected = json.loads(json.dumps(value))
    assert json.loads(jsoncodec.dumps_text(value)) == expected
    assert json.loads(jsoncodec.dumps_bytes(value)) == expected
    assert jsoncodec.loads(jsoncodec.dumps_text(value)) == expected


def test_a_lone_surrogate_is_stored_as_an_escape_sqlite_can_hold() -> None:
    text = jsoncodec.dumps_text(["\udcff"])
    assert text.isascii()
    text.encode("utf-8")  # what SQLite needs


def test_what_older_versions_wrote_still_loads() -> None:
    assert jsoncodec.loads('{"cpu": NaN, "n": 123456789012345678901234567890}')["n"] == 123456789012345678901234567890
