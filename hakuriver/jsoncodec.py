"""Encoding JSON fast: `orjson` where it can, the standard library where it cannot.

Every task costs several encodings on the Host: its command, environment,
mounts and GPU list into its database row, and its view into each answer
that lists it. `orjson` does those 10-15x faster than `json` (bench: a
1,000-task page in 0.6 ms instead of 8 ms). It is a dependency, with wheels
for every platform HakuRiver runs on; where it is missing (a platform without
a wheel), everything still works, through `json`.

Contract: `dumps_text` and `dumps_bytes` give JSON that the standard
library's `json.loads` reads back to an equal value, whichever encoder ran.
`orjson` refuses what `json` accepts in a few corners: a lone surrogate in a
string (argv bytes that are not UTF-8 arrive surrogate-escaped), an integer
beyond 64 bits. Those values fall back to `json` (with `\\u` escapes), so
nothing that encoded before fails now. Non-string dict keys become strings,
as `json` makes them.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - a platform without an orjson wheel
    orjson = None  # type: ignore[assignment]

_OPTIONS = 0 if orjson is None else orjson.OPT_NON_STR_KEYS


def dumps_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON, for HTTP bodies."""
    if orjson is not None:
        try:
            return orjson.dumps(value, option=_OPTIONS)
        except (TypeError, orjson.JSONEncodeError):
            pass
    # ensure_ascii: a lone surrogate cannot be UTF-8; as an escape it survives.
    return json.dumps(value, separators=(",", ":")).encode("ascii")


def dumps_text(value: Any) -> str:
    """Compact JSON as text, for a database column (SQLite stores UTF-8)."""
    if orjson is not None:
        try:
            return orjson.dumps(value, option=_OPTIONS).decode("utf-8")
        except (TypeError, orjson.JSONEncodeError):
            pass
    return json.dumps(value, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """Parse JSON this package (or an older HakuRiver, through `json`) wrote.
    What `orjson` refuses (`NaN`, integers beyond 64 bits) goes to `json`."""
    if orjson is not None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)
