"""systemd "nodes": containers that boot systemd as PID 1, and containers in general.

Run flags (tests/../shared spec "test-environment.md")::

    --cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined
    --tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:rw --cgroupns=host
    IMAGE /lib/systemd/systemd            (+ --cap-add NET_ADMIN for docker-in-node)
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors

from .engine import harness_labels, harness_name, remove_container
from .polling import PollTimeout, poll

DEFAULT_BOOT_TIMEOUT = 120.0
DEFAULT_EXEC_TIMEOUT = 120.0


class CommandFailed(AssertionError):
    def __init__(self, result: ExecResult):
        self.result = result
        super().__init__(str(result))


@dataclass
class ExecResult:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    where: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self) -> ExecResult:
        if self.rc != 0:
            raise CommandFailed(self)
        return self

    def __str__(self) -> str:
        shown = [a if len(a) <= 120 else a[:100] + f"...<{len(a)} chars>" for a in self.argv]
        return (
            f"{shown!r} in {self.where} exited {self.rc}\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )


def docker_exec(
    container: str,
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float = DEFAULT_EXEC_TIMEOUT,
) -> ExecResult:
    """``docker exec`` an argv list (no shell involved) and collect rc/stdout/stderr.

    Uses the docker CLI (same engine as the SDK: DOCKER_HOST or the local socket) because it
    gives separate streams, stdin and a timeout. On timeout raises ``subprocess.TimeoutExpired``
    (the command may keep running inside the container until it is removed).
    """
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a list of strings, not a shell string")
    cmd = ["docker", "exec"]
    if input is not None:
        cmd.append("-i")
    if user is not None:
        cmd += ["--user", user]
    if workdir is not None:
        cmd += ["--workdir", workdir]
    for k, v in (env or {}).items():
        cmd += ["--env", f"{k}={v}"]
    cmd.append(container)
    cmd += [str(a) for a in argv]
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        cmd,
        input=data,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=None if data is not None else subprocess.DEVNULL,
        timeout=timeout,
    )
    result = ExecResult(
        argv=list(argv),
        rc=proc.returncode,
        stdout=proc.stdout.decode(errors="replace"),
        stderr=proc.stderr.decode(errors="replace"),
        where=container,
    )
    return result.check() if check else result


def _tar_of(local_path: str, arcname: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(local_path, arcname=arcname or os.path.basename(os.path.normpath(local_path)))
    return buf.getvalue()


class ContainerHandle:
    """exec / copy helpers shared by nodes and plain containers."""

    def __init__(self, container: Any):
        self.container = container

    @property
    def name(self) -> str:
        return self.container.name

    @property
    def id(self) -> str:
        return self.container.id

    def exec(
        self,
        argv: Sequence[str],
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = DEFAULT_EXEC_TIMEOUT,
        workdir: str | None = None,
        input: str | bytes | None = None,
    ) -> ExecResult:
        """Run ``argv`` (a list; pass ["sh", "-c", ...] yourself if you want a shell).

        ``check=True`` raises :class:`CommandFailed` (an AssertionError) on a non-zero rc.
        """
        return docker_exec(
            self.name, argv, user=user, env=env, check=check, timeout=timeout, workdir=workdir, input=input
        )

    def copy_in(self, local_path: str | os.PathLike[str], dest_dir: str, arcname: str | None = None) -> str:
        """Copy a local file or directory into ``dest_dir`` (created if missing).

        Returns the path it got inside the container. Ownership inside is root.
        """
        local_path = os.fspath(local_path)
        name = arcname or os.path.basename(os.path.normpath(local_path))
        self.exec(["mkdir", "-p", dest_dir])
        data = _tar_of(local_path, name)
        if not self.container.put_archive(dest_dir, data):
            raise RuntimeError(f"put_archive of {local_path} into {self.name}:{dest_dir} failed")
        return os.path.join(dest_dir, name)

    def write_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Create/replace a file inside the container."""
        data = content.encode() if isinstance(content, str) else content
        info = tarfile.TarInfo(os.path.basename(path))
        info.size = len(data)
        info.mode = mode
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.addfile(info, io.BytesIO(data))
        parent = os.path.dirname(path) or "/"
        self.exec(["mkdir", "-p", parent])
        if not self.container.put_archive(parent, buf.getvalue()):
            raise RuntimeError(f"writing {self.name}:{path} failed")

    def read_bytes(self, path: str) -> bytes:
        stream, _stat = self.container.get_archive(path)
        buf = io.BytesIO(b"".join(stream))
        with tarfile.open(fileobj=buf) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    fh = tar.extractfile(member)
                    assert fh is not None
                    return fh.read()
        raise IsADirectoryError(f"{self.name}:{path} is not a regular file")

    def read_file(self, path: str) -> str:
        """Contents of a file inside the container, decoded as UTF-8."""
        return self.read_bytes(path).decode(errors="replace")

    def ip(self, network_name: str) -> str:
        """IPv4 address on a docker network (name of the network, or a Network object)."""
        name = getattr(network_name, "name", network_name)
        self.container.reload()
        nets = self.container.attrs["NetworkSettings"]["Networks"]
        if name not in nets or not nets[name].get("IPAddress"):
            raise KeyError(f"{self.name} has no address on network {name!r}; it is on {list(nets)}")
        return nets[name]["IPAddress"]

    def status(self) -> str:
        try:
            self.container.reload()
        except docker.errors.NotFound:
            return "removed"
        return self.container.status

    def logs(self, tail: int = 100) -> str:
        try:
            return self.container.logs(tail=tail).decode(errors="replace")
        except docker.errors.APIError as exc:
            return f"(no logs: {exc})"

    def remove(self) -> None:
        remove_container(self.container)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Node(ContainerHandle):
    """A container booted into systemd. See :class:`NodeFactory` for creating one."""

    def __init__(self, container: Any, hostname: str, docker_in_node: bool):
        super().__init__(container)
        self.hostname = hostname
        self.docker_in_node = docker_in_node

    def system_state(self) -> str:
        r = self.exec(["systemctl", "is-system-running"], check=False, timeout=30)
        return r.stdout.strip() or r.stderr.strip()

    def diagnostics(self, journal_lines: int = 60) -> str:
        """systemctl --failed, the journal tail and the container log, for failure messages."""
        parts = [f"=== node {self.name} (status {self.status()}) ==="]
        if self.status() == "running":
            for argv in (
                ["systemctl", "is-system-running"],
                ["systemctl", "--failed", "--no-pager"],
                ["journalctl", "-b", "--no-pager", "-n", str(journal_lines)],
            ):
                try:
                    r = self.exec(argv, check=False, timeout=30)
                    parts.append(f"$ {' '.join(argv)}  (rc={r.rc})\n{r.stdout}{r.stderr}")
                except subprocess.TimeoutExpired:
                    parts.append(f"$ {' '.join(argv)}  (timed out)")
        parts.append(f"--- docker logs ---\n{self.logs(40)}")
        return "\n".join(parts)

    def wait_booted(self, timeout: float = DEFAULT_BOOT_TIMEOUT) -> str:
        """Wait until ``systemctl is-system-running`` says running or degraded."""

        def booted() -> str | None:
            if self.status() != "running":
                raise RuntimeError(f"node container is {self.status()}:\n{self.logs(40)}")
            state = self.system_state()
            return state if state in ("running", "degraded") else None

        return poll(
            booted,
            timeout=timeout,
            interval=0.25,
            what=f"systemd in {self.name} to reach running/degraded",
            on_timeout=self.diagnostics,
        )

    def wait_unit_active(self, unit: str, timeout: float = 60) -> None:
        poll(
            lambda: self.exec(["systemctl", "is-active", unit], check=False).rc == 0,
            timeout=timeout,
            interval=0.25,
            what=f"{unit} active in {self.name}",
            on_timeout=lambda: self.exec(["systemctl", "status", "--no-pager", "-l", unit], check=False).stdout,
        )

    def wait_docker(self, timeout: float = 90) -> None:
        """Wait until the inner dockerd answers (docker_in_node nodes)."""
        poll(
            lambda: self.exec(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=30).rc == 0,
            timeout=timeout,
            interval=0.5,
            what=f"inner dockerd in {self.name}",
            on_timeout=lambda: (
                self.exec(
                    ["journalctl", "-b", "--no-pager", "-n", "40", "-u", "docker", "-u", "containerd"], check=False
                ).stdout
            ),
        )

    def load_image(self, image: str, timeout: float = 300) -> None:
        """Copy an image of the outer engine into the inner one (docker save | docker load)."""
        from tests.images import load_image_into_node

        self.wait_docker()
        load_image_into_node(self.name, image, timeout=timeout)


@dataclass
class _Tracker:
    test_id: str
    client: docker.DockerClient
    handles: list[ContainerHandle] = field(default_factory=list)

    def cleanup(self) -> list[str]:
        errors = []
        for h in reversed(self.handles):
            try:
                h.remove()
            except Exception as exc:  # keep removing the others
                errors.append(f"{h.name}: {exc!r}")
        self.handles.clear()
        return errors


class NodeFactory:
    """Starts systemd nodes for one test and removes all of them afterwards.

    ``node_factory(suffix="node", *, network=None, aliases=(), volumes=None, hostname=None,
    docker_in_node=False, image=None, environment=None, wait=True, boot_timeout=120,
    **run_kwargs) -> Node``
    """

    def __init__(self, client: docker.DockerClient, test_id: str, images: Mapping[str, str]):
        self._tracker = _Tracker(test_id, client)
        self.client = client
        self.test_id = test_id
        self.images = images

    @property
    def nodes(self) -> list[Node]:
        return [h for h in self._tracker.handles if isinstance(h, Node)]

    def __call__(
        self,
        suffix: str = "node",
        *,
        network: Any = None,
        aliases: Iterable[str] = (),
        volumes: Mapping[str, Any] | Iterable[str] | None = None,
        hostname: str | None = None,
        docker_in_node: bool = False,
        image: str | None = None,
        environment: Mapping[str, str] | None = None,
        wait: bool = True,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        **run_kwargs: Any,
    ) -> Node:
        name = harness_name(_short_test_name(self.test_id), suffix)
        hostname = hostname or _hostname_from(suffix)
        image = image or self.images["node-docker" if docker_in_node else "node"]

        binds: dict[str, Any] = {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}}
        if isinstance(volumes, Mapping):
            for host_path, spec in volumes.items():
                binds[host_path] = spec if isinstance(spec, dict) else {"bind": spec, "mode": "rw"}
        elif volumes:
            for item in volumes:
                parts = item.split(":")
                binds[parts[0]] = {"bind": parts[1], "mode": parts[2] if len(parts) > 2 else "rw"}

        caps = ["SYS_ADMIN"] + (["NET_ADMIN"] if docker_in_node else [])
        kwargs: dict[str, Any] = dict(
            image=image,
            command=["/lib/systemd/systemd"],
            name=name,
            hostname=hostname,
            cap_add=caps,
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            tmpfs={"/run": "", "/run/lock": ""},
            volumes=binds,
            cgroupns="host",
            stop_signal="SIGRTMIN+3",
            labels=harness_labels(self.test_id),
            environment=dict(environment or {}),
        )
        if network is not None:
            net_name = getattr(network, "name", network)
            all_aliases = list(dict.fromkeys([hostname, *aliases]))
            kwargs["network"] = net_name
            kwargs["networking_config"] = {net_name: self.client.api.create_endpoint_config(aliases=all_aliases)}
        kwargs.update(run_kwargs)

        container = self.client.containers.create(**kwargs)
        node = Node(container, hostname, docker_in_node)
        self._tracker.handles.append(node)  # tracked before start: removed even if start fails
        container.start()
        if wait:
            node.wait_booted(timeout=boot_timeout)
            if docker_in_node:
                node.wait_docker()
        return node

    def start_many(self, suffixes: Sequence[str], **kwargs: Any) -> list[Node]:
        """Start several nodes, then wait for all of them (boots overlap)."""
        timeout = kwargs.pop("boot_timeout", DEFAULT_BOOT_TIMEOUT)
        nodes = [self(s, wait=False, **kwargs) for s in suffixes]
        for n in nodes:
            n.wait_booted(timeout=timeout)
            if n.docker_in_node:
                n.wait_docker()
        return nodes

    def cleanup(self) -> list[str]:
        return self._tracker.cleanup()


class ContainerFactory:
    """Starts plain (non-systemd) containers through the SDK, labelled, removed afterwards.

    ``container_factory(image, command=None, *, suffix="ctr", **sdk_run_kwargs) -> Container``
    (an SDK Container, started detached; ``ContainerFactory.handle(c)`` wraps it with exec etc.)
    """

    def __init__(self, client: docker.DockerClient, test_id: str):
        self._tracker = _Tracker(test_id, client)
        self.client = client
        self.test_id = test_id

    def __call__(self, image: str, command: Any = None, *, suffix: str = "ctr", **kwargs: Any) -> Any:
        labels = dict(kwargs.pop("labels", None) or {})
        labels.update(harness_labels(self.test_id))
        name = kwargs.pop("name", None) or harness_name(_short_test_name(self.test_id), suffix)
        container = self.client.containers.create(image, command, name=name, labels=labels, **kwargs)
        self._tracker.handles.append(ContainerHandle(container))
        container.start()
        container.reload()
        return container

    @staticmethod
    def handle(container: Any) -> ContainerHandle:
        return ContainerHandle(container)

    def cleanup(self) -> list[str]:
        return self._tracker.cleanup()


def _short_test_name(test_id: str) -> str:
    # "tests/test_x.py::TestA::test_b[param]" -> "test_b-param"
    last = test_id.split("::")[-1] if test_id else "adhoc"
    return last.replace("[", "-").replace("]", "")[:30]


def _hostname_from(suffix: str) -> str:
    import re

    h = re.sub(r"[^a-z0-9-]+", "-", suffix.lower()).strip("-")[:63]
    return h or "node"


__all__ = [
    "CommandFailed",
    "ContainerFactory",
    "ContainerHandle",
    "ExecResult",
    "Node",
    "NodeFactory",
    "PollTimeout",
    "docker_exec",
]
