"""The classic odd inputs against the real Host app: each is a 4xx with a JSON
reason, never a 500, and the Host goes on serving.

One case per class the fuzzers found (Unicode digits, deep nesting, integers
beyond 64 bits, non-UTF-8 bytes, trailing newlines, NUL, wrong JSON types,
empty bodies, wrong Content-Type, lone surrogates, non-finite numbers), a wrong
method (405 with `Allow`) and an unknown path. Requests go over a raw socket,
so that the bytes on the wire are exactly the odd ones (no client library
normalises them). tests/host/test_conformance.py runs schemathesis on top.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from .cluster import ThreadedCluster


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        assert self.headers.get_content_type() == "application/json", (self.status, self.headers, self.body)
        return json.loads(self.body)


def raw_request(
    url: str,
    method: str,
    target: bytes | str,
    *,
    headers: dict[str, bytes | str] | None = None,
    body: bytes | None = None,
) -> Answer:
    """Send exactly these bytes (request line, headers, body) and read the answer."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    target_bytes = target.encode("ascii") if isinstance(target, str) else target
    lines = [method.encode("ascii") + b" " + target_bytes + b" HTTP/1.1", b"Host: " + parts.netloc.encode()]
    all_headers: dict[str, bytes | str] = {"Connection": "close", **(headers or {})}
    if body is not None:
        all_headers["Content-Length"] = str(len(body))
    for name, value in all_headers.items():
        lines.append(name.encode("ascii") + b": " + (value.encode("latin-1") if isinstance(value, str) else value))
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        return Answer(resp.status, resp.headers, resp.read())


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedCluster]:
    """One Host for the module: every case here must leave it as it found it."""
    c = ThreadedCluster(tmp_path_factory.mktemp("odd-inputs"))
    try:
        c.start_host()
        yield c
    finally:
        c.close()


class Client:
    def __init__(self, cluster: ThreadedCluster):
        self.url = cluster.url
        self.auth = f"Bearer {cluster.token}"

    def send(
        self,
        method: str,
        target: bytes | str,
        body: bytes | str | None = None,
        *,
        content_type: str | bytes | None = "application/json",
        headers: dict[str, bytes | str] | None = None,
    ) -> Answer:
        all_headers: dict[str, bytes | str] = {"Authorization": self.auth}
        if body is not None and content_type is not None:
            all_headers["Content-Type"] = content_type
        all_headers.update(headers or {})
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        return raw_request(self.url, method, target, headers=all_headers, body=data)

    def refused(self, method: str, target: bytes | str, body: bytes | str | None = None, **kwargs: Any) -> dict:
        """The answer must be a 4xx with a JSON `Error`; returns its `error`."""
        answer = self.send(method, target, body, **kwargs)
        assert 400 <= answer.status < 500, (method, target, body, answer)
        error = answer.json["error"]
        assert set(error) == {"code", "message"} and error["code"] and error["message"], answer
        assert "\n" not in error["message"], error
        return error


@pytest.fixture(scope="module")
def client(host: ThreadedCluster) -> Client:
    return Client(host)


@pytest.fixture(scope="module", autouse=True)
def still_serving(host: ThreadedCluster, client: Client) -> Iterator[None]:
    """After all the odd inputs the Host answers, and holds only what the module made."""
    yield
    status, health = host.api("GET", "/api/health")
    assert status == 200 and health["status"] == "ok"
    assert host.api("GET", "/api/tasks")[1]["tasks"] == []
    assert host.api("GET", "/api/nodes")[1]["nodes"] == []


def _json(value: Any) -> str:
    return json.dumps(value)


# ------------------------------------------------------------- Unicode digits
@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("GET", "/api/tasks/%D9%A1%D9%A2", None),  # '١٢'
        ("POST", "/api/tasks/%C2%B2/kill", None),  # '²'
        ("GET", "/api/tasks/%C2%B2/logs", None),
        ("GET", "/api/tasks?limit=%D9%A1", None),
        ("GET", "/api/tasks?before=%C2%B2", None),
        ("GET", "/api/environments/tarballs/env/x?version=%C2%B2", None),
        ("DELETE", "/api/environments/tarballs/env?version=%C2%B2", None),
        ("POST", "/api/tasks/wait", _json({"task_ids": ["١٢"]})),
        ("POST", "/api/tasks", _json({"command": ["true"], "targets": ["node1:١"]})),
        ("POST", "/api/tasks", _json({"command": ["true"], "targets": ["node1::²"]})),
        ("POST", "/api/tasks", _json({"command": ["true"], "cores": "٣"})),
        ("POST", "/api/tasks", _json({"command": ["true"], "memory": "٤G"})),
        ("POST", "/api/runner/tasks/%C2%B2/status", _json({"hostname": "n1", "state": "running"})),
    ],
)
def test_unicode_digits_are_not_numbers(client: Client, method: str, target: str, body: str | None) -> None:
    client.refused(method, target, body)


# --------------------------------------------------------------- deep nesting
@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deeply_nested_json_is_refused(client: Client, depth: int) -> None:
    body = "[" * depth + "]" * depth
    assert "nested too deeply" in client.refused("POST", "/api/tasks", body)["message"]
    inner = '{"command": ' + "[" * depth + '"x"' + "]" * depth + "}"
    assert "nested too deeply" in client.refused("POST", "/api/tasks", inner)["message"]


# -------------------------------------------------- integers beyond 64 bits
@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/api/tasks", '{"command": ["true"], "cores": 18446744073709551616}'),
        ("/api/tasks", '{"command": ["true"], "memory": 1180591620717411303424}'),
        ("/api/tasks", '{"command": ["true"], "gpus": 1' + "0" * 30 + "}"),
        ("/api/tasks", '{"command": ["true"], "cores": ' + "9" * 5000 + "}"),
        ("/api/tasks/wait", '{"task_ids": [18446744073709551616]}'),
        ("/api/tasks/wait", '{"task_ids": ["18446744073709551616"]}'),
        ("/api/tasks/wait", '{"task_ids": ["1"], "timeout": 1e400}'),
        (
            "/api/runner/register",
            _json({"hostname": "big", "url": "http://127.0.0.1:1", "cores": 2**64, "memory": 1}),
        ),
        ("/api/runner/register", _json({"hostname": "big", "url": "http://127.0.0.1:1", "cores": 1, "memory": 2**63})),
        ("/api/runner/tasks/1/status", _json({"hostname": "n1", "state": "completed", "exit_code": 2**62 * 1000})),
        (
            "/api/runner/register",
            _json(
                {
                    "hostname": "big",
                    "url": "http://127.0.0.1:1",
                    "cores": 1,
                    "memory": 1,
                    "gpus": [{"index": 0, "memory_total": 2**64}],
                }
            ),
        ),
        (
            "/api/runner/register",
            _json(
                {
                    "hostname": "big",
                    "url": "http://127.0.0.1:1",
                    "cores": 1,
                    "memory": 1,
                    "numa": [{"id": 0, "cpus": [2**64], "memory": 1}],
                }
            ),
        ),
    ],
)
def test_integers_beyond_64_bits_are_refused(client: Client, target: str, body: str) -> None:
    client.refused("POST", target, body)


@pytest.mark.parametrize(
    "target",
    [
        "/api/tasks/18446744073709551616",
        "/api/tasks/" + "9" * 400,
        "/api/tasks?limit=" + "9" * 400,
        "/api/tasks?before=9223372036854775808",
        "/api/tasks/1/logs?offset=" + "9" * 30,
        "/api/tasks?limit=" + "9" * 5000,  # more digits than int() itself takes
        "/api/tasks/" + "9" * 5000,
    ],
)
def test_ids_and_numbers_beyond_64_bits_in_paths_and_queries(client: Client, target: str) -> None:
    client.refused("GET", target)


# ---------------------------------------------------------- non-UTF-8 bytes
def test_non_utf8_bytes_in_the_authorization_header(client: Client) -> None:
    error = client.refused("GET", "/api/health", headers={"Authorization": b"Bearer \xff\xfe\xc3("})
    assert error["code"] == "unauthorized"


def test_non_utf8_bytes_in_the_node_key_header(client: Client) -> None:
    """The node key of a node bound to its runner is checked against its hash."""
    key = "odd-inputs-node-key-0001"
    register = {"hostname": "bound", "url": "http://127.0.0.1:1", "cores": 1, "memory": 1, "node_key": key}
    assert client.send("POST", "/api/runner/register", _json(register)).status == 200
    try:
        for odd in (b"\xff\xfe-not-utf8-at-all", "caf\u00e9-latin-1".encode("latin-1"), b"\xc3\xa9t\xc3\xa9-utf8-key"):
            error = client.refused(
                "POST", "/api/runner/heartbeat", _json({"hostname": "bound"}), headers={"X-HakuRiver-Node-Key": odd}
            )
            assert error["code"] == "forbidden", error
        ok = client.send(
            "POST", "/api/runner/heartbeat", _json({"hostname": "bound"}), headers={"X-HakuRiver-Node-Key": key}
        )
        assert ok.status == 200, ok
    finally:
        assert client.send("POST", "/api/nodes/bound/forget").status == 200


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("POST", "/api/tasks", b'{"command": ["\xff\xfe"]}'),
        ("POST", "/api/tasks", b"\xff\xfe{\x00}"),
        ("GET", "/api/tasks?node=%FF%FE", None),
        ("GET", "/api/tasks?user=%C3%28", None),
        ("GET", "/api/nodes/%FF%FE", None),
        ("DELETE", "/api/users/%C3%28", None),
        ("GET", "/api/environments/tarballs?name=%FF", None),
    ],
)
def test_non_utf8_bytes_in_bodies_paths_and_queries(
    client: Client, method: str, target: str | bytes, body: bytes | None
) -> None:
    client.refused(method, target, body)


# ------------------------------------------------- names with a trailing newline
@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        (
            "POST",
            "/api/runner/register",
            _json({"hostname": "n1\n", "url": "http://127.0.0.1:1", "cores": 1, "memory": 1}),
        ),
        ("POST", "/api/users", _json({"name": "bob\n"})),
        ("POST", "/api/tasks", _json({"command": ["true"], "env": {"A\n": "x"}})),
        ("POST", "/api/tasks", _json({"command": ["true"], "container": "env\n"})),
        ("POST", "/api/tasks", _json({"command": ["true"], "targets": ["n1\n"]})),
        ("GET", "/api/nodes/n1%0A", None),
        ("GET", "/api/tasks?node=n1%0A", None),
        ("GET", "/api/tasks/1%0A", None),
        ("POST", "/api/environments/containers/env%0A/start", None),
    ],
)
def test_names_with_a_trailing_newline_are_refused(client: Client, method: str, target: str, body: str | None) -> None:
    client.refused(method, target, body)


# --------------------------------------------------------------------- NUL
@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("POST", "/api/tasks", _json({"command": ["echo", "a\x00b"]})),
        ("POST", "/api/tasks", _json({"command": ["true"], "env": {"A": "x\x00"}})),
        ("POST", "/api/users", _json({"name": "bob", "unix_user": "bob\x00"})),
        ("POST", "/api/environments/containers/env", _json({"image": "busybox\x00"})),
        ("POST", "/api/runner/tasks/1/status", _json({"hostname": "n1", "state": "failed", "error": "a\x00"})),
        ("GET", "/api/tasks?node=n1%00", None),
        ("GET", "/api/nodes/n1%00", None),
    ],
)
def test_nul_characters_are_refused(client: Client, method: str, target: str, body: str | None) -> None:
    client.refused(method, target, body)


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/api/health", {"X-Odd": b"a\x00b"}),
        ("/api/health", {"Authorization": b"Bearer tok\x00"}),
        (b"/api/nodes/\xff\xfe", {}),
        ("/api/health", {"X-Long": b"x" * 9000}),
    ],
)
def test_parser_errors_are_400_and_the_host_survives(
    client: Client, target: str | bytes, headers: dict[str, bytes]
) -> None:
    """aiohttp's HTTP parser refuses a control character in a header, raw
    non-ASCII bytes in the request line and an 8 KiB header before any route
    runs: a 400, but plain text (see `hakuriver.webapi` for why it cannot be
    JSON). The Host serves the next request as usual."""
    answer = client.send("GET", target, headers=headers)
    assert answer.status == 400
    assert client.send("GET", "/api/health").status == 200


# ---------------------------------------------------------- wrong JSON types
@pytest.mark.parametrize(
    ("target", "body", "needle"),
    [
        ("/api/tasks", {"command": "echo hi"}, "expected array, got string"),
        ("/api/tasks", {"command": ["true"], "cores": "2"}, "expected integer, got string"),
        ("/api/tasks", {"command": ["true"], "cores": 2.5}, "got number"),
        ("/api/tasks", {"command": ["true"], "env": []}, "got array"),
        ("/api/tasks", {"command": [1, 2]}, ""),
        ("/api/tasks", {"command": ["true"], "privileged": "no"}, "got string"),
        ("/api/tasks/wait", {"task_ids": "1"}, "got string"),
        ("/api/tasks/wait", {"task_ids": [{"id": 1}]}, ""),
        ("/api/users", {"name": ["bob"]}, "got array"),
        ("/api/users/admin/tokens", {"revoke_all": "yes"}, "got string"),
        ("/api/runner/heartbeat", {"hostname": "n1", "stats": []}, "got array"),
        # (A malformed 'capabilities' is dropped, never refused: see test_host_states.py.)
        ("/api/runner/register", {"hostname": "n1", "url": "http://x", "cores": 1, "memory": 1, "numa": "x"}, ""),
        ("/api/runner/register", {"hostname": "n1", "url": "http://x", "cores": 1, "memory": 1, "gpus": [1]}, ""),
        ("/api/runner/register", {"hostname": 5, "url": "http://x", "cores": 1, "memory": 1}, "got integer"),
    ],
)
def test_wrong_json_types_are_refused(client: Client, target: str, body: Any, needle: str) -> None:
    assert needle in client.refused("POST", target, _json(body))["message"]


@pytest.mark.parametrize("body", ["[1, 2]", '"text"', "null", "3", "true"])
def test_a_body_that_is_not_an_object_is_refused(client: Client, body: str) -> None:
    assert "expected a JSON object" in client.refused("POST", "/api/tasks", body)["message"]


# ----------------------------------------------------------------- empty bodies
@pytest.mark.parametrize(
    "target", ["/api/tasks", "/api/tasks/wait", "/api/users", "/api/runner/register", "/api/runner/heartbeat"]
)
def test_an_empty_body_is_refused_where_one_is_required(client: Client, target: str) -> None:
    assert "empty body" in client.refused("POST", target, b"")["message"]
    client.refused("POST", target, None, content_type=None)


def test_a_body_of_options_only_may_be_left_out(client: Client) -> None:
    """POST /api/users/{name}/tokens has only options: no body means the defaults."""
    answer = client.send("POST", "/api/users/nobody/tokens", None, content_type=None)
    assert answer.status == 404 and answer.json["error"]["code"] == "not_found", answer


# ------------------------------------------------------------ wrong Content-Type
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_a_json_route_refuses_other_content_types(client: Client, content_type: str | None) -> None:
    error = client.refused("POST", "/api/tasks", _json({"command": ["true"]}), content_type=content_type)
    assert "application/json" in error["message"]


def test_a_json_body_is_utf8_only(client: Client) -> None:
    error = client.refused(
        "POST", "/api/tasks", _json({"command": ["true"]}), content_type="application/json; charset=latin-1"
    )
    assert "UTF-8" in error["message"]
    client.refused("POST", "/api/tasks", '{"command": ["true"]}'.encode("utf-16"))


# ---------------------------------------------- other things JSON can spell
@pytest.mark.parametrize(
    "body",
    [
        '{"command": ["\\ud800"]}',  # a lone surrogate: cannot be stored or sent as UTF-8
        '{"command": ["true"], "env": {"\\udfff": "x"}}',
        '{"command": ["true"], "cores": NaN}',
        '{"command": ["true"], "cores": Infinity}',
        '{"command": ["true"], "cores": -Infinity}',
        '{"command": ["true"], "memory": 1e999}',
        '{"command": ["true"]',
        '{"command": ["true"]} trailing',
        "\ufeff{}",
    ],
)
def test_json_no_field_may_hold(client: Client, body: str) -> None:
    client.refused("POST", "/api/tasks", body)


# ------------------------------------------------ wrong method, unknown path
@pytest.mark.parametrize(
    ("method", "target", "allowed"),
    [
        ("DELETE", "/api/tasks", {"GET", "HEAD", "POST"}),
        ("PUT", "/api/tasks/1", {"GET", "HEAD"}),
        ("GET", "/api/tasks/wait", {"POST"}),
        ("GET", "/api/runner/heartbeat", {"POST"}),
        ("PUT", "/api/users/bob", {"DELETE", "PATCH"}),
    ],
)
def test_a_wrong_method_is_405_with_allow(client: Client, method: str, target: str, allowed: set[str]) -> None:
    answer = client.send(method, target)
    assert answer.status == 405, answer
    assert {m.strip() for m in answer.headers["Allow"].split(",")} == allowed
    assert answer.json["error"]["code"] == "method_not_allowed"


def test_an_unknown_path_is_404_json(client: Client) -> None:
    answer = client.send("GET", "/api/no-such-thing")
    assert answer.status == 404 and answer.json["error"]["code"] == "not_found"
    answer = client.send("GET", "/api/no-such-thing", headers={"Authorization": "Bearer wrong"})
    assert answer.status == 401 and answer.json["error"]["code"] == "unauthorized"


# ------------------------------------------------------------------ the Runner
def test_the_runner_refuses_the_same_inputs(cluster: ThreadedCluster, node_name: str) -> None:
    """The Runner's API reads bodies and answers errors with the same helpers."""
    runner = cluster.add_runner(node_name)
    client = Client(cluster)
    client.url, client.auth = runner.url, f"Bearer {runner.order_token}"
    deep = "[" * 100_000 + "]" * 100_000
    assert "nested too deeply" in client.refused("POST", "/api/tasks", deep)["message"]
    client.refused("POST", "/api/tasks", '{"task_id": "1", "cores": 18446744073709551616}')
    client.refused("POST", "/api/tasks", b'{"task_id": "\xff"}')
    client.refused("POST", "/api/tasks/%C2%B2/kill")
    answer = client.send("DELETE", "/api/tasks")
    assert answer.status == 405 and {m.strip() for m in answer.headers["Allow"].split(",")} == {"GET", "HEAD", "POST"}
    assert answer.json["error"]["code"] == "method_not_allowed"
    assert client.send("GET", "/api/health").status == 200
