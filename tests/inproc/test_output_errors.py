"""A result with incomplete output, from the runner's executor to the Host's record:
the real Host and Runner apps in one loop, with a backend that reports an
output fault (what the Docker backend does on ENOSPC: tests/runner/test_docker_output_faults.py)."""

from __future__ import annotations

import dataclasses

import pytest

from hakuriver.host import app as host_app
from hakuriver.host.api import runners as runner_routes
from hakuriver.models import ExitResult
from hakuriver.runner.executors.base import Handle

from .cluster import InProcCluster, StagedExecutor
from .conftest import ClusterFactory

FLAG = "stdout: No space left on device (ENOSPC) after 1M written"


class FullDiskExecutor(StagedExecutor):
    """The fake backend; a task whose argv ends in `full` loses its output."""

    async def wait(self, handle: Handle) -> ExitResult:
        result = await super().wait(handle)
        if self.specs[handle.task_id].command[-1] == "full":
            return dataclasses.replace(result, output_error=FLAG)
        return result


async def test_the_host_records_the_flag_next_to_the_real_end(inproc: InProcCluster) -> None:
    await inproc.add_runner("n1", executors={"docker": FullDiskExecutor("n1", name="docker")})
    lossy = await inproc.submit(["fake", "exit", "3", "full"])
    clean = await inproc.submit(["fake", "exit", "0"])
    [a, b] = (await inproc.client.wait([lossy, clean], timeout=20))["tasks"]
    assert (a["state"], a["exit_code"], a["output_error"]) == ("failed", 3, FLAG)
    assert a["error"] == "exited with code 3"
    assert (b["state"], b["exit_code"], b["output_error"]) == ("completed", 0, None)


async def test_a_host_from_before_the_field_gets_it_in_error(
    inproc_factory: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Host from before the field is from before batched reports too.
    monkeypatch.setattr(host_app, "ROUTES", [r for r in host_app.ROUTES if r.path != "/api/runner/reports"])
    monkeypatch.setattr(runner_routes, "REPORT_FIELDS", {"hostname", "state", "exit_code", "error"})
    inproc = await inproc_factory()
    await inproc.add_runner("old", executors={"docker": FullDiskExecutor("old", name="docker")})
    task_id = await inproc.submit(["fake", "exit", "0", "full"])
    [task] = (await inproc.client.wait([task_id], timeout=20))["tasks"]
    assert (task["state"], task["exit_code"], task["output_error"]) == ("completed", 0, None)
    assert task["error"] == f"output incomplete: {FLAG}"
