"""What a runner says it can run: the record, and the probe that fills it.

The systemd backend is probed for real (its checks, a subprocess through a
stand-in `sudo`), on synthetic inputs: a missing "/run/systemd/system", a
missing launcher, a sudo that refuses."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from hakuriver.errors import ExecutorError
from hakuriver.models import Capability, NodeCapabilities, NodeResources
from hakuriver.runner import capabilities as caps
from hakuriver.runner.executors.base import Fingerprint
from hakuriver.runner.executors.fake import FakeExecutor
from hakuriver.runner.executors.systemd import SystemdExecutor

# ------------------------------------------------------------------ the record


def test_the_record_round_trips_and_reads_as_one_line() -> None:
    record = NodeCapabilities(docker=Capability(True), null=Capability(False, "systemd is not PID 1"))
    wire = {"docker": {"available": True}, "null": {"available": False, "reason": "systemd is not PID 1"}}
    assert record.to_json() == wire
    assert NodeCapabilities.from_json(wire) == record
    assert record.summary() == "docker (null: systemd is not PID 1)"
    assert record.refusal("null") == "systemd is not PID 1" and record.refusal("docker") is None
    assert NodeCapabilities(docker=Capability(True), null=Capability(True)).summary() == "docker,null"
    assert NodeCapabilities().summary() == "unknown"
    assert NodeCapabilities(docker=Capability(False, "down")).summary() == "none (docker: down)"


def test_what_a_runner_does_not_say_is_no_refusal() -> None:
    assert NodeCapabilities().refusal("null") is None
    assert NodeCapabilities(docker=Capability(True)).refusal("null") is None
    node = NodeResources("old", "http://old:8001", cores=1, memory=1 << 30)
    assert node.capabilities is None and node.refusal("null") is None and node.refusal("docker") is None


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"null": {"available": "yes"}},
        {"null": {"available": False, "lasting": "no"}},
        {"null": {"available": False, "reason": 5}},
        {"null": {"available": False, "why": "x"}},
        {"null": True},
    ],
)
def test_a_malformed_record_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        NodeCapabilities.from_json(bad)


def test_a_reason_is_one_short_printable_line() -> None:
    record = NodeCapabilities.from_json(
        {"null": {"available": False, "reason": "line one\n\x1b[31mline two" + "x" * 500}}
    )
    reason = record.refusal("null")
    assert reason is not None and reason.startswith("line one [31mline two") and len(reason) <= 300
    assert NodeCapabilities.from_json({"null": {"available": False}}).refusal("null") == "no reason given"
    # An available kind carries no reason, whatever was sent.
    assert NodeCapabilities.from_json({"docker": {"available": True, "reason": "x"}}).to_json() == {
        "docker": {"available": True}
    }


# ---------------------------------------------------------- the systemd checks


def executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def systemd(tmp_path: Path, **kw: object) -> SystemdExecutor:
    booted = tmp_path / "run-systemd-system"
    booted.mkdir(exist_ok=True)
    options: dict[str, object] = {"systemd_run_dir": str(booted), "launcher_path": str(tmp_path / "launcher")}
    options.update(kw)
    return SystemdExecutor("n1", **options)  # type: ignore[arg-type]


def test_systemd_not_pid_1_is_the_reason(tmp_path: Path) -> None:
    ex = systemd(tmp_path, systemd_run_dir=str(tmp_path / "absent"))
    assert asyncio.run(ex.unavailable()) == "systemd is not PID 1"


def test_a_missing_launcher_is_the_reason(tmp_path: Path) -> None:
    problem = asyncio.run(systemd(tmp_path).unavailable())
    assert problem is not None and problem.startswith(
        f"the HakuRiver task launcher is not installed at {tmp_path}/launcher"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="a launcher that passes the ownership check must be root's")
def test_a_sudo_rule_that_does_not_work_is_the_reason(tmp_path: Path) -> None:
    """systemd and the launcher are in place, but the runner may not call it as root."""
    launcher = executable(tmp_path / "launcher", '#!/bin/sh\necho \'{"version": "1", "launcher": "L"}\'\n')
    refusing = executable(tmp_path / "sudo", "#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
    ex = systemd(tmp_path, launcher_path=launcher, use_sudo=True, sudo_path=refusing, service_user="hakuriver")
    assert asyncio.run(ex.unavailable()) is None
    record = asyncio.run(caps.probe({"systemd": ex}))
    assert record.null is not None and not record.null.available
    assert record.refusal("null") == (
        "the runner user 'hakuriver' may not run the task launcher as root (sudo: a password is required); "
        "install the sudoers drop-in (hakuriver.init launcher writes it with the launcher)"
    )
    # The same node with a working rule: a sudo that runs what it is given.
    working = executable(tmp_path / "sudo-ok", '#!/bin/sh\n[ "$1" = -n ] && [ "$2" = -- ] && shift 2 && exec "$@"\n')
    ex = systemd(tmp_path, launcher_path=launcher, use_sudo=True, sudo_path=working)
    assert asyncio.run(caps.probe({"systemd": ex})).null == Capability(True)


# --------------------------------------------------------------------- the probe


class Broken(FakeExecutor):
    def __init__(self, error: str | None = None, gate: asyncio.Event | None = None):
        super().__init__("n1")
        self.error = error
        self.gate = gate
        self.entered = asyncio.Event()

    async def fingerprint(self) -> Fingerprint:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error:
            raise ExecutorError(self.error)
        return await super().fingerprint()


def test_probe_says_why_for_each_kind() -> None:
    record = asyncio.run(caps.probe({}, {"systemd": "systemd is not PID 1"}))
    assert record.to_json() == {
        "docker": {"available": False, "reason": "this runner has no docker executor"},
        "null": {"available": False, "reason": "systemd is not PID 1"},
    }
    record = asyncio.run(caps.probe({"docker": Broken("cannot reach the Docker engine: refused"), "systemd": Broken()}))
    assert record.refusal("docker") == "cannot reach the Docker engine: refused"
    assert record.null == Capability(True)


def test_a_backend_that_does_not_answer_is_unavailable_after_the_timeout() -> None:
    async def main() -> NodeCapabilities:
        return await caps.probe({"docker": Broken(gate=asyncio.Event()), "systemd": Broken()}, timeout=0.05)

    record = asyncio.run(main())
    assert record.refusal("docker") == "the fake executor did not answer within 0.05s"
    assert record.null == Capability(True)


def test_the_watch_answers_at_once_while_a_probe_is_slow() -> None:
    """A heartbeat reads `current`; a slow probe never makes it wait."""

    async def main() -> None:
        docker = Broken()
        watch = caps.CapabilityWatch({"docker": docker, "systemd": Broken()}, interval=3600)
        await watch.start()
        assert watch.current.docker == Capability(True)
        docker.gate, docker.error = asyncio.Event(), "engine gone"
        docker.entered.clear()
        probing = asyncio.create_task(watch.refresh())
        await asyncio.wait_for(docker.entered.wait(), 5)  # the probe is under way, and blocked
        assert not probing.done() and watch.current.docker == Capability(True)
        docker.gate.set()
        assert (await probing).refusal("docker") == "engine gone"
        assert watch.current.refusal("docker") == "engine gone"
        await watch.close()

    asyncio.run(main())


def test_kinds_this_code_does_not_know_are_ignored() -> None:
    # A newer runner may report more kinds; it must not be turned away.
    record = NodeCapabilities.from_json({"gpu": {"available": True}, "null": {"available": True}})
    assert record.to_json() == {"null": {"available": True}}


def test_a_passing_outage_is_not_a_lasting_refusal() -> None:
    record = NodeCapabilities.from_json({"docker": {"available": False, "reason": "engine down", "lasting": False}})
    assert record.refusal("docker") == "engine down"
    assert record.refusal("docker", lasting_only=True) is None
    assert record.to_json() == {"docker": {"available": False, "reason": "engine down", "lasting": False}}
