"""Docker engine access, harness labels/names, and sweeping of leftovers.

Everything the harness creates is named ``hkr-test-...`` and labelled::

    org.hakuriver.harness=1
    org.hakuriver.test=<pytest nodeid>
    org.hakuriver.session=<id of this pytest process' session>
    org.hakuriver.owner=<hostname>:<pid>:<process start time>
    org.hakuriver.ci-run=<$HAKURIVER_CI_RUN>   (only when scripts/test.sh set it)

``sweep()`` removes labelled containers, then networks, whose owning pytest process is gone
(so two suites sharing one engine do not delete each other's nodes); ``sweep(everything=True)``
removes all of them.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import socket
import subprocess
import uuid
from typing import Any

import docker
import docker.errors

from hakuriver.dockerapi import collect_leaked_socket

from .polling import PollTimeout, poll

HARNESS_LABEL = "org.hakuriver.harness"
TEST_LABEL = "org.hakuriver.test"
SESSION_LABEL = "org.hakuriver.session"
OWNER_LABEL = "org.hakuriver.owner"
# scripts/test.sh gives each run an id: its leftover check counts only what
# carries it, so a developer's own containers on the same engine never fail CI.
CI_RUN_LABEL = "org.hakuriver.ci-run"
CI_RUN_ENV = "HAKURIVER_CI_RUN"
NAME_PREFIX = "hkr-test-"

DOCKERD_LOG = "/var/log/hakuriver-dockerd.log"
ENGINE_START_TIMEOUT = 60.0

SESSION_ID = uuid.uuid4().hex[:10]


def _proc_start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # field 22 (starttime); the command name (field 2) may contain spaces and parentheses.
    return stat.rsplit(")", 1)[1].split()[19]


OWNER = f"{socket.gethostname()}:{os.getpid()}:{_proc_start_time(os.getpid())}"


def owner_alive(owner: str | None) -> bool:
    """Is the pytest process that created a resource (its owner label) still running here?"""
    if not owner:
        return False
    try:
        host, pid_s, start = owner.rsplit(":", 2)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True  # not ours to judge
    try:
        pid = int(pid_s)
    except ValueError:
        return False
    return _proc_start_time(pid) == start


def harness_labels(test_id: str = "") -> dict[str, str]:
    """Labels for anything a test creates on the engine (pass the pytest nodeid)."""
    labels = {
        HARNESS_LABEL: "1",
        TEST_LABEL: test_id,
        SESSION_LABEL: SESSION_ID,
        OWNER_LABEL: OWNER,
    }
    run = os.environ.get(CI_RUN_ENV)
    if run:
        labels[CI_RUN_LABEL] = run
    return labels


def harness_name(*parts: str) -> str:
    """``hkr-test-<parts>-<random>``, a valid and unique container/network name."""
    cleaned = []
    for p in parts:
        p = re.sub(r"[^a-zA-Z0-9_.-]+", "-", p).strip("-._")
        if p:
            cleaned.append(p[:40])
    base = "-".join(cleaned)[:80].strip("-._")
    suffix = uuid.uuid4().hex[:6]
    return f"{NAME_PREFIX}{base}-{suffix}" if base else f"{NAME_PREFIX}{suffix}"


class EngineUnavailable(RuntimeError):
    pass


def _ping(client: docker.DockerClient) -> bool:
    return bool(client.ping())


def _try_client(timeout: int = 120) -> docker.DockerClient | None:
    client = None
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception:
        if client is not None:
            client.close()
    # Outside the except block, so the traceback that holds the socket is gone:
    # otherwise pytest fails some later test for its ResourceWarning.
    collect_leaked_socket()
    return None


def _local_engine_expected() -> bool:
    host = os.environ.get("DOCKER_HOST", "")
    return host in ("", "unix:///var/run/docker.sock", "unix:///run/docker.sock")


def _dockerd_running() -> bool:
    try:
        with open("/var/run/docker.pid") as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return False
    return os.path.exists(f"/proc/{pid}")


def _log_tail(path: str, n: int = 40) -> str:
    try:
        with open(path, "rb") as fh:
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(lines[-n:])


def connect_engine(start: bool = True, timeout: float = ENGINE_START_TIMEOUT) -> docker.DockerClient:
    """A client for a reachable engine; starts ``dockerd`` when allowed and needed.

    Starting happens only for a local engine, as root, with ``dockerd`` on PATH; the daemon
    runs in its own session (``setsid``) and logs to ``/var/log/hakuriver-dockerd.log``.
    Raises :class:`EngineUnavailable` with the reason and the daemon log tail.
    """
    client = _try_client()
    if client is not None:
        return client
    why = []
    if not start:
        why.append("not allowed to start dockerd")
    elif not _local_engine_expected():
        why.append(f"DOCKER_HOST={os.environ.get('DOCKER_HOST')} is not a local engine")
    elif os.geteuid() != 0:
        why.append("not root, cannot start dockerd")
    elif shutil.which("dockerd") is None:
        why.append("dockerd is not installed (apt-get install docker.io)")
    else:
        if not _dockerd_running():
            with open(DOCKERD_LOG, "ab") as log:
                subprocess.Popen(
                    ["dockerd"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        try:
            return poll(_try_client, timeout=timeout, interval=0.5, what="docker engine to answer")
        except PollTimeout as exc:
            why.append(str(exc))
        why.append(f"dockerd log tail ({DOCKERD_LOG}):\n{_log_tail(DOCKERD_LOG)}")
    raise EngineUnavailable("no reachable Docker engine: " + "; ".join(why))


def labelled_containers(client: docker.DockerClient, **extra: str) -> list[Any]:
    """The harness's containers, each inspected. A container removed between the
    list and its inspect (a runner removing a finished task's container while a
    test looks) is left out (`ignore_removed`), not a NotFound. Listings that need
    no more than ids, names and states ask for `sparse=True` instead."""
    filters = [f"{HARNESS_LABEL}=1"] + [f"{k}={v}" for k, v in extra.items()]
    return client.containers.list(all=True, filters={"label": filters}, ignore_removed=True)


def labelled_networks(client: docker.DockerClient, **extra: str) -> list[Any]:
    filters = [f"{HARNESS_LABEL}=1"] + [f"{k}={v}" for k, v in extra.items()]
    return client.networks.list(filters={"label": filters})


def remove_container(container: Any) -> None:
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if "already in progress" not in str(exc):
            raise


def remove_network(client: docker.DockerClient, network: Any, timeout: float = 30) -> None:
    """Disconnect whatever is still attached (force), then remove the network."""
    try:
        network.reload()
    except docker.errors.NotFound:
        return
    for c in network.attrs.get("Containers") or {}:
        try:
            network.disconnect(c, force=True)
        except docker.errors.APIError:
            pass

    def _gone() -> bool:
        try:
            network.remove()
        except docker.errors.NotFound:
            return True
        return True

    poll(
        _gone,
        timeout=timeout,
        interval=0.5,
        what=f"removal of network {network.name}",
        ignore=(docker.errors.APIError,),
    )


def _age_seconds(created: str | None) -> float:
    """Age of a docker ``Created`` timestamp (RFC 3339 with nanoseconds); 0 if unparsable."""
    if not created:
        return 0.0
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", created)
    if not m:
        return 0.0
    stamp = m.group(1) + "." + (m.group(2) or "0")[:6] + m.group(3).replace("Z", "+00:00")
    try:
        when = datetime.datetime.fromisoformat(stamp)
    except ValueError:
        return 0.0
    return (datetime.datetime.now(datetime.UTC) - when).total_seconds()


# Containers that carry the harness label only because they were made from a harness image
# (the image's LABEL is inherited), e.g. task containers HakuRiver itself starts in a test,
# have no owner label: nobody can tell whether their session still runs, so they are swept
# only once they are this old.
OWNERLESS_STALE_AFTER_S = 30 * 60


def _is_leftover(labels: dict[str, str], created: str | None) -> bool:
    owner = labels.get(OWNER_LABEL)
    if owner:
        return not owner_alive(owner)
    return _age_seconds(created) > OWNERLESS_STALE_AFTER_S


def sweep(client: docker.DockerClient, everything: bool = False) -> list[str]:
    """Remove labelled leftovers: containers first, then networks. Returns their names.

    Without ``everything`` only leftovers are removed: resources whose owning pytest process
    has ended, and ownerless ones (harness label inherited from an image) older than
    ``OWNERLESS_STALE_AFTER_S``. A suite running concurrently on the same engine is left alone.
    """
    removed = []
    for c in labelled_containers(client):
        if everything or _is_leftover(c.labels, c.attrs.get("Created")):
            remove_container(c)
            removed.append(f"container {c.name}")
    for n in labelled_networks(client):
        if everything or _is_leftover(n.attrs.get("Labels") or {}, n.attrs.get("Created")):
            remove_network(client, n)
            removed.append(f"network {n.name}")
    return removed


def run_leftovers(client: docker.DockerClient, run: str, started_age_s: float) -> list[str]:
    """What one CI run (its `CI_RUN_LABEL` value) left on the engine, for scripts/test.sh.

    Counted: containers and networks carrying the run's label, and ownerless
    harness-labelled containers (task containers HakuRiver itself started from
    a harness image, which inherit only the image's label) created during the
    run, i.e. younger than `started_age_s`. A developer's own containers, and
    another suite's, carry neither and never count.
    """
    found = [f"container {c.name} ({c.status})" for c in labelled_containers(client, **{CI_RUN_LABEL: run})]
    found += [f"network {n.name}" for n in labelled_networks(client, **{CI_RUN_LABEL: run})]
    for c in labelled_containers(client):
        labels = c.labels or {}
        if CI_RUN_LABEL in labels or OWNER_LABEL in labels:
            continue
        if _age_seconds(c.attrs.get("Created")) < started_age_s:
            found.append(f"container {c.name} ({c.status}, started by a HakuRiver under test)")
    return found
