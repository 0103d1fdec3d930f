"""HakuRiver inside systemd nodes, installed offline from a wheelhouse built here.

Nodes have no network (and no trust in this machine's proxy CA), so everything a
node installs comes from wheels built on the controller, which is also how an
air-gapped cluster is installed.

- `build_wheelhouse()`: the runtime dependencies as wheels, cached under
  `.cache/wheelhouse/<hash of pyproject.toml>`, plus a fresh wheel of the
  working tree's hakuriver (rebuilt every session: it changes with every edit).
- `ensure_node_py_image()`: the harness node image with a virtualenv at
  `/opt/hakuriver/venv` holding the dependencies, committed once and cached
  by tag, so a test only installs the hakuriver wheel itself (about a second).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import harness_labels, harness_name, remove_container
from .node import ContainerHandle, Node

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "wheelhouse"
VENV = "/opt/hakuriver/venv"
NODE_PY_REPO = "hakuriver-test/node-py"


@dataclass(frozen=True)
class Wheelhouse:
    deps_dir: Path
    """Wheels of hakuriver's runtime dependencies (and theirs)."""
    hakuriver_wheel: Path
    """A wheel of the working tree's hakuriver."""
    deps_key: str


def _pyproject_key() -> str:
    return hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]


def build_wheelhouse() -> Wheelhouse:
    key = _pyproject_key()
    deps = CACHE / f"deps-{key}"
    if not (deps / ".complete").exists():
        shutil.rmtree(deps, ignore_errors=True)
        deps.mkdir(parents=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(deps), str(REPO)],
            check=True,
            cwd=str(REPO),
        )
        for whl in deps.glob("hakuriver-*.whl"):
            whl.unlink()  # the project's own wheel is rebuilt fresh below
        (deps / ".complete").write_text(key)
    fresh = Path(tempfile.mkdtemp(prefix="hkr-wheel-"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(fresh), str(REPO)],
        check=True,
        cwd=str(REPO),
    )
    [wheel] = list(fresh.glob("hakuriver-*.whl"))
    target = CACHE / "current"
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("hakuriver-*.whl"):
        old.unlink()
    final = target / wheel.name
    shutil.move(str(wheel), final)
    shutil.rmtree(fresh, ignore_errors=True)
    return Wheelhouse(deps_dir=deps, hakuriver_wheel=final, deps_key=key)


def ensure_node_py_image(client: Any, node_image: str, wheelhouse: Wheelhouse) -> str:
    """The node image plus a venv with hakuriver's dependencies, cached by tag."""
    tag_key = hashlib.sha256(f"{node_image}|{wheelhouse.deps_key}".encode()).hexdigest()[:12]
    tag = f"{NODE_PY_REPO}:{tag_key}"
    try:
        client.images.get(tag)
        return tag
    except Exception:
        pass
    container = client.containers.run(
        node_image,
        command=["sleep", "infinity"],
        detach=True,
        name=harness_name("node-py", "build"),
        labels=harness_labels("node-py-build"),
    )
    try:
        handle = ContainerHandle(container)
        handle.copy_in(wheelhouse.deps_dir, "/opt")
        wheel_dir = f"/opt/{wheelhouse.deps_dir.name}"
        handle.exec(["python3", "-m", "venv", VENV])
        requirements = [p.name.split("-")[0] for p in wheelhouse.deps_dir.glob("*.whl")]
        handle.exec(
            [f"{VENV}/bin/pip", "install", "--quiet", "--no-index", "--find-links", wheel_dir, *requirements],
            timeout=600,
        )
        handle.exec(["rm", "-rf", wheel_dir])
        container.commit(
            repository=NODE_PY_REPO,
            tag=tag_key,
            changes=['CMD ["/lib/systemd/systemd"]', "LABEL org.hakuriver.harness=1"],
        )
    finally:
        remove_container(container)
    return tag


def install_hakuriver(node: Node, wheelhouse: Wheelhouse) -> str:
    """Install the fresh hakuriver wheel into the node's venv; returns the venv's python."""
    node.copy_in(wheelhouse.hakuriver_wheel, "/tmp")
    node.exec(
        [
            f"{VENV}/bin/pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--force-reinstall",
            f"/tmp/{wheelhouse.hakuriver_wheel.name}",
        ],
        timeout=300,
    )
    return f"{VENV}/bin/python"
