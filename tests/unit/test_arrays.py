"""`--array` specs (parsing.parse_array)."""

from __future__ import annotations

import pytest

from hakuriver.errors import ValidationError
from hakuriver.parsing import MAX_ARRAY_TASKS, ArraySpec, format_array, parse_array


@pytest.mark.parametrize(
    ("spec", "indices", "limit"),
    [
        ("0-3", (0, 1, 2, 3), 0),
        ("7", (7,), 0),
        ("0-9:3", (0, 3, 6, 9), 0),
        ("1,3,5", (1, 3, 5), 0),
        ("0-5%2", (0, 1, 2, 3, 4, 5), 2),
        ("10-12,1", (10, 11, 12, 1), 0),
        (" 0-1%1 ", (0, 1), 1),
    ],
)
def test_parses(spec: str, indices: tuple[int, ...], limit: int) -> None:
    assert parse_array(spec) == ArraySpec(indices, limit)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "a",
        "-1",
        "5-3",
        "0-4:0",
        "3:2",
        "1,1",
        "0-3,2",
        "0-3%0",
        "0-3%",
        "%2",
        "0-3%x",
        "1,,2",
        "\u0661-\u0663",  # Arabic-Indic digits: int() reads them, the parser must not
        "0-99999999",
        f"0-{MAX_ARRAY_TASKS}",  # one too many
        "1" * 5000,
    ],
)
def test_refuses(spec: str) -> None:
    with pytest.raises(ValidationError, match="array"):
        parse_array(spec)


def test_bounded_count() -> None:
    assert len(parse_array(f"0-{MAX_ARRAY_TASKS - 1}").indices) == MAX_ARRAY_TASKS
    with pytest.raises(ValidationError, match="more than"):
        parse_array(f"0-{MAX_ARRAY_TASKS - 1},{MAX_ARRAY_TASKS + 5}")


def test_format_round_trips() -> None:
    for spec in ("0-3,5,7-8%2", "1,3,5", "0-99"):
        assert format_array(parse_array(spec)) == spec
