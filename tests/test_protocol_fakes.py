"""The hand-written stand-ins of the other side serve only routes the real side has.

Three fakes answer in place of a real peer: `tests/cli/fakehost.py` (a Host, for
the CLIs), `FakeRunner` in tests/host/test_host_states.py and `SimCluster` in
bench/run.py (runners, for the Host). A fake that serves a route the real
peer lacks tests a client against an API that does not exist; these checks
compare each fake's routes (method and path, placeholder names aside) with
host/openapi.yaml, and with the real runner's route list, the way
tests/cli/test_openapi.py compares the Host's own routes with the document.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from hakuriver.host.api import ROUTES as HOST_ROUTES
from hakuriver.runner.api import ROUTES as RUNNER_ROUTES

Route = tuple[str, str]
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
_PLACEHOLDER = re.compile(r"{[^}]*}")
_GROUP = re.compile(r"\(\?P<(\w+)>([^()]*)\)")
_LITERALS = re.compile(r"^[\w.-]+(\|[\w.-]+)*$")


def normalise(path: str) -> str:
    """`/api/tasks/{task_id}` and `/api/tasks/{tid}` name the same route."""
    return _PLACEHOLDER.sub("{}", path)


def served(app: web.Application, prefix: str = "") -> set[Route]:
    """(METHOD, path) of every route `app` serves, paths without `prefix`.

    A placeholder restricted to literals (`{action:kill|pause}`) counts as one
    route per literal; aiohttp's implicit HEAD of a GET is left out.
    """
    out: set[Route] = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        paths = [info["path"]] if "path" in info else [info["formatter"]]
        for name, body in _GROUP.findall(info["pattern"].pattern) if "pattern" in info else ():
            if _LITERALS.match(body):
                paths = [p.replace("{" + name + "}", literal) for p in paths for literal in body.split("|")]
        for path in paths:
            assert path.startswith(prefix), f"{route.method} {path} is not under {prefix!r}"
            out.add((route.method, normalise(path[len(prefix) :])))
    return out


def app_of(routes: list[web.RouteDef]) -> web.Application:
    app = web.Application()
    app.add_routes(routes)
    return app


@pytest.fixture(scope="module")
def documented_host() -> set[Route]:
    text = resources.files("hakuriver.host").joinpath("openapi.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    return {(m.upper(), normalise(path)) for path, item in doc["paths"].items() for m in item if m in HTTP_METHODS}


@pytest.fixture(scope="module")
def real_runner() -> set[Route]:
    return served(app_of(RUNNER_ROUTES))


def test_the_checker_sees_what_a_fake_gets_wrong(documented_host: set[Route], real_runner: set[Route]) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = app_of(
        [
            web.post("/api/tasks/{id}/pause", handler),
            web.post("/api/tasks/{task_id}/{action:kill|stop}", handler),
            web.post("/api/tasks/{task_id}/{action}", handler),
        ]
    )
    assert served(app) == {
        ("POST", "/api/tasks/{}/pause"),
        ("POST", "/api/tasks/{}/kill"),
        ("POST", "/api/tasks/{}/stop"),
        ("POST", "/api/tasks/{}/{}"),
    }
    assert served(app) - real_runner == {("POST", "/api/tasks/{}/stop"), ("POST", "/api/tasks/{}/{}")}
    # The Host's own routes are exactly its document (the check of tests/cli/test_openapi.py).
    assert served(app_of(HOST_ROUTES)) == documented_host


def test_the_cli_fake_host_serves_only_documented_routes(documented_host: set[Route]) -> None:
    from tests.cli.fakehost import FakeHost

    routes = served(FakeHost().make_app())
    assert routes - documented_host == set(), "tests/cli/fakehost.py serves routes openapi.yaml does not document"
    assert ("POST", "/api/tasks/{}/kill") in routes  # the checker read its routes


def test_the_host_tests_fake_runner_serves_only_runner_routes(real_runner: set[Route]) -> None:
    from tests.host.test_host_states import FakeRunner

    routes = served(FakeRunner(batch=True).app)
    assert routes - real_runner == set(), "FakeRunner serves routes hakuriver.runner.api.ROUTES lacks"
    assert {("POST", "/api/tasks"), ("POST", "/api/tasks/batch")} <= routes


def test_the_bench_simulated_runners_serve_only_runner_routes(real_runner: set[Route], tmp_path: Path) -> None:
    from bench.run import HostSetup, SimCluster

    sim = SimCluster(HostSetup(tmp_path))
    routes = served(sim.app, prefix="/r/{name}")
    assert routes - real_runner == set(), "bench SimCluster serves routes hakuriver.runner.api.ROUTES lacks"
    assert {("POST", "/api/tasks"), ("POST", "/api/tasks/batch")} <= routes
