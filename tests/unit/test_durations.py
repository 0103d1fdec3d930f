"""`parsing.parse_duration` / `format_duration`: what `--time` and the API's `time_limit` read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hakuriver.errors import ValidationError
from hakuriver.parsing import MAX_TIME_LIMIT, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45s", 45),
        ("90m", 5400),
        ("2h", 7200),
        ("2H", 7200),
        (" 2h ", 7200),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        ("30d", MAX_TIME_LIMIT),
        ("1:30:00", 5400),
        ("10:00", 600),  # MM:SS, as Slurm reads two fields
        ("48:00:00", 172800),  # the leading field may exceed its clock range
        ("2-00:00:00", 172800),
        ("2-12", 216000),  # D-HH
        ("1-2:30", 95400),  # D-HH:MM
        ("0-0:0:1", 1),
        (3600, 3600),
        (1, 1),
    ],
)
def test_durations_read(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("90", "give a unit"),  # Slurm: minutes; anyone else: seconds. Refused, never guessed.
        ("", "expected a duration"),
        ("   ", "expected a duration"),
        ("1.5h", "expected a duration"),
        ("-5m", "expected a duration"),
        ("5 m", "expected a duration"),
        ("1h1h", "each unit once"),
        ("30m1h", "largest first"),
        ("1:60", "up to 59"),
        ("1:00:60", "up to 59"),
        ("1-24", "hours to 23"),
        ("1:2:3:4", "expected a duration"),
        ("1-", "expected a duration"),
        ("\u0663s", "expected a duration"),  # ARABIC-INDIC DIGIT THREE: ASCII digits only
        ("\uff11h", "expected a duration"),  # FULLWIDTH DIGIT ONE
        ("0s", "at least one second"),
        ("0:00:00", "at least one second"),
        (0, "at least one second"),
        (-1, "at least one second"),
        ("31d", "longer than 30d"),
        ("30d1s", "longer than 30d"),
        (MAX_TIME_LIMIT + 1, "longer than 30d"),
        ("9" * 40 + "s", "expected a duration"),  # no huge int() for a huge input
        (True, "expected seconds"),
        (1.5, "expected seconds"),
        (None, "expected seconds"),
    ],
)
def test_bad_durations_are_refused_with_a_reason(value: object, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_duration(value)  # type: ignore[arg-type]
    assert words in info.value.message and info.value.status == 400, info.value.message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0, "0s"), (45, "45s"), (5400, "1h30m"), (7200, "2h"), (172800, "2d"), (93784, "1d2h3m4s")],
)
def test_format_duration(seconds: int | None, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=1, max_value=MAX_TIME_LIMIT))
def test_formatting_reads_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=29), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
def test_slurm_day_form_agrees_with_units(days: int, hours: int, minutes: int, secs: int) -> None:
    total = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if total == 0:
        return
    assert parse_duration(f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}") == total
    assert parse_duration(f"{days * 24 + hours}:{minutes:02d}:{secs:02d}") == total
