"""Input parsers refuse look-alikes: Unicode digits, trailing newlines, huge numbers."""

from __future__ import annotations

import json

import hypothesis
import pytest
from hypothesis import strategies as st

from hakuriver import webapi
from hakuriver.errors import ValidationError
from hakuriver.ids import parse_id
from hakuriver.parsing import parse_size, parse_target, validate_env_key, validate_env_name, validate_node_name


@pytest.mark.parametrize("text", ["²", "١", "12٣", "1\n", " 1"])
def test_ids_are_ascii_decimal_only(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_id(text)


@pytest.mark.parametrize(
    "check,value",
    [
        (validate_node_name, "node1\n"),
        (validate_env_key, "A\n"),
        (validate_env_name, "rtenv\n"),
        (parse_target, "node1:٠"),
        (parse_target, "node1::¹"),
    ],
)
def test_a_trailing_newline_or_a_unicode_digit_is_refused(check, value: str) -> None:
    with pytest.raises(ValidationError):
        check(value)


@pytest.mark.parametrize("text", ["1" * 400, "1" * 30 + "G", "٣G"])
def test_sizes_that_overflow_or_use_other_digits_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_size(text)


def test_ordinary_inputs_still_parse() -> None:
    assert parse_id("386078604468944897") == 386078604468944897
    assert parse_size("1.5G") == 3 << 29
    assert str(parse_target("node1:0::0,1")) == "node1:0::0,1"


_TEXT = st.text(alphabet=st.sampled_from(["a", "\x00", "\ud800", "\udfff", "é", "\\", "u", "{", "["]), max_size=6)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=40,
)


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(value=_JSON, ascii_only=st.booleans())
def test_a_body_is_refused_exactly_when_a_string_or_its_depth_is(value: object, ascii_only: bool) -> None:
    """`parse_json` skips its walk over the decoded body when the raw text
    cannot hide a NUL, a lone surrogate or deep nesting; the walk decides
    the rest. Whatever the body, it refuses exactly what the full walk does."""
    try:
        raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")
    except UnicodeEncodeError:
        hypothesis.assume(False)  # a lone surrogate cannot travel as raw UTF-8 at all
        return
    try:
        webapi._check_strings_and_depth(json.loads(raw))
        expected = None
    except ValidationError as exc:
        expected = exc.message
    try:
        webapi.parse_json(raw)
        got = None
    except ValidationError as exc:
        got = exc.message
    assert got == expected


def test_deep_nesting_is_refused_even_without_escapes() -> None:
    deep = "[" * (webapi.MAX_JSON_DEPTH + 1) + "]" * (webapi.MAX_JSON_DEPTH + 1)
    with pytest.raises(ValidationError, match="nested too deeply"):
        webapi.parse_json(deep.encode())
