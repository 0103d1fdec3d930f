"""schemathesis against a real Host process, with the Host's own OpenAPI document.

One Host (`python -m hakuriver.cli.host`, a real SQLite file) on loopback, its
Docker engine unreachable on purpose (DOCKER_HOST names a socket that does not
exist), so that the environment routes answer their documented refusals
instead of pulling images. Every operation of hakuriver/host/openapi.yaml is
one test: schemathesis generates valid and invalid requests (a fixed number
of examples per operation, derandomized, so a run is repeatable) and each
response must

- not be a server error (5xx other than the documented 502/503 of an
  unreachable runner or Docker engine),
- have a status the document declares for the operation,
- have the declared Content-Type, headers and body schema.

Users' routes run with the admin token, the runner routes with the runner
secret. The figures (requests per operation, statuses) are printed at the
end of the module and written to $HAKURIVER_CONFORMANCE_REPORT when set.

What this cannot reach: requests aiohttp's HTTP parser refuses before any
route runs (a malformed request line or header) are answered with a plain-text
400, not JSON; see `hakuriver.webapi` and tests/inproc/test_odd_inputs.py.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.request
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
import toml
from schemathesis.specs.openapi import checks as openapi_checks

from tests.harness.polling import poll
from tests.harness.procs import Proc, child_env, free_port, host_argv, loopback_config

pytestmark = pytest.mark.conformance

MAX_EXAMPLES = 30
"""Examples per operation and generation mode (valid, invalid)."""
SEED = 20150
TIME_LIMIT = 120
"""Seconds one operation may take, all its examples together (pytest-timeout);
the whole module takes about a minute on two busy cores."""

SPEC = Path(str(resources.files("hakuriver.host").joinpath("openapi.yaml")))
CHECKS = [
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.unsupported_method,
]
"""The contract: no server error; every status, Content-Type, header and body as
documented; a method the document does not list answers 405 with `Allow`."""
DOCUMENTED_5XX = [502, 503]
"""A runner or the Docker engine out of reach (`runner_unreachable`, `docker`):
allowed by `not_a_server_error`, and only where the document declares them
(`status_code_conformance`). A 500 is always a failure."""

ADMIN_TOKEN = "conformance-admin-" + secrets.token_hex(8)
RUNNER_TOKEN = "conformance-runner-" + secrets.token_hex(8)

schema = schemathesis.openapi.from_path(
    SPEC,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", *DOCUMENTED_5XX]}},
        }
    ),
)

# An event stream is open for minutes (its contract: tests/inproc/test_dashboard_api.py).
schema = schema.exclude(path="/api/events")

# An uploaded image tarball is bytes on the wire, like application/octet-stream.
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")

FIGURES: dict[str, Counter[int]] = {}
"""Statuses seen, per operation."""


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[str]:
    """The base URL of a Host process with no runner and an unreachable Docker engine."""
    root = tmp_path_factory.mktemp("conformance")
    (root / "shared").mkdir()
    (root / "host_temp").mkdir()
    config = loopback_config(root, port=free_port(), token="", heartbeat_interval=1.0, heartbeat_timeout_factor=3600.0)
    config["auth"] = {"admin_token": ADMIN_TOKEN, "runner_token": RUNNER_TOKEN}
    config["docker"] = {"default_container_name": "conformance-env"}
    path = root / "host.toml"
    path.write_text(toml.dumps(config))
    url = f"http://127.0.0.1:{config['network']['host_port']}"
    env = child_env(root, {"DOCKER_HOST": f"unix://{root}/no-docker.sock"})
    proc = Proc("host", host_argv(path), root / "host.log", env)
    proc.start()
    try:

        def up() -> bool:
            if not proc.alive:
                raise AssertionError(f"the Host exited:\n{proc.tail()}")
            req = urllib.request.Request(url + "/api/health", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            with urllib.request.urlopen(req, timeout=2) as resp:
                return resp.status == 200

        poll(up, timeout=30, what="the Host to answer /api/health", ignore=(OSError,))
        _register_node(url)
        yield url
        assert proc.alive, f"the Host died during the run:\n{proc.tail()}"
    finally:
        proc.stop()
        _report(request)


def _register_node(url: str) -> None:
    """A node, so that submissions are accepted (201) rather than all refused
    as unschedulable. Its runner URL is a closed port: dispatching to it fails
    at once and the tasks stay queued, which is all the fuzzer needs."""
    body = {
        "hostname": "conformance-node",
        "url": f"http://127.0.0.1:{free_port()}",
        "cores": 4096,
        "memory": 1 << 50,
        "numa": [{"id": 0, "cpus": [0, 1], "memory": 1 << 40}],
        "gpus": [{"index": i, "name": "fake", "uuid": f"GPU-{i}", "memory_total": 1 << 34} for i in range(8)],
    }
    req = urllib.request.Request(
        url + "/api/runner/register",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {RUNNER_TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def _report(request: pytest.FixtureRequest) -> None:
    total: Counter[int] = Counter()
    for statuses in FIGURES.values():
        total.update(statuses)
    summary: dict[str, Any] = {
        "operations": len(FIGURES),
        "requests": sum(total.values()),
        "2xx": sum(n for s, n in total.items() if 200 <= s < 300),
        "4xx": sum(n for s, n in total.items() if 400 <= s < 500),
        "5xx": sum(n for s, n in total.items() if s >= 500),
        "statuses": {str(s): n for s, n in sorted(total.items())},
        "per_operation": {op: dict(sorted(c.items())) for op, c in sorted(FIGURES.items())},
    }
    if out := os.environ.get("HAKURIVER_CONFORMANCE_REPORT"):
        Path(out).write_text(json.dumps(summary, indent=2))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"conformance: {summary['operations']} operations, {summary['requests']} requests: "
            f"2xx {summary['2xx']}, 4xx {summary['4xx']}, 5xx {summary['5xx']} ({summary['statuses']})"
        )


@pytest.mark.timeout(TIME_LIMIT)
@schema.parametrize()
@hypothesis.settings(
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    print_blob=False,
)
def test_the_host_keeps_its_contract(case: schemathesis.Case, host: str) -> None:
    token = RUNNER_TOKEN if case.path.startswith("/api/runner/") else ADMIN_TOKEN
    response = case.call(base_url=host, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    FIGURES.setdefault(case.operation.label, Counter())[response.status_code] += 1
    case.validate_response(response, checks=CHECKS)
