"""What a node needs for systemd (`--container NULL`) tasks, as text: one source
for `hakuriver.init`, the Ansible roles and the tests.

Three files, all root-owned:

- the launcher (`launcher_source()`), mode 0755, at `DEFAULT_LAUNCHER_PATH`
  in a root-owned directory; run by the system `/usr/bin/python3 -IS`;
- its allow-list (`render_launcher_config(...)`), mode 0644, at
  `DEFAULT_LAUNCHER_CONFIG`;
- the sudoers drop-in (`hakuriver.deploy.sudoers.render_sudoers`), mode 0440.

`install_plan(...)` lists them with paths and modes; `install(plan)` writes
them (as root), checking the sudoers text with `visudo -cf` before it goes in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .. import launcher as _launcher
from ..launcher import DEFAULT_LAUNCHER_CONFIG, DEFAULT_LAUNCHER_PATH
from .sudoers import DEFAULT_SUDOERS_PATH, render_sudoers

DEFAULT_PYTHON = "/usr/bin/python3"
DEFAULT_STATE_DIR = _launcher.DEFAULT_STATE_DIR
DEFAULT_NUMACTL = _launcher.DEFAULT_NUMACTL


def launcher_source(python: str = DEFAULT_PYTHON) -> str:
    """The launcher program's text, with its `#!` line naming `python` (run isolated, without `site`: `-IS`)."""
    text = resources.files("hakuriver").joinpath("launcher.py").read_text(encoding="utf-8")
    first, _, rest = text.partition("\n")
    if not first.startswith("#!"):
        raise RuntimeError("hakuriver/launcher.py lost its #! line")
    if not python.startswith("/") or any(c.isspace() for c in python):
        raise ValueError(f"python must be an absolute path without spaces, not {python!r}")
    return f"#!{python} -IS\n{rest}"


def launcher_sha256(python: str = DEFAULT_PYTHON) -> str:
    """For `render_sudoers(..., launcher_sha256=...)`: pins the installed launcher's content."""
    return hashlib.sha256(launcher_source(python).encode("utf-8")).hexdigest()


def render_launcher_config(
    *,
    task_users: Sequence[str] = (),
    task_groups: Sequence[str] = (),
    allow_privileged_users: Sequence[str] = (),
    runner_user: str = "",
    runner_group: str = "",
    shared_dirs: Sequence[str],
    local_temp_dirs: Sequence[str],
    numactl_paths: Sequence[str] = (DEFAULT_NUMACTL,),
    state_dir: str = DEFAULT_STATE_DIR,
    systemd_run: str = _launcher.DEFAULT_SYSTEMD_RUN,
    systemctl: str = _launcher.DEFAULT_SYSTEMCTL,
) -> str:
    """The allow-list's JSON text. Validated with the launcher's own parser, so a
    config it would refuse is never written.

    Tasks may run as the accounts in `task_users` and the members of `task_groups`,
    except root, `runner_user` (the Runner service's own account) and members of
    `runner_group` or a group in `hakuriver.launcher.ROOT_EQUIVALENT_GROUPS`: those
    only when `allow_privileged_users` names them too. Empty lists allow nobody."""
    data = {
        "version": _launcher.VERSION,
        "task_users": list(dict.fromkeys(task_users)),
        "task_groups": list(dict.fromkeys(task_groups)),
        "allow_privileged_users": list(dict.fromkeys(allow_privileged_users)),
        "runner_user": runner_user,
        "runner_group": runner_group,
        "shared_dirs": list(dict.fromkeys(shared_dirs)),
        "local_temp_dirs": list(dict.fromkeys(local_temp_dirs)),
        "numactl_paths": list(dict.fromkeys(numactl_paths)),
        "state_dir": state_dir,
        "systemd_run": systemd_run,
        "systemctl": systemctl,
    }
    try:
        parsed = _launcher.parse_config(data)
    except _launcher.Refused as exc:
        raise ValueError(str(exc)) from None
    return json.dumps(parsed.to_json(), indent=2) + "\n"


def launcher_config_for(
    config: Any,
    *,
    runner_user: str,
    runner_group: str,
    task_users: Sequence[str] = (),
    task_groups: Sequence[str] = (),
    allow_privileged_users: Sequence[str] = (),
    numactl_path: str | None = None,
    state_dir: str = DEFAULT_STATE_DIR,
) -> str:
    """The allow-list for one runner's `hakuriver.config.Config`, whose service runs
    as `runner_user`:`runner_group`. Its task accounts are `task_users`, the members
    of `task_groups`, and `environment.runner_user` when the config sets one (the
    account tasks of users without a Unix account run as); never the runner's own
    account unless `allow_privileged_users` names it."""
    paths = config.paths
    numactl = numactl_path or getattr(paths, "numactl_path", "") or shutil.which("numactl") or DEFAULT_NUMACTL
    fallback = getattr(getattr(config, "environment", None), "runner_user", "") or ""
    return render_launcher_config(
        task_users=[*task_users, *([fallback] if fallback else [])],
        task_groups=task_groups,
        allow_privileged_users=allow_privileged_users,
        runner_user=runner_user,
        runner_group=runner_group,
        shared_dirs=[paths.shared_dir],
        local_temp_dirs=[paths.local_temp_dir],
        numactl_paths=[numactl],
        state_dir=state_dir,
    )


@dataclass(frozen=True)
class InstallFile:
    path: str
    content: str
    mode: int


def install_plan(
    runner_user: str,
    launcher_config: str,
    *,
    launcher_path: str = DEFAULT_LAUNCHER_PATH,
    config_path: str = DEFAULT_LAUNCHER_CONFIG,
    sudoers_path: str = DEFAULT_SUDOERS_PATH,
    python: str = DEFAULT_PYTHON,
    pin_digest: bool = False,
) -> list[InstallFile]:
    """The three files, in install order (launcher, its config, then the rule that enables it).
    `runner_user` root gets no sudoers file (it needs none)."""
    source = launcher_source(python)
    files = [InstallFile(launcher_path, source, 0o755), InstallFile(config_path, launcher_config, 0o644)]
    if runner_user != "root":
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest() if pin_digest else None
        files.append(
            InstallFile(
                sudoers_path, render_sudoers(runner_user, launcher_path=launcher_path, launcher_sha256=digest), 0o440
            )
        )
    return files


def check_sudoers_text(text: str, visudo: str = "visudo") -> None:
    """`visudo -cf` on the text; ValueError with visudo's words if it does not parse."""
    with tempfile.NamedTemporaryFile("w", prefix="hakuriver-sudoers-", delete=False) as fh:
        fh.write(text)
        name = fh.name
    try:
        os.chmod(name, 0o440)
        proc = subprocess.run([visudo, "-cf", name], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ValueError(f"visudo rejects the sudoers drop-in: {(proc.stderr or proc.stdout).strip()}")
    finally:
        os.unlink(name)


def install(files: Iterable[InstallFile], *, root: str = "/", visudo: str = "visudo", chown: bool = True) -> list[str]:
    """Write `files` under `root` atomically (temp file + rename), owned by root with their
    modes; parent directories are created 0755. Sudoers files are checked with visudo first.
    Returns the paths written."""
    written = []
    for f in files:
        if f.path.startswith("/etc/sudoers"):
            check_sudoers_text(f.content, visudo)
        target = Path(root) / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=str(target.parent))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(f.content)
            os.chmod(tmp, f.mode)
            if chown:
                os.chown(tmp, 0, 0)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        written.append(str(target))
    return written
