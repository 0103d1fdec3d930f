#!/usr/bin/env python3
"""Build the wheelhouse the nodes install HakuRiver from (run on the Ansible controller).

The roles' default install source (`hakuriver_install_source: controller`)
never asks a package index for this project by name: the index's
`hakuriver` is the original 0.3 project, not this code. Instead:

1. a wheel of the checkout is built here, from a clean copy of the tree
   (a stale `build/` can carry deleted modules into a wheel) and with a fixed
   SOURCE_DATE_EPOCH, so the same tree always gives the same bytes and a rerun
   copies and installs nothing;
2. for every node platform named by `--target PY:MACHINE:GLIBC` (what the
   role reads from each node's interpreter), `pip download` fetches binary
   wheels of the dependencies for that platform, so a controller on another
   OS, architecture or Python still serves the nodes;
3. each target's directory then holds the project wheel and every dependency:
   the node installs it with `pip install --no-index`.

Standard library only: the controller does not need HakuRiver installed.
Prints one JSON object: the wheel's name and sha256, and each target's dir.
Exit status 1 with one line on stderr when a step fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Never copied into the build tree: caches and virtualenvs anywhere, earlier
# builds and scratch dirs at the top of the checkout only.
IGNORED = ("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".mypy_cache", ".ruff_cache", "node_modules")
IGNORED_AT_TOP = {".git", ".venv", "build", "dist", ".cache", ".whl", ".gl", "molecule", "tests", "bench"}
# Reproducible wheels: the zip entries' timestamps come from here (1980-01-01,
# the earliest a zip file can record).
SOURCE_DATE_EPOCH = "315532800"


def fail(message: str) -> None:
    print(f"build_wheelhouse: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def run(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        # pip's last line is often only "This error originates from a subprocess": lead with its ERROR line.
        errors = [line for line in lines if line.startswith("ERROR:")]
        detail = " | ".join(dict.fromkeys(errors[:1] + lines[-3:])) or f"exit status {proc.returncode}"
        fail(f"{what} failed: {detail}")


def wheel_digest(wheel: Path) -> str:
    """sha256 over the wheel's files (names and contents), leaving out WHEEL
    and RECORD, which name the builder's version: the stamp a node compares,
    so a newer setuptools on another controller reinstalls nothing."""
    import zipfile

    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            if name.endswith((".dist-info/WHEEL", ".dist-info/RECORD")):
                continue
            digest.update(name.encode() + b"\0" + zf.read(name) + b"\0")
    return digest.hexdigest()


def _ignore_for(root: Path):  # type: ignore[no-untyped-def]
    patterns = shutil.ignore_patterns(*IGNORED)

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = set(patterns(directory, names))
        if Path(directory) == root:
            skipped |= IGNORED_AT_TOP & set(names)
        return skipped

    return ignore


def manylinux_platforms(machine: str, glibc: str) -> list[str]:
    """Every manylinux tag a node with this glibc accepts, newest first.

    pip does not widen an explicit `--platform`, so each compatible tag is
    named: manylinux_2_N for N from the node's glibc down to 2_5, and the
    legacy aliases (manylinux2014 = 2_17, manylinux2010 = 2_12, manylinux1 = 2_5).
    """
    try:
        major, minor = (int(part) for part in glibc.split(".")[:2])
    except ValueError:
        fail(
            f"cannot read the glibc version {glibc!r} (a node without glibc needs hakuriver_install_source: wheelhouse)"
        )
    if major != 2:
        fail(f"glibc {glibc} is not a 2.x version")
    tags = [f"manylinux_2_{n}_{machine}" for n in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{machine}" for n, name in legacy.items() if n <= minor]
    return tags


def target_dir_name(python: str, machine: str, glibc: str) -> str:
    return f"cp{python.replace('.', '')}-{machine}-glibc{glibc}"


def tree_digest(tree: Path) -> str:
    """sha256 over every file's relative path and content: the same tree, the same wheel."""
    digest = hashlib.sha256()
    for path in sorted(p for p in tree.rglob("*") if p.is_file() or p.is_symlink()):
        digest.update(str(path.relative_to(tree)).encode() + b"\0")
        digest.update(os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def build_wheel(python: str, source: Path, out: Path) -> Path:
    if not (source / "pyproject.toml").is_file():
        fail(
            f"{source} is not a HakuRiver checkout (no pyproject.toml); set hakuriver_checkout_dir, "
            "or use hakuriver_install_source: wheelhouse"
        )
    with tempfile.TemporaryDirectory(prefix="hkr-wheel-") as tmp:
        tree = Path(tmp) / "src"
        shutil.copytree(source, tree, ignore=_ignore_for(source), symlinks=True)
        # One playbook run asks once per play: an unchanged tree reuses its wheel.
        digest = tree_digest(tree)
        stamp = out / ".source-sha256"
        existing = list(out.glob("hakuriver-*.whl"))
        if len(existing) == 1 and stamp.is_file() and stamp.read_text().strip() == digest:
            return existing[0]
        built = Path(tmp) / "wheel"
        env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, PIP_DISABLE_PIP_VERSION_CHECK="1")
        run(
            [python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(built), str(tree)],
            f"building the wheel of {source}",
            env,
        )
        wheels = list(built.glob("hakuriver-*.whl"))
        if len(wheels) != 1:
            fail(f"building the wheel of {source} gave {len(wheels)} wheels")
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("hakuriver-*.whl"):
            old.unlink()
        final = out / wheels[0].name
        shutil.copy2(wheels[0], final)
        stamp.write_text(digest + "\n")
    return final


def download_deps(python: str, wheel: Path, target: str, out: Path, index_url: str) -> Path:
    try:
        py, machine, glibc = target.split(":")
    except ValueError:
        fail(f"--target {target!r} is not PYTHON:MACHINE:GLIBC (3.11:x86_64:2.36)")
    dest = out / target_dir_name(py, machine, glibc)
    dest.mkdir(parents=True, exist_ok=True)
    # The same wheel keeps the dependency set it was first given (reruns and
    # later plays install exactly what the first did); a new wheel resolves again.
    stamp = dest / ".wheel-sha256"
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == digest and (dest / wheel.name).is_file():
        return dest
    for old in dest.glob("*.whl"):
        old.unlink()
    argv = [
        python,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--dest",
        str(dest),
        "--only-binary=:all:",
        "--python-version",
        py,
        "--implementation",
        "cp",
        "--abi",
        f"cp{py.replace('.', '')}",
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for tag in manylinux_platforms(machine, glibc):
        argv += ["--platform", tag]
    if index_url:
        argv += ["--index-url", index_url]
    argv.append(str(wheel))
    run(
        argv,
        f"downloading the dependencies for Python {py} on {machine} (glibc {glibc})",
        dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    shutil.copy2(wheel, dest / wheel.name)
    stamp.write_text(digest + "\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--source", required=True, type=Path, help="the HakuRiver checkout")
    parser.add_argument("--out", required=True, type=Path, help="the wheelhouse directory (kept between runs)")
    parser.add_argument("--target", action="append", default=[], help="a node platform, PYTHON:MACHINE:GLIBC")
    parser.add_argument("--index-url", default="", help="where pip downloads the dependencies from")
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose pip builds and downloads")
    args = parser.parse_args(argv)
    proc = subprocess.run([args.python, "-m", "pip", "--version"], capture_output=True)
    if proc.returncode != 0:
        fail(f"{args.python} has no pip; set hakuriver_controller_python to a python3 that has it")
    wheel = build_wheel(args.python, args.source.resolve(), args.out / "hakuriver")
    targets = {t: str(download_deps(args.python, wheel, t, args.out, args.index_url)) for t in sorted(set(args.target))}
    print(json.dumps({"wheel": wheel.name, "sha256": wheel_digest(wheel), "targets": targets}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
