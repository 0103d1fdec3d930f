"""host/openapi.yaml documents exactly the Host's routes, and is self-consistent."""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
import yaml

from hakuriver.host.accounts import Principal
from hakuriver.host.api.tasks import task_view
from hakuriver.models import Task, TaskState

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    text = resources.files("hakuriver.host").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in HTTP_METHODS}


def test_every_route_is_documented_and_nothing_else(doc):
    from hakuriver.host.api import ROUTES

    routes = {(r.method.upper(), r.path) for r in ROUTES}
    documented = _documented(doc)
    assert routes - documented == set(), "routes missing from openapi.yaml"
    assert documented - routes == set(), "openapi.yaml documents routes the Host does not have"


def test_bearer_auth_is_global(doc):
    assert doc["openapi"].startswith("3.1")
    assert doc["security"] == [{"bearerAuth": []}]
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                assert "security" not in op, f"{method} {path} overrides the global bearer requirement"
                assert "401" in op["responses"], f"{method} {path} does not document 401"


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_every_ref_resolves(doc):
    for node in _walk(doc):
        if isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            assert ref.startswith("#/"), ref
            target: Any = doc
            for part in ref[2:].split("/"):
                assert part in target, f"unresolved $ref {ref}"
                target = target[part]


def test_path_parameters_are_declared(doc):
    for path, item in doc["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            params = [*item.get("parameters", []), *op.get("parameters", [])]
            resolved = []
            for p in params:
                if "$ref" in p:
                    p = doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
                resolved.append(p)
            declared = {p["name"] for p in resolved if p["in"] == "path"}
            assert declared == names, f"{method} {path}: path parameters {declared} != {names}"


def test_error_schema_matches_webapi(doc):
    from hakuriver.webapi import error_body

    error = doc["components"]["schemas"]["Error"]
    assert set(error["required"]) == set(error_body("x", "y"))
    assert set(error["properties"]["error"]["required"]) == set(error_body("x", "y")["error"])


def test_task_schema_matches_the_wire_format(doc):
    task = Task(
        id=1,
        batch_id=1,
        state=TaskState.PENDING,
        command=["true"],
        cores=1,
        memory=None,
        container=None,
        env={},
        mounts=[],
        privileged=False,
        target=None,
    )
    schema = doc["components"]["schemas"]["Task"]
    # The API's view of a task: its record and why it waits (pending_reason,
    # position, and its owner's fair-share usage).
    wire = task_view(task, Principal("someone", "user"))
    assert set(schema["required"]) == set(wire) == set(schema["properties"])
    assert set(wire) - set(task.to_json()) == {"pending_reason", "position", "fairshare_usage", "fairshare_passed_by"}
    assert doc["components"]["schemas"]["TaskState"]["enum"] == [s.value for s in TaskState]


def test_logs_headers_documented(doc):
    ok = doc["paths"]["/api/tasks/{task_id}/logs"]["get"]["responses"]["200"]
    assert set(ok["headers"]) == {"X-HakuRiver-Next-Offset", "X-HakuRiver-Task-State", "X-HakuRiver-Task-Attempt"}
    assert "application/octet-stream" in ok["content"]


def test_every_operation_says_which_role_it_needs(doc):
    from hakuriver.host.accounts import RUNNER_ROUTES

    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            role = op.get("x-hakuriver-role")
            assert role in {"user", "owner", "admin", "runner"}, f"{method} {path}: x-hakuriver-role is {role!r}"
            assert (role == "runner") == path.startswith(RUNNER_ROUTES), f"{method} {path}: role {role}"
            if role != "user":
                assert "403" in op["responses"], f"{method} {path} ({role}) does not document 403"


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def test_every_operation_declares_its_error_statuses(doc):
    """405 with `Allow` everywhere, 413 wherever a JSON body is read, 400
    wherever anything is parsed; every error answer is the one `Error` body."""
    allow = doc["components"]["responses"]["MethodNotAllowed"]["headers"]["Allow"]
    assert allow["required"] is True
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            where = f"{method} {path}"
            responses = op["responses"]
            assert responses.get("405") == {"$ref": "#/components/responses/MethodNotAllowed"}, where
            body = op.get("requestBody")
            if body and "application/json" in body["content"]:
                assert "413" in responses, f"{where} reads a JSON body but does not document 413"
            if body or item.get("parameters") or op.get("parameters"):
                assert "400" in responses, f"{where} parses input but does not document 400"
            for status, response in responses.items():
                if int(status) >= 400:
                    content = _resolve(doc, response)["content"]
                    assert content == {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}, (
                        f"{where} {status}"
                    )
