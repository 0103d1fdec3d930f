"""Parsers for what users type: targets, sizes, mounts, env pairs, names.

Every parser raises `ValidationError` with a message that names the bad
input and says what was expected. They are shared by the CLIs and the Host
API, so both refuse exactly the same things.
"""

from __future__ import annotations

import datetime
import itertools
import posixpath
import re
from typing import NamedTuple

from .errors import ValidationError
from .models import SYSTEMD_CONTAINER, Mount, Target

MAX_MEMORY = 1 << 50  # 1 PiB: beyond any node this project will meet
MAX_CORES = 4096
MAX_GPU_ID = 1023
MAX_NUMA_ID = 1023

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?\Z")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*\Z", re.IGNORECASE | re.ASCII)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
# Docker's rule for repository name components, which environment names become.
_ENV_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")


def validate_node_name(name: str) -> str:
    if not isinstance(name, str) or not _HOSTNAME.match(name):
        raise ValidationError(
            f"invalid node name {name!r}: use letters, digits, '.', '_' and '-' (at most 253 characters)"
        )
    return name


def _small_int(text: str, what: str, limit: int, spec: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValidationError(f"invalid target {spec!r}: {what} {text!r} is not a non-negative integer")
    value = int(text)
    if value > limit:
        raise ValidationError(f"invalid target {spec!r}: {what} {value} is out of range (max {limit})")
    return value


def parse_target(spec: str) -> Target:
    """Parse `HOST[:NUMA][::GPU[,GPU...]]`, e.g. `node1`, `node1:0`, `node1::0,1`, `node1:1::2`."""
    if not isinstance(spec, str) or not spec:
        raise ValidationError("invalid target '': expected HOST[:NUMA][::GPU,GPU...]")
    head, sep, gpu_part = spec.partition("::")
    gpus: tuple[int, ...] = ()
    if sep:
        if not gpu_part:
            raise ValidationError(f"invalid target {spec!r}: '::' must be followed by GPU ids, e.g. node1::0,1")
        ids = [_small_int(g, "GPU id", MAX_GPU_ID, spec) for g in gpu_part.split(",")]
        if len(set(ids)) != len(ids):
            raise ValidationError(f"invalid target {spec!r}: a GPU id is repeated")
        gpus = tuple(ids)
    node, sep, numa_part = head.partition(":")
    numa = None
    if sep:
        if not numa_part:
            raise ValidationError(f"invalid target {spec!r}: ':' must be followed by a NUMA id, e.g. node1:0")
        numa = _small_int(numa_part, "NUMA id", MAX_NUMA_ID, spec)
    if not node:
        raise ValidationError(f"invalid target {spec!r}: the node name is missing")
    try:
        validate_node_name(node)
    except ValidationError:
        raise ValidationError(f"invalid target {spec!r}: {node!r} is not a valid node name") from None
    return Target(node=node, numa=numa, gpus=gpus)


def parse_size(text: str | int) -> int:
    """Parse a memory size: bytes as an int, or `512M`, `4G`, `1.5G`, `2GiB` (binary units)."""
    if isinstance(text, bool):
        raise ValidationError(f"invalid size {text!r}")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise ValidationError(f"invalid size {text!r}: expected a number with an optional unit K, M, G or T")
        if len(match.group(1)) > 24:  # far beyond 1 PiB in any unit; float() would turn it into inf
            raise ValidationError(f"invalid size {text!r}: larger than 1 PiB")
        value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value <= 0:
        raise ValidationError(f"invalid size {text!r}: must be greater than zero")
    if value > MAX_MEMORY:
        raise ValidationError(f"invalid size {text!r}: larger than 1 PiB")
    return value


def format_size(value: int | None) -> str:
    """Bytes for people: 8G, 512M, 23.5G ("-" for none/0). The one formatter
    of sizes, so a refusal speaks the units `hakuriver.client nodes` shows."""
    if not value:
        return "-"
    for unit in ("P", "T", "G", "M", "K"):
        size = _UNITS[unit]
        if value >= size:
            if value % size == 0:
                return f"{value // size}{unit}"
            return f"{value / size:.1f}{unit}"
    return f"{value}B"


def parse_cores(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            value = int(value)
        else:
            raise ValidationError(f"invalid core count {value!r}: expected a whole number")
    if value < 1 or value > MAX_CORES:
        raise ValidationError(f"invalid core count {value}: must be between 1 and {MAX_CORES}")
    return value


def _clean_abs_path(path: str, what: str, spec: str) -> str:
    if not path.startswith("/"):
        raise ValidationError(f"invalid mount {spec!r}: the {what} path must be absolute")
    if "\x00" in path:
        raise ValidationError(f"invalid mount {spec!r}: NUL in path")
    if any(part == ".." for part in path.split("/")):
        raise ValidationError(f"invalid mount {spec!r}: '..' is not allowed in the {what} path")
    return posixpath.normpath(path)


def parse_mount(spec: str) -> Mount:
    """Parse `HOST_PATH:CONTAINER_PATH[:ro|:rw]`; both paths absolute, no '..'."""
    if not isinstance(spec, str):
        raise ValidationError(f"invalid mount {spec!r}: expected HOST_PATH:CONTAINER_PATH[:ro]")
    parts = spec.split(":")
    mode = "rw"
    if len(parts) == 3:
        mode = parts[2]
        if mode not in ("ro", "rw"):
            raise ValidationError(f"invalid mount {spec!r}: mode must be 'ro' or 'rw', not {mode!r}")
    elif len(parts) != 2:
        raise ValidationError(f"invalid mount {spec!r}: expected HOST_PATH:CONTAINER_PATH[:ro]")
    host = _clean_abs_path(parts[0], "host", spec)
    container = _clean_abs_path(parts[1], "container", spec)
    if container == "/":
        raise ValidationError(f"invalid mount {spec!r}: cannot mount over the container's /")
    return Mount(host_path=host, container_path=container, read_only=mode == "ro")


def parse_env(spec: str) -> tuple[str, str]:
    """Parse `KEY=VALUE`; the value may contain '=' and may be empty."""
    key, sep, value = spec.partition("=")
    if not sep:
        raise ValidationError(f"invalid env {spec!r}: expected KEY=VALUE")
    validate_env_key(key)
    if "\x00" in value:
        raise ValidationError(f"invalid env {spec!r}: NUL in value")
    return key, value


def validate_env_key(key: str) -> str:
    if not isinstance(key, str) or not _ENV_KEY.match(key):
        raise ValidationError(f"invalid env name {key!r}: use letters, digits and '_', not starting with a digit")
    return key


def validate_container(name: str) -> str:
    """A `--container` choice: exactly NULL (no container: systemd), or an
    environment name (`validate_env_name`). Any other spelling of null is
    refused with the hint, since it reads as "no container" but would name an
    environment nobody made."""
    if name == SYSTEMD_CONTAINER:
        return name
    if isinstance(name, str) and name.lower() == SYSTEMD_CONTAINER.lower():
        raise ValidationError(
            f"unknown environment {name!r}: did you mean {SYSTEMD_CONTAINER} (run without a container)?"
        )
    return validate_env_name(name)


def validate_env_name(name: str) -> str:
    """An environment (container) name: what Docker accepts as a repository name part.

    Lower-case only: Docker refuses upper-case repository names, so an
    upper-case environment name is refused here, everywhere, with the reason,
    rather than half-working. No '/', so a name can never become a path.
    """
    if not isinstance(name, str) or not name:
        raise ValidationError("invalid environment name '': it must not be empty")
    if name != name.lower() and _ENV_NAME.match(name.lower()):
        raise ValidationError(
            f"invalid environment name {name!r}: Docker image names must be lower-case; use {name.lower()!r}"
        )
    if len(name) > 128 or not _ENV_NAME.match(name):
        raise ValidationError(
            f"invalid environment name {name!r}: use lower-case letters, digits and single '.', '_' or '-' between them"
        )
    return name


MAX_TIME_LIMIT = 30 * 86400
"""The longest time limit a task may ask for (30 days), in seconds."""

_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_UNIT_DURATION = re.compile(r"(?:[0-9]+[dhms])+\Z", re.ASCII)
_UNIT_PART = re.compile(r"([0-9]+)([dhms])", re.ASCII)
_CLOCK_DURATION = re.compile(r"(?:([0-9]+)-)?([0-9]+)(?::([0-9]+))?(?::([0-9]+))?\Z", re.ASCII)


def parse_duration(value: str | int) -> int:
    """A task's time limit in whole seconds, from what a user types.

    - an int: seconds (the API's number form);
    - units, one or more of `d`, `h`, `m`, `s`, in that order: `45s`, `90m`,
      `2h`, `1h30m`, `2d`;
    - clock forms as Slurm writes them: `MM:SS`, `HH:MM:SS`, `D-HH`,
      `D-HH:MM`, `D-HH:MM:SS` (`1:30:00` is an hour and a half).

    A bare number in a string is refused: Slurm reads it as minutes, and
    anyone else as seconds. ASCII digits only; the result is between 1 second
    and `MAX_TIME_LIMIT` (30 days). Raises ValidationError."""
    if isinstance(value, bool):
        raise ValidationError(f"invalid time limit {value!r}: expected seconds or a duration like 2h, 90m, 1:30:00")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        seconds = _duration_seconds(value)
    else:
        raise ValidationError(f"invalid time limit {value!r}: expected seconds or a duration like 2h, 90m, 1:30:00")
    if seconds < 1:
        raise ValidationError(f"invalid time limit {value!r}: must be at least one second")
    if seconds > MAX_TIME_LIMIT:
        raise ValidationError(f"invalid time limit {value!r}: longer than {format_duration(MAX_TIME_LIMIT)}")
    return seconds


def _duration_seconds(text: str) -> int:
    spec = text.strip().lower()
    # Far longer than any valid limit: refuse before int() sees a huge number.
    if not spec or len(spec) > 32:
        raise ValidationError(f"invalid time limit {text!r}: expected a duration like 2h, 90m, 45s or 1:30:00")
    if _UNIT_DURATION.match(spec):
        parts = _UNIT_PART.findall(spec)
        units = [unit for _, unit in parts]
        order = "dhms"
        if len(set(units)) != len(units) or units != sorted(units, key=order.index):
            raise ValidationError(f"invalid time limit {text!r}: give each unit once, largest first (1h30m)")
        return sum(int(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if spec.isdigit():
        raise ValidationError(
            f"invalid time limit {text!r}: give a unit ({spec}s, {spec}m or {spec}h) or a clock form like 1:30:00"
        )
    match = _CLOCK_DURATION.match(spec)
    if not match:
        raise ValidationError(f"invalid time limit {text!r}: expected a duration like 2h, 90m, 45s or 1:30:00")
    days_text, first, second, third = match.groups()
    days = int(days_text) if days_text is not None else 0
    fields = [int(first)] + [int(f) for f in (second, third) if f is not None]
    if days_text is not None:
        hours, minutes, secs = (fields + [0, 0])[:3]  # D-HH, D-HH:MM, D-HH:MM:SS
    elif len(fields) == 3:
        hours, minutes, secs = fields
    elif len(fields) == 2:
        hours, (minutes, secs) = 0, fields  # MM:SS, as Slurm reads it
    else:
        raise ValidationError(f"invalid time limit {text!r}: expected a duration like 2h, 90m, 45s or 1:30:00")
    # The leading field may be as large as it likes (48:00:00, 90:00); the
    # ones after a colon or a day count are clock digits.
    if days_text is not None:
        out_of_range = any(f > limit for f, limit in zip(fields, (23, 59, 59), strict=False))
    else:
        out_of_range = any(f > 59 for f in fields[1:])
    if out_of_range:
        raise ValidationError(f"invalid time limit {text!r}: minutes and seconds go up to 59 (hours to 23 after D-)")
    return ((days * 24 + hours) * 60 + minutes) * 60 + secs


def format_duration(seconds: int | float | None) -> str:
    """Seconds for people, in the units `parse_duration` reads: `2h`, `1h30m`,
    `45s`, `2d`, `1d2h3m4s` ("-" for none)."""
    if seconds is None:
        return "-"
    rest = max(0, int(seconds))
    if rest == 0:
        return "0s"
    text = ""
    for unit, size in _DURATION_UNITS.items():
        count, rest = divmod(rest, size)
        if count:
            text += f"{count}{unit}"
    return text


_RELATIVE_SINCE = re.compile(r"([0-9]{1,6})([dhm])\Z", re.ASCII)
# Nine digits at least (1973 on): a bare `7` is a forgotten unit, not 1970.
_EPOCH = re.compile(r"[0-9]{9,12}(?:\.[0-9]{1,9})?\Z", re.ASCII)
# fromisoformat reads far more (40 digits are a date); only YYYY-MM-DD[Thh:mm...] is meant.
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9:.+\-Z]{2,24})?\Z", re.ASCII)


def parse_since(text: str, now: float) -> float:
    """A point in time as epoch seconds, from what a user types for `--since`:

    - relative: `7d`, `24h`, `90m` (that long before `now`);
    - an ISO date or date-time: `2026-11-01`, `2026-11-01T12:00`; without an
      offset it is this machine's local time (`2026-11-01T12:00+00:00` is UTC);
    - epoch seconds, nine digits or more: `1793491200` (the API's form).

    Raises ValidationError, saying which forms are read."""
    spec = text.strip()
    relative = _RELATIVE_SINCE.match(spec.lower())
    if relative:
        return now - int(relative.group(1)) * _DURATION_UNITS[relative.group(2)]
    if _EPOCH.match(spec):
        return float(spec)
    try:
        when = datetime.datetime.fromisoformat(spec).timestamp() if _ISO_DATE.match(spec) else None
    except (ValueError, OverflowError, OSError):
        when = None
    if when is None:
        raise ValidationError(
            f"invalid date {text!r}: expected an ISO date (2026-11-01, 2026-11-01T12:00), "
            "a time ago (7d, 24h, 90m) or epoch seconds"
        )
    return when


MAX_ARRAY_TASKS = 10_000
"""The most tasks one array (`--array`) may make."""
MAX_ARRAY_INDEX = 1_000_000
"""The largest array index."""

_ARRAY_NUMBER = re.compile(r"[0-9]{1,7}\Z", re.ASCII)


class ArraySpec(NamedTuple):
    """A parsed `--array` spec."""

    indices: tuple[int, ...]
    """The array indices, in the order given."""
    max_running: int = 0
    """The most tasks of the batch that may hold resources at once (0: no limit)."""


def _array_number(text: str, spec: str, what: str) -> int:
    if not _ARRAY_NUMBER.match(text):
        raise ValidationError(f"invalid array {spec!r}: {what} {text!r} is not a whole number")
    value = int(text)
    if value > MAX_ARRAY_INDEX:
        raise ValidationError(f"invalid array {spec!r}: {what} {value} is out of range (max {MAX_ARRAY_INDEX})")
    return value


def parse_array(spec: str) -> ArraySpec:
    """Parse an array spec as Slurm writes it: comma-separated items, each
    `N`, `A-B` or `A-B:STEP`, then an optional `%N` (at most N tasks of the
    batch hold resources at once). `0-99`, `0-99:2`, `1,3,5`, `0-99%8`.

    Indices are ASCII digits up to `MAX_ARRAY_INDEX`; a repeated index is
    refused; at most `MAX_ARRAY_TASKS` tasks. The indices keep the order given.
    Raises ValidationError."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValidationError("invalid array '': expected e.g. 0-99, 0-99:2, 1,3,5 or 0-99%8")
    if len(spec) > 4096:
        raise ValidationError("invalid array: the spec is longer than 4096 characters")
    text = spec.strip()
    body, sep, limit_text = text.partition("%")
    max_running = 0
    if sep:
        max_running = _array_number(limit_text, spec, "the %N limit")
        if max_running < 1:
            raise ValidationError(f"invalid array {spec!r}: the %N limit must be at least 1")
    indices: list[int] = []
    seen: set[int] = set()
    for item in body.split(","):
        range_part, colon, step_text = item.partition(":")
        first_text, dash, last_text = range_part.partition("-")
        first = _array_number(first_text, spec, "index")
        last = _array_number(last_text, spec, "index") if dash else first
        step = _array_number(step_text, spec, "step") if colon else 1
        if colon and not dash:
            raise ValidationError(f"invalid array {spec!r}: a step needs a range (A-B:STEP)")
        if step < 1:
            raise ValidationError(f"invalid array {spec!r}: the step must be at least 1")
        if last < first:
            raise ValidationError(f"invalid array {spec!r}: range {range_part!r} ends before it starts")
        if len(indices) + (last - first) // step + 1 > MAX_ARRAY_TASKS:
            raise ValidationError(f"invalid array {spec!r}: more than {MAX_ARRAY_TASKS} tasks")
        for index in range(first, last + 1, step):
            if index in seen:
                raise ValidationError(f"invalid array {spec!r}: index {index} is repeated")
            seen.add(index)
            indices.append(index)
    return ArraySpec(tuple(indices), max_running)


def format_array(spec: ArraySpec) -> str:
    """The canonical text of a parsed array (runs of step 1 as ranges)."""
    parts: list[str] = []
    run: list[int] = []
    for index in [*spec.indices, -2]:
        if run and index == run[-1] + 1:
            run.append(index)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [index]
    return ",".join(parts) + (f"%{spec.max_running}" if spec.max_running else "")


_SPAN_RANGE = re.compile(r"span:\{(-?[0-9]{1,9})\.\.(-?[0-9]{1,9})\}\Z", re.ASCII)
_SPAN_LIST = re.compile(r"span:\[(.*)\]\Z", re.DOTALL)


def _span_values(word: str) -> list[str] | None:
    """The values of one `span:` word, or None when the word is no span."""
    match = _SPAN_RANGE.match(word)
    if match:
        first, last = int(match.group(1)), int(match.group(2))
        if last < first:
            raise ValidationError(f"invalid sweep {word!r}: the range ends before it starts")
        if last - first >= MAX_ARRAY_TASKS:
            raise ValidationError(f"invalid sweep {word!r}: more than {MAX_ARRAY_TASKS} values")
        return [str(v) for v in range(first, last + 1)]
    match = _SPAN_LIST.match(word)
    if match:
        values = match.group(1).split(",")
        if not all(values):
            raise ValidationError(f"invalid sweep {word!r}: expected span:[a,b,...] with no empty value")
        return values
    if word.startswith("span:{") or word.startswith("span:["):
        raise ValidationError(f"invalid sweep {word!r}: expected span:{{A..B}} (integers) or span:[a,b,...]")
    return None


def parse_sweep_limit(text: str) -> int:
    """The `%N` that is all an array spec may say beside a sweep (the sweep gives the indices)."""
    if not isinstance(text, str) or not text.startswith("%"):
        raise ValidationError(f"invalid array {text!r} with a sweep: the sweep makes the indices, give only %N")
    return parse_array("0" + text).max_running


def expand_sweep(command: list[str] | tuple[str, ...]) -> list[list[str]]:
    """HakuRiver 0.3's `hakurun` sweep: every argv word `span:{A..B}` (integers,
    both ends included) or `span:[a,b,...]` stands for each of its values, and
    the command becomes one command per combination (the first span varies
    slowest). Combination number k is array index k. A command without spans
    is itself. At most `MAX_ARRAY_TASKS` combinations. Raises ValidationError."""
    options: list[list[str]] = []
    total = 1
    for word in command:
        values = _span_values(word) if isinstance(word, str) else None
        options.append(values if values is not None else [word])
        total *= len(options[-1])
        if total > MAX_ARRAY_TASKS:
            raise ValidationError(f"invalid sweep: more than {MAX_ARRAY_TASKS} combinations")
    return [list(combination) for combination in itertools.product(*options)]
