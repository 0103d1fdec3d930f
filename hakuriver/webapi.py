"""HTTP plumbing shared by the Host and the Runner APIs.

Two middlewares, in this order:
- `error_middleware`: every failure leaves as `{"error": {"code", "message"}}`
  with the right status, including aiohttp's own 404/405/413 and anything
  unexpected (500, logged with its traceback, never sent to the client).
- `auth_middleware`: every route needs `Authorization: Bearer <token>`,
  compared in constant time. There is no anonymous endpoint.

And strict request reading: `read_json_object` refuses non-JSON bodies,
non-objects, and (with `fields`) unknown keys, so a typo in a client is a 400
rather than a silently ignored option. It also refuses, for every field of
every route at once, what no field may hold: integers outside signed 64 bits
(SQLite cannot store them), non-finite numbers, nesting deeper than
`MAX_JSON_DEPTH`, and strings with a NUL or a lone surrogate (neither can be
stored, passed to a program or sent back as UTF-8).

What cannot be made JSON: aiohttp's HTTP parser answers a request it cannot
parse (a malformed request line, a header with a control character, a header
over 8 KiB) itself, with a plain-text 400, before any middleware or route
runs. Making those JSON would take a `RequestHandler` subclass wired in
through private aiohttp internals (`Server._kwargs`, `AppRunner._make_server`),
which change between releases; the status is right, only the body is text.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, overload

from aiohttp import web
from aiohttp.typedefs import Middleware

from .errors import ConfigError, HakuRiverError, Unauthorized, ValidationError
from .jsoncodec import dumps_bytes

log = logging.getLogger(__name__)

NODE_KEY_HEADER = "X-HakuRiver-Node-Key"
"""Runners prove which node they are with this header on every call."""

MAX_BODY_BYTES = 1 << 20
"""Largest request body either service accepts (aiohttp answers 413 beyond)."""

MAX_BATCH_ITEMS = 500
"""Most items one batch request carries, either way: a runner's reports to the
Host (`POST /api/runner/reports`), the Host's tasks to a runner (`POST /api/tasks/batch`)."""

BATCH_BODY_BYTES = MAX_BODY_BYTES // 2
"""A batch's sender starts a new request before its body would pass this (a
single item may be larger: it goes alone), well inside `MAX_BODY_BYTES`."""

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
"""The integers a JSON body may hold: what SQLite's INTEGER stores."""

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a request body may have (the deepest
legitimate body, a runner's registration, nests 4 deep)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """`data` as a JSON answer (`jsoncodec`: orjson where it can)."""
    return web.Response(
        body=dumps_bytes(data), status=status, headers=headers, content_type="application/json", charset="utf-8"
    )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HakuRiverError as exc:
        if exc.status >= 500:
            log.warning("%s %s failed: %s", request.method, request.path, exc.message)
        headers = {"WWW-Authenticate": 'Bearer realm="hakuriver"'} if exc.status == 401 else None
        return json_response(error_body(exc.code, exc.message), status=exc.status, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            message = f"request body too large (limit {MAX_BODY_BYTES} bytes)"
        elif exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
        # Keep what aiohttp set that is not about the body: `Allow` on a 405.
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return json_response(error_body(code, message), status=exc.status, headers=headers)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_response(error_body("internal", "internal server error; see the service log"), status=500)


def bearer_token(request: web.Request) -> str:
    """The bearer token of `request`; `Unauthorized` (never echoing what was
    sent, which may be a mistyped secret) when there is none."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    if not presented.isascii() or not presented.isprintable():
        raise Unauthorized("malformed bearer token (not printable ASCII)")
    return presented


Authenticate = Callable[[web.Request, str], None]
"""Checks a request's bearer token; raises Unauthorized/Forbidden, or records the caller."""


OtherCredentials = Callable[[web.Request], bool]
"""Looks at a request before its bearer token: True when it authenticated the
request by other means (the Host's browser session) or the route needs no
credential (the dashboard's static files); False to require the bearer token.
Raises Unauthorized/Forbidden for a credential it recognises and refuses."""


def make_auth_middleware(authenticate: Authenticate, *, other: OtherCredentials | None = None) -> Middleware:
    """Every route is authenticated: `authenticate(request, token)` decides,
    unless `other` (see `OtherCredentials`) already did."""

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if other is None or not other(request):
            authenticate(request, bearer_token(request))
        return await handler(request)

    return auth_middleware


def shared_secret(token: str, what: str) -> Authenticate:
    """An `Authenticate` that accepts exactly one secret."""
    if not token:
        raise ConfigError(f"{what} is empty: every API call is authenticated, so a token must be configured")
    expected = token.encode("utf-8")

    def check(request: web.Request, presented: str) -> None:
        if not hmac.compare_digest(presented.encode("utf-8"), expected):
            raise Unauthorized("invalid bearer token")

    return check


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class _Refused(ValueError):
    """A JSON value no field may hold; raised from inside the decoder."""


def _parse_int(text: str) -> int:
    # Digits first: int() of a 5,000-digit string is slow, and beyond 19 digits
    # it is out of range anyway.
    if len(text.lstrip("-")) > 19 or not INT64_MIN <= (value := int(text)) <= INT64_MAX:
        raise _Refused(f"integer {text[:24]}{'...' if len(text) > 24 else ''} is outside the signed 64-bit range")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:24]} is too large")
    return value


def _parse_constant(text: str) -> Any:
    raise _Refused(f"{text} is not a JSON number")


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)


def _check_strings_and_depth(data: Any) -> None:
    """Refuse nesting beyond MAX_JSON_DEPTH, and any key or string holding a NUL
    or a lone surrogate. Iterative, so no input can exhaust the stack."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ValidationError(f"JSON body nested too deeply (at most {MAX_JSON_DEPTH} levels)")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_text(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise ValidationError(f"a string in the body holds a NUL character: {text[:40]!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"a string in the body holds a lone UTF-16 surrogate: {text[:40]!r}") from None


def parse_json(raw: bytes) -> Any:
    """Decode a request body under the rules every route shares (see the module
    docstring); `ValidationError` with the reason for anything else."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"the body is not UTF-8: {exc}") from None
    try:
        data = _DECODER.decode(text)
    except _Refused as exc:
        raise ValidationError(f"malformed JSON body: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValidationError(f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise ValidationError(f"JSON body nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except ValueError as exc:  # e.g. Python's limit on the digits of one int
        raise ValidationError(f"malformed JSON body: {exc}") from None
    # A decoded string can hold a NUL or a lone surrogate only through a \u
    # escape (the decoder refuses raw control characters, and valid UTF-8 holds
    # no surrogates), and a body nests no deeper than it has brackets: most
    # bodies (every heartbeat) need no walk.
    if "\\u" in text or text.count("{") + text.count("[") > MAX_JSON_DEPTH:
        _check_strings_and_depth(data)
    return data


async def read_json_object(
    request: web.Request, fields: Iterable[str] | None = None, *, optional: bool = False
) -> dict[str, Any]:
    """The request body as a JSON object; 400 for anything else or unknown keys.

    With `optional`, a request without a body reads as `{}` (a route whose
    body only holds options)."""
    if request.content_type not in ("application/json", "") and (request.body_exists or not optional):
        raise ValidationError(f"expected a JSON body (Content-Type: application/json), not {request.content_type}")
    charset = request.charset
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        raise ValidationError(f"a JSON body is UTF-8, not {charset}")
    raw = await request.read()
    if not raw:
        if optional:
            return {}
        raise ValidationError("expected a JSON object body, got an empty body")
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ValidationError(f"expected a JSON object, got {_json_type(data)}")
    if fields is not None:
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValidationError(f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(fields))})")
    return data


def _json_type(value: Any) -> str:
    return "null" if value is None else _kind_names((type(value),))


def require_type(
    data: dict[str, Any], key: str, kind: type | tuple[type, ...], *, required: bool = True, default: Any = None
) -> Any:
    """Fetch `data[key]` and check its JSON type (bool is never accepted as int)."""
    if key not in data or data[key] is None:
        if required:
            raise ValidationError(f"field {key!r} is required")
        return default
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ValidationError(f"field {key!r} has the wrong type: expected {_kind_names(kinds)}, got a boolean")
    if not isinstance(value, kinds):
        expected = _kind_names(kinds)
        raise ValidationError(f"field {key!r} has the wrong type: expected {expected}, got {_json_type(value)}")
    return value


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


@overload
def query_int(request: web.Request, name: str, default: int, *, minimum: int = ..., maximum: int = ...) -> int: ...
@overload
def query_int(
    request: web.Request, name: str, default: None, *, minimum: int = ..., maximum: int = ...
) -> int | None: ...
def query_int(
    request: web.Request, name: str, default: int | None, *, minimum: int = 0, maximum: int = 1 << 62
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise ValidationError(f"query parameter {name!r} must be a non-negative integer, not {raw!r}")
    # Not int() on thousands of digits: Python refuses that itself (a ValueError, a 500 here).
    value = int(raw) if len(raw.lstrip("0")) <= 20 else maximum + 1
    if not minimum <= value <= maximum:
        raise ValidationError(f"query parameter {name!r} must be between {minimum} and {maximum}")
    return value
