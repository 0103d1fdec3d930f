"""Environment sync on a Runner: the right `hakuriver/<name>:base` before a Docker task.

Before a task with `--container NAME` starts, `EnvironmentSync.ensure(NAME)`
makes the local image the newest tarball in shared storage
(`<shared_dir>/<docker.container_dir>/<name>-<version>.tar`, see
`hakuriver.tarballs`):

- The image's label `org.hakuriver.environment.version` is compared with the
  newest tarball's version: missing or older means `docker load` of that
  tarball; equal or newer means nothing to do (a node where the Host itself
  just committed a new version needs no load).
- No tarball at all, but a local `hakuriver/<name>:base`: that image is used as
  it is (images tagged by hand, nodes without shared tarballs, the tests).
- No tarball and no image: the task fails at once, saying so. Nothing is ever
  pulled from a registry.

One load per tarball, however many tasks arrive at once: every task for an
environment goes through that environment's asyncio.Lock, and the tasks
behind the one that loaded find the image current when they get the lock.

A corrupt or half-written tarball: `docker load` reads the whole archive
before it tags anything (the daemon's manifest comes last), so a failed load
never moves the tag and the previous image stays usable. The task fails
with Docker's reason; the failure is remembered for that exact file (path,
size, mtime), so later tasks fail fast instead of re-reading it, until the
file changes or a newer version appears. After a successful load, the image
it replaced is removed only if it is untagged, carries the HakuRiver
version label of this environment and no container uses it; nothing else is
ever removed.

This module and `executors/docker/` are the only runner code that uses
Docker (through `hakuriver.dockerapi`); every call runs in this object's own
threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .. import naming, safefiles, tarballs
from ..config import Config
from ..dockerapi import Engine, docker_explanation, sdk
from ..errors import ExecutorError, ValidationError

log = logging.getLogger(__name__)

T = TypeVar("T")

DOCKER_TIMEOUT = 3600
"""Seconds one SDK call may take: loading a large environment is slow."""
SYNC_THREADS = 2


def _unreachable(why: str) -> ExecutorError:
    return ExecutorError(f"cannot reach the Docker engine: {why}")


@dataclass(frozen=True)
class LocalImage:
    id: str
    version: int | None


def image_version(info: dict[str, Any] | None) -> int | None:
    """The HakuRiver version label of an inspected image, if it has one. Pure."""
    labels = ((info or {}).get("Config") or {}).get("Labels") or {}
    value = labels.get(naming.LABEL_ENV_VERSION, "")
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else None


def needs_load(local: LocalImage | None, newest: tarballs.Tarball | None) -> bool:
    """Whether the newest tarball must be loaded over the local image. Pure."""
    if newest is None:
        return False
    return local is None or local.version is None or local.version < newest.version


class EnvironmentSync:
    """See the module docstring. `ensure(name)` returns the image reference to run."""

    def __init__(self, config: Config, *, client: Any = None):
        self.directory: Path = tarballs.tarball_dir(config)
        self._engine = Engine(
            threads=SYNC_THREADS,
            name="hakuriver-envsync",
            unreachable=_unreachable,
            client=client,
            timeout=DOCKER_TIMEOUT,
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self._failed: dict[tuple[str, int, int], str] = {}
        self._loaded: dict[str, tuple[tuple[str, int, int], str]] = {}
        """name -> (identity of the tarball last loaded, the image id it gave)."""
        self.loads = 0
        """Loads attempted by this object (the tests count them)."""
        self._closed = False

    def _api(self) -> Any:
        return self._engine.api()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise ExecutorError("the runner is stopping")
        return await self._engine.call(fn, *args)

    async def ensure(self, name: str) -> str:
        """Make `hakuriver/<name>:base` current; its reference, or ExecutorError saying why not."""
        try:
            image = naming.environment_image(name)
        except ValidationError as exc:
            raise ExecutorError(exc.message) from None
        async with self._locks.setdefault(name, asyncio.Lock()):
            await self._call(self._sync, name, image)
        return image

    # ------------------------------------------------------------ threads
    def _local(self, image: str) -> LocalImage | None:
        docker = sdk()
        try:
            info = self._api().inspect_image(image)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.DockerException as exc:
            raise ExecutorError(f"cannot inspect {image}: {docker_explanation(exc)}") from exc
        return LocalImage(info["Id"], image_version(info))

    def _sync(self, name: str, image: str) -> None:
        newest = tarballs.newest_tarball(self.directory, name)
        local = self._local(image)
        if newest is None:
            if local is None:
                raise ExecutorError(
                    f"unknown environment {name!r}: image {image} is not present on this node and there is no "
                    f"tarball {name}-<version>.tar in {self.directory} (HakuRiver never pulls environments; create "
                    f"it on the Host with hakuriver.docker create-tar or import-image)"
                )
            return
        if not needs_load(local, newest):
            return
        memo = self._loaded.get(name)
        if local is not None and memo is not None and memo == (newest.identity, local.id):
            return  # loaded already; the tarball's image just carries another version label
        failure = self._failed.get(newest.identity)
        if failure is not None:
            raise ExecutorError(failure)
        self._load(name, image, newest, local)

    def _load(self, name: str, image: str, tarball: tarballs.Tarball, previous: LocalImage | None) -> None:
        docker = sdk()
        api = self._api()
        self.loads += 1
        log.info("environment %s: loading tarball %s (version %d) into %s", name, tarball.path, tarball.version, image)
        started = time.monotonic()
        loaded: list[str] = []
        error: str | None = None
        try:
            with _open_tarball(tarball.path) as fh:
                for event in api.load_image(fh):
                    if "error" in event:
                        error = str(event.get("error"))
                        break
                    stream = str(event.get("stream", ""))
                    for prefix in ("Loaded image ID: ", "Loaded image: "):
                        if stream.startswith(prefix):
                            loaded.append(stream[len(prefix) :].strip())
        except safefiles.UnsafeFile as exc:
            error = f"cannot read it: {exc.message}"
        except OSError as exc:
            error = f"cannot read it: {exc.strerror or exc}"
        except docker.errors.DockerException as exc:
            error = docker_explanation(exc)
        if error is None and not loaded:
            error = "it holds no image"
        if error is None and image not in loaded:
            # A tarball saved under another name (or by id): tag what it held.
            try:
                repo, _, tag = image.rpartition(":")
                api.tag(loaded[0], repo, tag)
            except docker.errors.DockerException as exc:
                error = f"cannot tag {loaded[0]} as {image}: {docker_explanation(exc)}"
        if error is not None:
            kept = (
                f"the previous image (version {previous.version})"
                if previous and previous.version is not None
                else "the previous image"
                if previous
                else "no image"
            )
            message = (
                f"environment {name!r}: cannot load tarball {tarball.file} (version {tarball.version}): "
                f"{error}; {kept} is unchanged on this node. Replace the tarball (hakuriver.docker create-tar "
                f"{name}) or delete it (hakuriver.docker delete-tar {name} --version {tarball.version})"
            )
            self._failed[tarball.identity] = message
            log.error("%s", message)
            raise ExecutorError(message)
        current = self._local(image)
        if current is None:  # pragma: no cover - the daemon just said it tagged it
            raise ExecutorError(f"environment {name!r}: {image} is missing right after loading {tarball.file}")
        self._loaded[name] = (tarball.identity, current.id)
        if current.version != tarball.version:
            log.warning(
                "environment %s: %s holds version %s, not %d as its name says",
                name,
                tarball.file,
                current.version,
                tarball.version,
            )
        log.info("environment %s: version %d loaded in %.1fs", name, tarball.version, time.monotonic() - started)
        if previous is not None and previous.id != current.id:
            self._remove_replaced(name, previous.id)

    def _remove_replaced(self, name: str, image_id: str) -> None:
        """Remove the image a load replaced: only if untagged, ours for `name`, and unused."""
        docker = sdk()
        api = self._api()
        try:
            if not tarballs.replaced_image_removable(api.inspect_image(image_id), name):
                return
            api.remove_image(image_id, noprune=True)
            log.info("environment %s: removed the replaced image %s", name, image_id[:19])
        except docker.errors.DockerException as exc:  # still used by a running task: it stays
            log.debug("environment %s: kept the replaced image %s: %s", name, image_id[:19], docker_explanation(exc))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._engine.close()


def _open_tarball(path: str) -> Any:
    """The tarball, opened as a regular file only: the shared dir is the tasks'
    too, and a link or FIFO planted in its place is never followed or opened."""
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = safefiles.open_regular(dir_fd, os.path.basename(path), os.O_RDONLY, links_ok=True)
    finally:
        os.close(dir_fd)
    return os.fdopen(fd, "rb")
