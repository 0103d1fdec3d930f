"""Environment tarballs in shared storage, as the Host writes and the Runners read them.

    <shared_dir>/<docker.container_dir>/<name>-<version>.tar

`version` is a whole number of seconds since the epoch (the moment the Host
committed the environment), strictly increasing per environment, and it is
also recorded on the image as the label `org.hakuriver.environment.version`.
The Runners compare the two to decide whether to load.

A tarball appears under its final name only once complete: the Host writes
`.<name>-<version>.tar.part-<random>` in the same directory, fsyncs it and
renames it (atomic within one file system). Names starting with '.' are never
taken for tarballs.

Names are validated by `parsing.validate_env_name` (Docker's repository rule:
no '/', no leading '.', at most 128 characters), and `tarball_path` checks
once more that the result is a direct child of the directory, so a name can
never address a file elsewhere.

Everything here is pure or plain blocking file-system access: callers on an
event loop run `list_tarballs` and friends in a thread.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import naming
from .config import Config
from .errors import ValidationError
from .parsing import validate_env_name

_TARBALL = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]*)-(?P<version>[0-9]{1,19})\.tar\Z")
TEMP_MARK = ".part-"
MAX_VERSION = (1 << 63) - 1


@dataclass(frozen=True)
class Tarball:
    name: str
    version: int
    path: str
    size: int
    mtime: float

    @property
    def file(self) -> str:
        return os.path.basename(self.path)

    @property
    def identity(self) -> tuple[str, int, int]:
        """Changes whenever the file is replaced or rewritten (path, size, mtime in ns)."""
        return (self.path, self.size, int(self.mtime * 1e9))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "file": self.file, "size": self.size}


def tarball_dir(config: Config) -> Path:
    return Path(config.paths.shared_dir) / config.docker.container_dir


def tarball_file_name(name: str, version: int) -> str:
    validate_env_name(name)
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_VERSION:
        raise ValidationError(f"invalid environment version {version!r}: expected a whole number of seconds")
    return f"{name}-{version}.tar"


def tarball_path(directory: Path, name: str, version: int) -> Path:
    """`directory/<name>-<version>.tar`, refusing anything that would not be a direct child."""
    file_name = tarball_file_name(name, version)
    path = directory / file_name
    if path.parent != directory or path.name != file_name or os.sep in file_name:
        raise ValidationError(f"invalid environment name {name!r}: it would leave the tarball directory")
    return path


def temp_path(directory: Path, name: str, version: int) -> Path:
    """Where a tarball is written before it is renamed into place (same directory)."""
    final = tarball_path(directory, name, version)
    return directory / f".{final.name}{TEMP_MARK}{secrets.token_hex(4)}"


def parse_tarball_name(file_name: str) -> tuple[str, int] | None:
    """(name, version) of a tarball file name, or None for anything else."""
    match = _TARBALL.match(file_name)
    if not match:
        return None
    name, version = match.group("name"), int(match.group("version"))
    try:
        validate_env_name(name)
    except ValidationError:
        return None
    if version > MAX_VERSION:
        return None
    return name, version


def list_tarballs(directory: Path, name: str | None = None) -> list[Tarball]:
    """Every tarball (of `name` only, if given), sorted by name, newest version first."""
    if name is not None:
        validate_env_name(name)
    found: list[Tarball] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        parsed = parse_tarball_name(entry.name)
        if parsed is None or (name is not None and parsed[0] != name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # deleted while we looked
            continue
        found.append(Tarball(parsed[0], parsed[1], entry.path, st.st_size, st.st_mtime))
    found.sort(key=lambda t: (t.name, -t.version))
    return found


def newest_tarball(directory: Path, name: str) -> Tarball | None:
    tarballs = list_tarballs(directory, name)
    return tarballs[0] if tarballs else None


def next_version(existing: list[int], now: float | None = None) -> int:
    """A version newer than every existing one: the current second, or one past the newest."""
    current = int(time.time() if now is None else now)
    return max([current, *(v + 1 for v in existing)])


def stale_temp_files(directory: Path, older_than: float, now: float | None = None) -> list[Path]:
    """Temporary files (interrupted writes) not touched for `older_than` seconds."""
    now = time.time() if now is None else now
    out = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.startswith(".") and TEMP_MARK in entry.name:
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > older_than:
                    out.append(Path(entry.path))
            except FileNotFoundError:
                continue
    return out


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_manifest_tags(path: Path) -> list[str]:
    """RepoTags of a `docker save` tarball (reading its manifest), refusing what is not one."""
    try:
        with tarfile.open(path, "r:") as tar:
            member = tar.getmember("manifest.json")
            fh = tar.extractfile(member)
            manifest = json.load(fh) if fh is not None else None
    except KeyError:
        raise ValidationError("not an image tarball made by 'docker save': it has no manifest.json") from None
    except (tarfile.TarError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"not a readable image tarball: {exc}") from None
    if not isinstance(manifest, list) or not manifest:
        raise ValidationError("the tarball's manifest.json lists no image")
    if len(manifest) > 1:
        raise ValidationError(f"the tarball holds {len(manifest)} images; import one at a time")
    tags = manifest[0].get("RepoTags") or [] if isinstance(manifest[0], dict) else []
    return [str(t) for t in tags]


def replaced_image_removable(info: dict, name: str) -> bool:
    """Whether an image `docker inspect` describes may be removed after a newer version
    of environment `name` replaced it: untagged, and labelled as a version of `name`.
    (Docker itself refuses to remove an image a container still uses.)"""
    labels = (info.get("Config") or {}).get("Labels") or {}
    return (
        not info.get("RepoTags") and labels.get(naming.LABEL_ENVIRONMENT) == name and naming.LABEL_ENV_VERSION in labels
    )
