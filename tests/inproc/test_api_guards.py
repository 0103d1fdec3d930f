"""Auth and bad input against the real Host (and Runner) apps: 4xx with a JSON reason, nothing stored changes."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from .cluster import ThreadedCluster


def raw_post(url: str, body: bytes, token: str, content_type: str = "application/json") -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_every_endpoint_needs_the_token(cluster: ThreadedCluster, node_name: str) -> None:
    runner = cluster.add_runner(node_name)
    for path in ("/api/health", "/api/tasks", "/api/nodes", "/api/openapi.yaml"):
        for token in ("", "wrong-token"):
            status, body = cluster.api("GET", path, token=token)
            assert status == 401, (path, status)
            assert body["error"]["code"] == "unauthorized"
    status, body = cluster.api("POST", "/api/tasks", {"command": ["true"]}, token="nope")
    assert status == 401
    # The runner refuses work without the token.
    runner_url = f"http://127.0.0.1:{runner.port}"
    status, body = raw_post(
        runner_url + "/api/tasks", b'{"task_id": "1", "command": ["true"], "container": "x"}', "bad"
    )
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = cluster.api("GET", "/api/tasks")
    assert status == 200 and body["tasks"] == []


BAD_SUBMISSIONS = [
    ({"command": []}, 400, "must not be empty"),
    ({"command": "echo hi"}, 400, "wrong type"),
    ({"command": ["echo"], "cores": -1}, 400, "core count"),
    ({"command": ["echo"], "cores": "2"}, 400, "wrong type"),
    ({"command": ["echo"], "cores": True}, 400, "boolean"),
    ({"command": ["echo"], "memory": "lots"}, 400, "invalid size"),
    ({"command": ["echo"], "memory": "4P"}, 400, "larger than"),
    ({"command": ["echo"], "cores": 100000}, 400, "core count"),
    ({"command": ["echo"], "targets": ["node1:"]}, 400, "NUMA id"),
    ({"command": ["echo"], "targets": ["bad node"]}, 400, "not a valid node name"),
    ({"command": ["echo"], "targets": ["ghost"]}, 400, "unknown node"),
    ({"command": ["echo"], "env": {"1BAD": "x"}}, 400, "invalid env name"),
    ({"command": ["echo"], "env": {"HAKURIVER_TASK_ID": "x"}}, 400, "reserved"),
    ({"command": ["echo"], "colour": "blue"}, 400, "unknown field"),
    ({"command": ["echo"], "container": "UPPER"}, 400, "lower-case"),
    ({"command": ["echo"], "container": "../etc"}, 400, "invalid environment name"),
    ({"command": ["echo"], "cores": 4096}, 400, "cores"),
]


def test_bad_submissions_are_refused_and_nothing_changes(cluster: ThreadedCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    [good] = cluster.submit(["true"])
    assert cluster.wait_final(good)["state"] == "completed"
    before = cluster.api("GET", "/api/tasks")[1]["tasks"]
    for body, status, needle in BAD_SUBMISSIONS:
        got, reply = cluster.api("POST", "/api/tasks", body)
        assert got == status, (body, got, reply)
        assert needle in reply["error"]["message"], (body, reply)
        assert reply["error"]["code"]
    # Targets that can never fit on the real node.
    node = cluster.node(node_name)
    for target, needle in ((f"{node_name}:7", "NUMA"), (f"{node_name}::0", "GPU")):
        got, reply = cluster.api("POST", "/api/tasks", {"command": ["true"], "targets": [target]})
        assert got == 400 and needle in reply["error"]["message"], reply
    got, reply = cluster.api("POST", "/api/tasks", {"command": ["true"], "cores": node["cores"] + 1})
    assert got == 400 and reply["error"]["code"] == "unschedulable"
    # Malformed bodies.
    url = cluster.url + "/api/tasks"
    for raw in (b"{not json", b"[1,2]", b'"str"', b""):
        got, reply = raw_post(url, raw, cluster.token)
        assert got == 400 and reply["error"]["code"], (raw, reply)
    got, reply = raw_post(url, b'{"command": ["x"], "pad": "' + b"a" * (2 << 20) + b'"}', cluster.token)
    assert got == 413 and reply["error"]["code"] == "body_too_large"
    # Bad ids and queries.
    assert cluster.api("GET", "/api/tasks/abc")[0] == 400
    assert cluster.api("GET", "/api/tasks/123")[0] == 404
    assert cluster.api("GET", "/api/tasks?state=bogus")[0] == 400
    assert cluster.api("GET", "/api/tasks?limit=0")[0] == 400
    assert cluster.api("GET", "/api/nope")[0] == 404
    after = cluster.api("GET", "/api/tasks")[1]["tasks"]
    assert after == before
