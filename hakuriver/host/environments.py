"""Environments on the Host: environment containers, versioned tarballs, shells.

The workflow (HakuRiver's "container as a portable virtual environment"):

1. `create-container IMAGE NAME` starts `hakuriver-env-<name>` from a local
   image (never pulled unless asked), labelled `org.hakuriver.environment=<name>`.
2. People change it (`shell NAME`, a terminal bridged over a websocket).
3. `create-tar NAME` commits it to `hakuriver/<name>:base`, labelled with the
   new version, and saves that image to `<name>-<version>.tar` in shared
   storage (see `hakuriver.tarballs`), keeping the newest `docker.keep_tarballs`.
4. Runners load the newest tarball before a task with `--container NAME`
   (`hakuriver.runner.environments`).

`import-image` and `import-tar` make a tarball from an image or an image
tarball without an environment container (a temporary, never started
container is committed, so that the labels are set).

Rules kept here:
- This module and `shell.py` (the exec behind a shell) are the only Host
  modules that drive Docker (through `hakuriver.dockerapi`); every SDK call
  runs in this manager's own threads, never on the event loop. Long
  operations report progress through a callback (the API streams it as
  NDJSON).
- Only what HakuRiver made is ever removed: the environment containers (by
  name *and* label), the temporary containers of an import, an image tag an
  import loaded that did not exist before, and the previous commit of an
  environment once nothing refers to it (by id, never pruning parents).
  Nothing host-wide is pruned.
- Operations on one environment are serialised (one asyncio.Lock per name).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from .. import naming, tarballs
from ..config import Config
from ..connlimits import RequestTimeout
from ..dockerapi import Engine, docker_explanation, run_in, sdk, thread_pool
from ..errors import Conflict, HakuRiverError, InsufficientStorage, NotFound, UploadTooLarge, ValidationError
from ..parsing import format_size, parse_size, validate_env_name
from .shell import DockerShell, ShellSession

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[..., None]
"""`progress(stage, message, **extra)`: thread-safe; the API streams each call as one line."""

DOCKER_TIMEOUT = 3600
"""Seconds one SDK call may take (a commit or save of a large environment is slow)."""
OP_THREADS = 4
SHELL_THREADS = 2
MAX_SHELLS = 16
SAVE_CHUNK = 1 << 20
UPLOAD_FREE_MARGIN = 1 << 30
"""Free space an upload must leave in the tarball directory (the tarball saved from it needs room too)."""
UPLOAD_CHECK_EVERY = 256 << 20
"""Bytes between two free-space checks while an upload streams."""
PROGRESS_INTERVAL = 1.0
STALE_TEMP_SECONDS = 3600.0
KEEPALIVE_COMMAND = ["tail", "-f", "/dev/null"]
"""What an environment container runs to stay up (in busybox and coreutils alike)."""
DEFAULT_SHELL = ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"]
_TERM = re.compile(r"^[A-Za-z0-9._+-]{1,64}\Z")
_IMAGE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}\Z")


def _unreachable(why: str) -> HakuRiverError:
    # The usual causes on a fresh Host are the two an admin can fix at once; say so,
    # since the SDK's own text ("Connection aborted", "Permission denied") does not.
    return HakuRiverError(
        f"cannot reach the Docker engine on the Host: {why}; install Docker on the Host, "
        "or add the Host's service user to the docker group and restart the Host",
        code="docker",
        status=503,
    )


def validate_image_ref(image: str) -> str:
    if not isinstance(image, str) or not _IMAGE_REF.match(image):
        raise ValidationError(
            f"invalid image reference {image!r}: expected e.g. python:3.12-slim or registry.example.org/team/image:tag"
        )
    return image


def restore_changes(config: dict[str, Any]) -> list[str]:
    """Dockerfile instructions giving a committed image `config`'s entrypoint and
    command back (the environment container ran a keep-alive command instead). Pure."""
    entrypoint = config.get("Entrypoint") or [""]
    changes = [f"ENTRYPOINT {json.dumps(entrypoint)}"]
    if config.get("Cmd"):
        changes.append(f"CMD {json.dumps(config['Cmd'])}")
    return changes


def environment_labels(name: str, version: int) -> list[str]:
    return [f"LABEL {naming.LABEL_ENVIRONMENT}={name}", f"LABEL {naming.LABEL_ENV_VERSION}={version}"]


def import_instructions(name: str) -> str:
    return (
        f"provide it from any image on this Host with 'hakuriver.docker import-image LOCAL_IMAGE {name}', "
        f"from an image tarball with 'hakuriver.docker import-tar FILE {name}', or build it with "
        f"'hakuriver.docker create-container IMAGE {name}' then 'hakuriver.docker create-tar {name}'"
    )


def _too_large(size: int, limit: int, *, streamed: bool = False) -> str:
    what = "the upload went past" if streamed else f"the upload announces {format_size(size)}, more than"
    return f"{what} docker.max_upload_size ({format_size(limit)}); ask an admin to raise it"


def _require_free(directory: Path, needed: int, declared: int | None) -> None:
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < needed:
        size = f"{format_size(declared)} plus " if declared else ""
        raise InsufficientStorage(
            f"the Host's {directory} has {format_size(free) if free else 'no space'} free; an upload needs "
            f"{size}{format_size(UPLOAD_FREE_MARGIN)} to spare"
        )


class EnvironmentManager:
    def __init__(self, config: Config, *, client: Any = None):
        self.config = config
        self.max_upload_size = parse_size(config.docker.max_upload_size)
        self.directory = tarballs.tarball_dir(config)
        self.keep = max(1, config.docker.keep_tarballs)
        self._engine = Engine(
            threads=OP_THREADS, name="hakuriver-env", unreachable=_unreachable, client=client, timeout=DOCKER_TIMEOUT
        )
        self._shell_pool = thread_pool(SHELL_THREADS, "hakuriver-shell")
        self._locks: dict[str, asyncio.Lock] = {}
        self._stopping = threading.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shells: set[ShellSession] = set()
        self.bootstrap_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ plumbing
    def _api(self) -> Any:
        return self._engine.api()

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._engine.call(self._guarded, fn, *args, **kwargs)

    def _guarded(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` in a worker thread, turning Docker failures into API errors."""
        docker = sdk()
        try:
            return fn(*args, **kwargs)
        except HakuRiverError:
            raise
        except docker.errors.DockerException as exc:
            raise HakuRiverError(f"Docker on the Host: {docker_explanation(exc)}", code="docker", status=502) from exc
        except OSError as exc:  # the shared storage: full, read-only, gone
            where = f" ({exc.filename})" if exc.filename else ""
            raise HakuRiverError(f"storage on the Host: {exc.strerror or exc}{where}", code="storage") from exc

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def track(self, coro: Any) -> asyncio.Task[Any]:
        """Run an operation to its end even if the client that asked goes away."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Schedule the start-up work (in the background: it never delays the Host)."""
        self.bootstrap_task = asyncio.get_running_loop().create_task(self._start_up())

    async def _start_up(self) -> None:
        def prepare() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            for path in tarballs.stale_temp_files(self.directory, STALE_TEMP_SECONDS):
                log.info("removing %s, left by an interrupted tarball write", path)
                path.unlink(missing_ok=True)

        try:
            await self._call(prepare)
        except HakuRiverError as exc:
            log.error("environment tarballs cannot be written: %s", exc.message)
            return
        await self.bootstrap_default()

    async def close(self) -> None:
        self._stopping.set()
        if self.bootstrap_task is not None:
            self.bootstrap_task.cancel()
        for shell in list(self._shells):
            await shell.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=30)
        self._shell_pool.shutdown(wait=False, cancel_futures=True)
        await self._engine.close()

    async def bootstrap_default(self) -> None:
        """Give the default environment a tarball if it has none (in the background).

        A local `hakuriver/<default>:base` counts as provided (runners use a local
        image when no tarball exists). Otherwise `docker.initial_base_image` is
        imported, pulled first if it is not local. Any failure is logged with
        what to do; the Host works on regardless.
        """
        name = self.config.docker.default_container_name
        try:
            validate_env_name(name)
            if await self._call(tarballs.newest_tarball, self.directory, name) is not None:
                return
            if await self._call(self._image_or_none, naming.environment_image(name)) is not None:
                log.info(
                    "the default environment %r has no tarball in %s; the local image %s serves this machine. "
                    "To share it with every runner: hakuriver.docker import-image %s %s",
                    name,
                    self.directory,
                    naming.environment_image(name),
                    naming.environment_image(name),
                    name,
                )
                return
            image = self.config.docker.initial_base_image
            validate_image_ref(image)
            if await self._call(self._image_or_none, image) is None:
                log.info("the default environment %r has no tarball: pulling docker.initial_base_image %s", name, image)
                try:
                    await self._call(self._pull, image, lambda *a, **k: None)
                except HakuRiverError as exc:
                    log.warning(
                        "the default environment %r has no tarball in %s, and docker.initial_base_image %s is not on "
                        "this Host and cannot be pulled (%s). Tasks without --container fail until it exists; %s",
                        name,
                        self.directory,
                        image,
                        exc.message,
                        import_instructions(name),
                    )
                    return
            result = await self.import_image(name, image, lambda *a, **k: None)
            log.info("created the default environment %r from %s: %s", name, image, result["file"])
        except asyncio.CancelledError:
            raise
        except HakuRiverError as exc:
            log.warning(
                "could not create the default environment %r: %s; %s", name, exc.message, import_instructions(name)
            )
        except Exception:
            log.exception("could not create the default environment %r; %s", name, import_instructions(name))

    # ----------------------------------------------------------- containers
    def _image_or_none(self, ref: str) -> dict[str, Any] | None:
        docker = sdk()
        try:
            return self._api().inspect_image(ref)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.NotFound:
            return None

    def _env_container(self, name: str) -> dict[str, Any] | None:
        """The environment container of `name` (by name *and* label), or None."""
        docker = sdk()
        try:
            info = self._api().inspect_container(naming.environment_container_name(name))
        except docker.errors.NotFound:
            return None
        if (info.get("Config", {}).get("Labels") or {}).get(naming.LABEL_ENVIRONMENT) != name:
            raise Conflict(
                f"a container named {naming.environment_container_name(name)} exists but HakuRiver did "
                "not create it; rename or remove it yourself"
            )
        return info

    def _require_container(self, name: str) -> dict[str, Any]:
        info = self._env_container(name)
        if info is None:
            raise NotFound(
                f"no environment container {name!r} on the Host (create it with "
                f"'hakuriver.docker create-container IMAGE {name}')"
            )
        return info

    @staticmethod
    def container_json(info: dict[str, Any], name: str) -> dict[str, Any]:
        state = info.get("State") or {}
        return {
            "name": name,
            "container": str(info.get("Name", "")).lstrip("/") or naming.environment_container_name(name),
            "id": str(info.get("Id", ""))[:12],
            "status": state.get("Status") or "unknown",
            "image": (info.get("Config") or {}).get("Image", ""),
            "created": info.get("Created", ""),
        }

    async def list_containers(self) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            out = []
            for c in self._api().containers(all=True, filters={"label": naming.LABEL_ENVIRONMENT}):
                labels = c.get("Labels") or {}
                name = labels.get(naming.LABEL_ENVIRONMENT, "")
                names = [n.lstrip("/") for n in c.get("Names") or ()]
                # Task containers inherit the label from their image; only ours carry our name.
                if naming.LABEL_TASK_ID in labels or f"{naming.ENV_CONTAINER_PREFIX}{name}" not in names:
                    continue
                out.append(
                    {
                        "name": name,
                        "container": f"{naming.ENV_CONTAINER_PREFIX}{name}",
                        "id": c["Id"][:12],
                        "status": c.get("State") or "unknown",
                        "image": c.get("Image", ""),
                        "created": c.get("Created"),
                    }
                )
            return sorted(out, key=lambda c: c["name"])

        return await self._call(run)

    async def check_create_container(self, name: str, image: str, pull: bool) -> None:
        """The refusals `create_container` would give, before anything is streamed."""
        validate_env_name(name)
        validate_image_ref(image)
        if await self._call(self._env_container, name) is not None:
            raise Conflict(f"the environment container {name!r} already exists")
        if not pull and await self._call(self._image_or_none, image) is None:
            raise NotFound(
                f"image {image} is not on the Host; HakuRiver never pulls silently: pull or load it on "
                f"the Host first, or ask for it explicitly with --pull"
            )

    async def create_container(self, name: str, image: str, pull: bool, progress: Progress) -> dict[str, Any]:
        async with self.lock(name):
            await self.check_create_container(name, image, pull)
            if await self._call(self._image_or_none, image) is None:
                progress("pull", f"pulling {image} (--pull)")
                await self._call(self._pull, image, progress)
            progress("create", f"creating {naming.environment_container_name(name)} from {image}")
            info = await self._call(self._create_env_container, name, image)
            log.info("created environment container %s from %s", naming.environment_container_name(name), image)
            return self.container_json(info, name)

    def _pull(self, image: str, progress: Progress) -> None:
        docker = sdk()
        repo, tag = _split_tag(image)
        last = 0.0
        try:
            for event in self._api().pull(repo, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise HakuRiverError(f"cannot pull {image}: {event['error']}", code="pull_failed", status=502)
                now = time.monotonic()
                if now - last >= PROGRESS_INTERVAL and event.get("status"):
                    last = now
                    progress("pull", f"{event.get('id', '')} {event['status']} {event.get('progress', '')}".strip())
        except docker.errors.DockerException as exc:
            raise HakuRiverError(
                f"cannot pull {image}: {docker_explanation(exc)}", code="pull_failed", status=502
            ) from exc

    def _create_env_container(self, name: str, image: str) -> dict[str, Any]:
        api = self._api()
        host_config = api.create_host_config(init=True, restart_policy={"Name": "unless-stopped"})
        created = api.create_container(
            image,
            name=naming.environment_container_name(name),
            entrypoint=KEEPALIVE_COMMAND,
            command=[],
            labels={naming.LABEL_ENVIRONMENT: name},
            host_config=host_config,
            detach=True,
            use_config_proxy=False,
        )
        try:
            api.start(created["Id"])
        except Exception:
            api.remove_container(created["Id"], force=True)
            raise
        return api.inspect_container(created["Id"])

    async def start_container(self, name: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            info = self._require_container(name)
            self._api().start(info["Id"])
            return self.container_json(self._api().inspect_container(info["Id"]), name)

        validate_env_name(name)
        return await self._call(run)

    async def stop_container(self, name: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            info = self._require_container(name)
            self._api().stop(info["Id"], timeout=10)
            return self.container_json(self._api().inspect_container(info["Id"]), name)

        validate_env_name(name)
        return await self._call(run)

    async def delete_container(self, name: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            info = self._require_container(name)
            self._api().remove_container(info["Id"], force=True)
            log.info("deleted environment container %s", naming.environment_container_name(name))
            return {"name": name, "deleted": True}

        validate_env_name(name)
        async with self.lock(name):
            return await self._call(run)

    # ------------------------------------------------------------ tarballs
    async def list_tarballs(self, name: str | None = None) -> list[dict[str, Any]]:
        found = await self._call(tarballs.list_tarballs, self.directory, name)
        return [t.to_json() for t in found]

    async def delete_tarballs(self, name: str, version: int | None = None) -> list[dict[str, Any]]:
        validate_env_name(name)
        async with self.lock(name):
            found = await self._call(tarballs.list_tarballs, self.directory, name)
            chosen = [t for t in found if version is None or t.version == version]
            if not chosen:
                which = f"version {version} of " if version is not None else "a tarball of "
                raise NotFound(f"there is no {which}environment {name!r} in {self.directory}")
            for t in chosen:
                await self._call(os.unlink, t.path)
                log.info("deleted environment tarball %s", t.path)
            return [t.to_json() for t in chosen]

    async def check_commit(self, name: str) -> None:
        validate_env_name(name)
        await self._call(self._require_container, name)

    async def create_tarball(self, name: str, progress: Progress) -> dict[str, Any]:
        """create-tar: commit the environment container and save a new version."""
        async with self.lock(name):
            info = await self._call(self._require_container, name)
            source = await self._call(self._image_or_none, info["Image"]) or {}
            return await self._commit_and_save(name, info["Id"], source.get("Config") or {}, progress)

    async def check_import_image(self, name: str, image: str, pull: bool) -> None:
        validate_env_name(name)
        validate_image_ref(image)
        if not pull and await self._call(self._image_or_none, image) is None:
            raise NotFound(
                f"image {image} is not on the Host; HakuRiver never pulls silently: pull or load it on "
                f"the Host first, or ask for it explicitly with --pull"
            )

    async def import_image(self, name: str, image: str, progress: Progress, pull: bool = False) -> dict[str, Any]:
        """import-image: a new version of `name` made from a local image (no environment container)."""
        async with self.lock(name):
            await self.check_import_image(name, image, pull)
            if await self._call(self._image_or_none, image) is None:
                progress("pull", f"pulling {image} (--pull)")
                await self._call(self._pull, image, progress)
            return await self._from_image(name, image, progress)

    async def _from_image(self, name: str, image: str, progress: Progress) -> dict[str, Any]:
        source = await self._call(self._image_or_none, image)
        if source is None:
            raise NotFound(f"image {image} is not on the Host")
        temp = await self._call(self._temp_container, source["Id"], name)
        try:
            return await self._commit_and_save(name, temp, source.get("Config") or {}, progress)
        finally:
            await self._call(lambda: self._api().remove_container(temp, force=True))

    def _temp_container(self, image_id: str, name: str) -> str:
        # Created, never started: only a source for `commit` (which sets the labels).
        created = self._api().create_container(
            image_id,
            entrypoint=["/hakuriver-import-placeholder"],
            command=[],
            labels={naming.LABEL_ENVIRONMENT: name},
            use_config_proxy=False,
        )
        return created["Id"]

    async def receive_upload(self, content: Any, declared: int | None) -> Path:
        """Write a request body (an aiohttp StreamReader) to a temporary file beside the tarballs.

        `declared` is the request's Content-Length (None when chunked). Refused
        before a byte is stored: a declared size above `docker.max_upload_size`
        (`UploadTooLarge`, 413), or less free space in the tarball directory than
        the declared size plus `UPLOAD_FREE_MARGIN` (`InsufficientStorage`, 507).
        While streaming: more bytes than the limit (413), the free space falling
        under the margin or the disk filling up (507), or a pause longer than
        `network.request_body_timeout` (408). What was stored is removed.
        """
        limit = self.max_upload_size
        if declared is not None and declared > limit:
            raise UploadTooLarge(_too_large(declared, limit))
        path = self.directory / f".upload-{secrets.token_hex(4)}.tar{tarballs.TEMP_MARK}{secrets.token_hex(4)}"

        def create() -> Any:
            self.directory.mkdir(parents=True, exist_ok=True)
            _require_free(self.directory, (declared or 0) + UPLOAD_FREE_MARGIN, declared)
            return open(path, "xb")  # exclusive: never through a planted link

        def write(fh: Any, chunk: bytes, recheck: bool) -> None:
            try:
                fh.write(chunk)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise InsufficientStorage(f"the Host's {self.directory} filled up during the upload") from None
                raise
            if recheck:
                _require_free(self.directory, UPLOAD_FREE_MARGIN, None)

        fh = await self._call(create)
        pause = self.config.network.request_body_timeout
        size, next_check = 0, UPLOAD_CHECK_EVERY
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(content.read(SAVE_CHUNK), pause)
                except TimeoutError:
                    raise RequestTimeout(f"the upload paused for more than {pause:g} s") from None
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise UploadTooLarge(_too_large(size, limit, streamed=True))
                recheck = size >= next_check
                if recheck:
                    next_check += UPLOAD_CHECK_EVERY
                await self._call(write, fh, chunk, recheck)
            await self._call(fh.close)
            if size == 0:
                raise ValidationError("the request body is empty: send the image tarball ('docker save' output)")
        except BaseException:
            fh.close()
            path.unlink(missing_ok=True)
            raise
        return path

    async def import_tar(self, name: str, upload: Path, progress: Progress) -> dict[str, Any]:
        """import-tar: a new version of `name` from an uploaded `docker save` tarball (deleted after)."""
        try:
            validate_env_name(name)
            async with self.lock(name):
                return await self._import_tar(name, upload, progress)
        finally:
            await self._call(upload.unlink, missing_ok=True)

    async def _import_tar(self, name: str, upload: Path, progress: Progress) -> dict[str, Any]:
        progress("check", "reading the tarball's manifest")
        tags = await self._call(tarballs.read_manifest_tags, upload)
        before = {}
        for tag in {*tags, naming.environment_image(name)}:
            before[tag] = await self._call(self._image_or_none, tag)
        progress("load", "loading the tarball into the Host's Docker engine")
        image_id = await self._keepalive(self._call(self._load, upload), progress, "load", "loading")
        try:
            return await self._from_image(name, image_id, progress)
        finally:
            for tag in tags:
                if before.get(tag) is None:  # only tags this import created
                    await self._call(self._untag, tag)
            replaced = before[naming.environment_image(name)]
            if replaced is not None:  # a load of ':base' may have orphaned the previous commit
                await self._call(self._remove_if_unused, replaced["Id"], name)

    def _load(self, path: Path) -> str:
        """`docker load` of `path`; the loaded image's id."""
        api = self._api()
        loaded: list[str] = []
        with open(path, "rb") as fh:
            for event in api.load_image(fh):
                if "error" in event:
                    raise ValidationError(f"not a loadable image tarball: {event['error']}")
                stream = str(event.get("stream", ""))
                for prefix in ("Loaded image ID: ", "Loaded image: "):
                    if stream.startswith(prefix):
                        loaded.append(stream[len(prefix) :].strip())
        if not loaded:
            raise ValidationError("the tarball holds no image")
        if len(loaded) > 1:
            raise ValidationError(f"the tarball holds {len(loaded)} images ({', '.join(loaded)}); import one at a time")
        return api.inspect_image(loaded[0])["Id"]

    def _untag(self, tag: str) -> None:
        docker = sdk()
        try:
            self._api().remove_image(tag, noprune=True)
        except docker.errors.DockerException as exc:
            log.info("left the imported tag %s in place: %s", tag, docker_explanation(exc))

    async def _commit_and_save(
        self, name: str, container: str, source_config: dict[str, Any], progress: Progress
    ) -> dict[str, Any]:
        """Commit `container` as the next version of `name`, save it, keep the newest K."""
        existing = await self._call(tarballs.list_tarballs, self.directory, name)
        image_ref = naming.environment_image(name)
        previous = await self._call(self._image_or_none, image_ref)
        prev_version = _version_of(previous)
        version = tarballs.next_version([t.version for t in existing] + ([prev_version] if prev_version else []))
        progress("commit", f"committing {name} as {image_ref} (version {version})")
        repo, tag = _split_tag(image_ref)
        changes = restore_changes(source_config) + environment_labels(name, version)
        commit = self._call(
            lambda: self._api().commit(
                container,
                repository=repo,
                tag=tag,
                changes=changes,
                message=f"hakuriver environment {name} version {version}",
                author="hakuriver",
            )
        )
        image_id = (await self._keepalive(commit, progress, "commit", "committing"))["Id"]
        if previous is not None and previous["Id"] != image_id:
            await self._call(self._remove_if_unused, previous["Id"], name)
        path = tarballs.tarball_path(self.directory, name, version)
        size = await self._keepalive(
            self._call(self._save, image_ref, image_id, path, progress), progress, "save", "saving"
        )
        pruned = await self._call(self._prune, name)
        log.info(
            "environment %s: version %d saved to %s (%d bytes)%s",
            name,
            version,
            path,
            size,
            f"; removed {', '.join(pruned)}" if pruned else "",
        )
        return {"name": name, "version": version, "file": path.name, "size": size, "image": image_id, "removed": pruned}

    async def _keepalive(self, work: Awaitable[T], progress: Progress, stage: str, doing: str) -> T:
        """Await `work`, telling the client every few seconds that it still runs."""
        task = asyncio.ensure_future(work)
        started = time.monotonic()
        while True:
            done, _ = await asyncio.wait({task}, timeout=5.0)
            if done:
                return task.result()
            progress(stage, f"still {doing} ({time.monotonic() - started:.0f}s)")

    def _save(self, image_ref: str, image_id: str, path: Path, progress: Progress) -> int:
        api = self._api()
        temp = tarballs.temp_path(self.directory, *_name_version(path))
        written, last = 0, time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            with open(temp, "xb") as fh:  # exclusive: never through a planted link
                if api.inspect_image(image_ref)["Id"] != image_id:
                    raise Conflict(f"{image_ref} changed while it was being saved; try again")
                for chunk in api.get_image(image_ref, chunk_size=SAVE_CHUNK):
                    if self._stopping.is_set():
                        raise HakuRiverError("the Host is stopping; the tarball was not written", status=503)
                    fh.write(chunk)
                    written += len(chunk)
                    now = time.monotonic()
                    if now - last >= PROGRESS_INTERVAL:
                        last = now
                        progress("save", f"saved {written >> 20} MiB", bytes=written)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(temp, path)
            tarballs.fsync_dir(self.directory)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        progress("save", f"saved {written >> 20} MiB to {path.name}", bytes=written)
        return written

    def _prune(self, name: str) -> list[str]:
        removed = []
        for old in tarballs.list_tarballs(self.directory, name)[self.keep :]:
            try:
                os.unlink(old.path)
                removed.append(old.file)
            except FileNotFoundError:
                pass
        return removed

    def _remove_if_unused(self, image_id: str, name: str) -> None:
        """Remove a previous commit of `name`: only if untagged, ours, and unused."""
        docker = sdk()
        api = self._api()
        try:
            if not tarballs.replaced_image_removable(api.inspect_image(image_id), name):
                return
            api.remove_image(image_id, noprune=True)
        except docker.errors.DockerException as exc:  # in use by a container: it stays
            log.debug("kept the previous image %s of %s: %s", image_id[:19], name, docker_explanation(exc))

    # --------------------------------------------------------------- shells
    def _require_running(self, name: str) -> dict[str, Any]:
        info = self._require_container(name)
        if not (info.get("State") or {}).get("Running"):
            raise Conflict(
                f"the environment container {name!r} is not running; start it with "
                f"'hakuriver.docker start-container {name}'"
            )
        return info

    async def check_shell(self, name: str) -> None:
        validate_env_name(name)
        await run_in(self._shell_pool, self._guarded, self._require_running, name)

    async def open_shell(self, name: str, command: list[str] | None, rows: int, cols: int, term: str) -> ShellSession:
        """Start `command` (default: a login shell) with a terminal in the running
        environment container; the session relays it (see `host/shell.py`)."""
        validate_env_name(name)
        if not _TERM.match(term):
            raise ValidationError(f"invalid terminal type {term!r}")
        if command is not None and (
            not command or not all(isinstance(a, str) and a and "\x00" not in a for a in command)
        ):
            raise ValidationError("'cmd' must be a non-empty list of non-empty arguments")
        if len(self._shells) >= MAX_SHELLS:
            raise Conflict(f"too many open shells on the Host (at most {MAX_SHELLS})")

        def run() -> tuple[str, Any]:
            info = self._require_running(name)
            api = self._api()
            exec_id = api.exec_create(
                info["Id"], command or DEFAULT_SHELL, stdin=True, tty=True, environment={"TERM": term}
            )["Id"]
            sock = api.exec_start(exec_id, tty=True, socket=True)
            try:
                api.exec_resize(exec_id, height=rows, width=cols)
            except Exception as exc:  # noqa: BLE001 - the first size is a nicety
                log.debug("first resize of a shell failed: %s", docker_explanation(exc))
            return exec_id, sock

        exec_id, sock = await run_in(self._shell_pool, self._guarded, run)
        loop = asyncio.get_running_loop()
        session = ShellSession(DockerShell(self._api, name, exec_id), sock, loop, self._shell_pool, name=name)
        self._shells.add(session)
        session.on_close = self._shells.discard
        session.start()
        return session


def _split_tag(image: str) -> tuple[str, str | None]:
    """("repo", "tag") of an image reference; a digest or no tag leaves tag None."""
    if "@" in image:
        return image, None
    repo, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return repo, tag
    return image, None


def _version_of(info: dict[str, Any] | None) -> int | None:
    if not info:
        return None
    value = ((info.get("Config") or {}).get("Labels") or {}).get(naming.LABEL_ENV_VERSION, "")
    return int(value) if value.isascii() and value.isdigit() else None


def _name_version(path: Path) -> tuple[str, int]:
    parsed = tarballs.parse_tarball_name(path.name)
    assert parsed is not None
    return parsed
