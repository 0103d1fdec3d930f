"""Input parsers refuse look-alikes: Unicode digits, trailing newlines, huge numbers."""

from __future__ import annotations

import pytest

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
