"""Local Docker images for the test-suite, built with debootstrap (no registry here).

Importable::

    from tests.images import TASK_IMAGE, NODE_IMAGE, NODE_DOCKER_IMAGE, ensure_images

Runnable::

    python -m tests.images build [--only task|node|node-docker] [--force]
    python -m tests.images sweep [--all]      # leftover containers/networks, stale images
    python -m tests.images tags               # print name=tag lines

Each image is ``debootstrap --variant=minbase --include=<packages> bookworm`` plus a few
declared file edits, imported with ``tar -C ROOTFS -c . | docker import - TAG``.  The tag is
``hakuriver-test/<name>:<hash>`` where the hash covers the package list, the file edits and
``BUILDER_VERSION``; a build is skipped when ``docker image inspect TAG`` succeeds, so only the
first run pays for debootstrap.  Downloads are shared between images through debootstrap's
``--cache-dir``.  Builds hold a lock file so two concurrent runs do not build twice.

Environment: HAKURIVER_TEST_MIRROR (Debian mirror), HAKURIVER_TEST_DEBOOTSTRAP_CACHE (package
cache, default /var/cache/hakuriver-debootstrap), HAKURIVER_TEST_BUILD_DIR (parent of the
temporary rootfs, default /var/tmp), HAKURIVER_TEST_IMAGE_REPO (default hakuriver-test).

Images:

* ``task``        minbase + python3, coreutils: the default task environment.
* ``node``        boots systemd as PID 1 (see tests/harness/node.py for the run flags).
* ``node-docker`` the node plus docker.io (docker.service enabled, inner dockerd on vfs).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

# Bump when the build recipe changes in a way the declared specs below do not capture.
BUILDER_VERSION = "2"

SUITE = "bookworm"
MIRROR = os.environ.get("HAKURIVER_TEST_MIRROR", "http://deb.debian.org/debian")
CACHE_DIR = os.environ.get("HAKURIVER_TEST_DEBOOTSTRAP_CACHE", "/var/cache/hakuriver-debootstrap")
BUILD_PARENT = os.environ.get("HAKURIVER_TEST_BUILD_DIR", "/var/tmp")
REPOSITORY = os.environ.get("HAKURIVER_TEST_IMAGE_REPO", "hakuriver-test")
HARNESS_LABEL = "org.hakuriver.harness"
IMAGE_NAME_LABEL = "org.hakuriver.image"

PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageSpec:
    name: str
    packages: tuple[str, ...]
    # path inside rootfs -> file content (str); written after debootstrap.
    files: Mapping[str, str] = field(default_factory=dict)
    # path inside rootfs -> symlink target (masks are links to /dev/null, enables to units).
    symlinks: Mapping[str, str] = field(default_factory=dict)
    # paths inside rootfs removed after debootstrap (files or trees).
    remove: tuple[str, ...] = ()
    # extra `docker import --change` instructions.
    changes: tuple[str, ...] = ()

    def digest(self) -> str:
        blob = json.dumps(
            {
                "builder": BUILDER_VERSION,
                "suite": SUITE,
                "packages": sorted(self.packages),
                "files": dict(sorted(self.files.items())),
                "symlinks": dict(sorted(self.symlinks.items())),
                "remove": sorted(self.remove),
                "changes": list(self.changes),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def repo(self) -> str:
        return f"{REPOSITORY}/{self.name}"

    @property
    def tag(self) -> str:
        return f"{self.repo}:{self.digest()}"


# Files every image gets rid of: debootstrap copies the build machine's name and resolver;
# docker provides both at run time.  An empty machine-id makes each container get its own.
_COMMON_REMOVE = ("etc/hostname", "etc/resolv.conf", "var/lib/dbus/machine-id")
_COMMON_FILES = {"etc/machine-id": ""}

# None of these is needed for a clean boot here (the image reaches "running" without masks);
# they are masked to keep nodes quiet and deterministic: no udev/hardware units, no gettys,
# and above all no apt-daily timers grabbing the dpkg lock in the middle of an Ansible run.
_NODE_MASKS = (
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-modules-load.service",
    "systemd-remount-fs.service",
    "systemd-firstboot.service",
    "systemd-hwdb-update.service",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "getty.target",
    "console-getty.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
)

_NODE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "sudo",
    "python3",
    "python3-venv",
    "python3-apt",
    "numactl",
    "iproute2",
    "procps",
    "curl",
    "ca-certificates",
)

_NODE_FILES = {
    **_COMMON_FILES,
    # journal in memory, small: nodes are short-lived.
    "etc/systemd/journald.conf.d/10-hakuriver-test.conf": ("[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n"),
    # `docker stop` sends SIGTERM; systemd wants SIGRTMIN+3 (set per container by the harness).
    # Give services a short stop timeout so teardown never waits 90 s on a unit.
    "etc/systemd/system.conf.d/10-hakuriver-test.conf": (
        "[Manager]\nDefaultTimeoutStopSec=10s\nDefaultTimeoutStartSec=60s\n"
    ),
}

_NODE_CHANGES = (
    "ENV container=docker",
    f"ENV PATH={PATH_ENV}",
    'CMD ["/lib/systemd/systemd"]',
)

IMAGES: dict[str, ImageSpec] = {
    "task": ImageSpec(
        name="task",
        packages=("python3", "coreutils"),
        files=dict(_COMMON_FILES),
        remove=_COMMON_REMOVE,
        changes=(f"ENV PATH={PATH_ENV}", 'CMD ["/bin/sh"]'),
    ),
    "node": ImageSpec(
        name="node",
        packages=_NODE_PACKAGES,
        files=_NODE_FILES,
        symlinks={f"etc/systemd/system/{u}": "/dev/null" for u in _NODE_MASKS},
        remove=_COMMON_REMOVE,
        changes=_NODE_CHANGES,
    ),
    "node-docker": ImageSpec(
        name="node-docker",
        packages=_NODE_PACKAGES + ("docker.io",),
        files={
            **_NODE_FILES,
            # overlay2 on top of the outer overlay2 does not work: say vfs explicitly instead
            # of relying on dockerd's fallback.  The systemd cgroup driver puts inner
            # containers under the node's own cgroup (.../system.slice/docker-<id>.scope);
            # with cgroupfs + cgroupns=host they would land in the *outer* /docker/<id>.
            "etc/docker/daemon.json": json.dumps(
                {"storage-driver": "vfs", "exec-opts": ["native.cgroupdriver=systemd"]},
                indent=2,
            )
            + "\n",
        },
        symlinks={
            **{f"etc/systemd/system/{u}": "/dev/null" for u in _NODE_MASKS},
            "etc/systemd/system/multi-user.target.wants/docker.service": "/lib/systemd/system/docker.service",
            "etc/systemd/system/sockets.target.wants/docker.socket": "/lib/systemd/system/docker.socket",
            "etc/systemd/system/multi-user.target.wants/containerd.service": "/lib/systemd/system/containerd.service",
        },
        remove=_COMMON_REMOVE,
        changes=_NODE_CHANGES,
    ),
}

TASK_IMAGE = IMAGES["task"].tag
NODE_IMAGE = IMAGES["node"].tag
NODE_DOCKER_IMAGE = IMAGES["node-docker"].tag
ALL_TAGS = {name: spec.tag for name, spec in IMAGES.items()}


class ImageBuildError(RuntimeError):
    pass


def _log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def image_exists(tag: str) -> bool:
    r = subprocess.run(
        ["docker", "image", "inspect", tag],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return r.returncode == 0


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(os.path.join(CACHE_DIR, ".build.lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mounts_under(path: str) -> list[str]:
    real = os.path.realpath(path)
    found = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            mnt = line.split()[1].replace("\\040", " ")
            if mnt == real or mnt.startswith(real + "/"):
                found.append(mnt)
    return sorted(found, key=len, reverse=True)


def _remove_tree(path: str) -> None:
    """Remove a build root, first unmounting whatever a failed debootstrap left inside."""
    for mnt in _mounts_under(path):
        subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
    if _mounts_under(path):
        raise ImageBuildError(f"cannot unmount everything under {path}; not removing it")
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):
        raise ImageBuildError(f"could not remove build dir {path}")


@contextlib.contextmanager
def _build_dir(name: str) -> Iterator[str]:
    os.makedirs(BUILD_PARENT, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"hkr-image-{name}-", dir=BUILD_PARENT)
    try:
        yield tmp
    finally:
        _remove_tree(tmp)


def _inside(rootfs: str, rel: str) -> str:
    rel = rel.lstrip("/")
    full = os.path.normpath(os.path.join(rootfs, rel))
    if not full.startswith(os.path.normpath(rootfs) + os.sep):
        raise ImageBuildError(f"path escapes rootfs: {rel}")
    return full


def _customize(spec: ImageSpec, rootfs: str) -> None:
    for rel in spec.remove:
        p = _inside(rootfs, rel)
        if os.path.islink(p) or os.path.isfile(p):
            os.unlink(p)
        elif os.path.isdir(p):
            shutil.rmtree(p)
    for rel, content in spec.files.items():
        p = _inside(rootfs, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if os.path.islink(p):
            os.unlink(p)
        with open(p, "w") as fh:
            fh.write(content)
    for rel, target in spec.symlinks.items():
        p = _inside(rootfs, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if os.path.lexists(p):
            os.unlink(p)
        os.symlink(target, p)
    # Do not ship package caches and lists.
    for rel in ("var/cache/apt/archives", "var/lib/apt/lists"):
        d = _inside(rootfs, rel)
        if os.path.isdir(d):
            for entry in os.listdir(d):
                full = os.path.join(d, entry)
                if os.path.isfile(full) and not os.path.islink(full):
                    os.unlink(full)
    # Things the image needs that a missing package would only show at boot time.
    for must in _required_paths(spec):
        if not os.path.lexists(_inside(rootfs, must)):
            raise ImageBuildError(f"{spec.name}: {must} missing from the built rootfs")


def _required_paths(spec: ImageSpec) -> list[str]:
    req = ["usr/bin/python3"]
    if "systemd" in spec.packages:
        req += ["lib/systemd/systemd", "usr/bin/systemd-run", "usr/bin/sudo"]
    if "docker.io" in spec.packages:
        req += ["usr/sbin/dockerd", "usr/bin/docker", "lib/systemd/system/docker.service"]
    return req


def _run_logged(argv: list[str], log_path: str) -> None:
    with open(log_path, "ab") as log:
        r = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        with open(log_path, "rb") as fh:
            tail = fh.read()[-4000:].decode(errors="replace")
        raise ImageBuildError(f"{' '.join(argv[:3])} ... failed (rc={r.returncode}):\n{tail}")


def _import(spec: ImageSpec, rootfs: str) -> None:
    changes: list[str] = [
        f"LABEL {HARNESS_LABEL}=1",
        f"LABEL {IMAGE_NAME_LABEL}={spec.name}",
        f"LABEL org.hakuriver.builder={BUILDER_VERSION}",
        *spec.changes,
    ]
    import_argv = ["docker", "import"]
    for c in changes:
        import_argv += ["--change", c]
    import_argv += ["-", spec.tag]
    # The with block closes both of tar's pipes and waits for it, on failure too.
    with subprocess.Popen(
        ["tar", "--numeric-owner", "-C", rootfs, "-c", "."],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as tar:
        assert tar.stdout is not None and tar.stderr is not None
        try:
            imp = subprocess.run(import_argv, stdin=tar.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        finally:
            tar.stdout.close()  # docker import is done with it: tar must not block on a full pipe
        tar_err = tar.stderr.read()
        tar_rc = tar.wait()
    if tar_rc != 0 or imp.returncode != 0:
        raise ImageBuildError(
            f"import of {spec.tag} failed: tar rc={tar_rc} {tar_err.decode(errors='replace')!r};"
            f" docker import rc={imp.returncode} {imp.stderr.decode(errors='replace')!r}"
        )


def build_image(spec: ImageSpec, force: bool = False) -> str:
    """Build one image unless its tag exists. Returns the tag."""
    if not force and image_exists(spec.tag):
        return spec.tag
    for tool in ("debootstrap", "docker", "tar"):
        if shutil.which(tool) is None:
            raise ImageBuildError(f"{tool} not found on PATH (scripts/test.sh installs it)")
    if os.geteuid() != 0:
        raise ImageBuildError("building images needs root (debootstrap)")
    with _build_lock():
        if not force and image_exists(spec.tag):  # built meanwhile by someone else
            return spec.tag
        t0 = time.monotonic()
        _log(f"building {spec.tag} ({len(spec.packages)} packages) ...")
        os.makedirs(CACHE_DIR, exist_ok=True)
        with _build_dir(spec.name) as tmp:
            rootfs = os.path.join(tmp, "rootfs")
            log_path = os.path.join(tmp, "debootstrap.log")
            argv = [
                "debootstrap",
                "--variant=minbase",
                f"--cache-dir={CACHE_DIR}",
                "--include=" + ",".join(spec.packages),
                SUITE,
                rootfs,
                MIRROR,
            ]
            _run_logged(argv, log_path)
            _customize(spec, rootfs)
            _import(spec, rootfs)
        _log(f"built {spec.tag} in {time.monotonic() - t0:.0f}s")
    return spec.tag


def ensure_images(only: Iterable[str] | None = None, force: bool = False) -> dict[str, str]:
    """Make sure the images exist (building the missing ones). Returns {name: tag}."""
    names = list(only) if only else list(IMAGES)
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        raise ValueError(f"unknown image(s) {unknown}; known: {sorted(IMAGES)}")
    return {n: build_image(IMAGES[n], force=force) for n in names}


def _harness_images() -> list[tuple[str, str]]:
    """(id, repo:tag) of every image carrying the harness label ('<none>' for untagged)."""
    r = subprocess.run(
        [
            "docker",
            "image",
            "ls",
            "--no-trunc",
            "--filter",
            f"label={HARNESS_LABEL}=1",
            "--format",
            "{{.ID}} {{.Repository}}:{{.Tag}}",
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return [tuple(line.split(" ", 1)) for line in r.stdout.splitlines() if line.strip()]  # type: ignore[misc]


def sweep_images(all_images: bool = False) -> list[str]:
    """Remove harness-labelled images that are not current tags (all of them with all_images).

    Images still used by a container are left alone (docker refuses); returns what was removed.
    """
    current = set(ALL_TAGS.values())
    removed = []
    for image_id, ref in _harness_images():
        # Only what this builder made: its repository, or untagged leftovers of it. Other
        # images inherit the harness label from ours (a test tagging or committing the task
        # image); they are not ours to remove.
        if "<none>" not in ref and not ref.startswith(f"{REPOSITORY}/"):
            continue
        if not all_images and ref in current:
            continue
        target = image_id if "<none>" in ref else ref
        r = subprocess.run(
            ["docker", "image", "rm", target],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if r.returncode == 0:
            removed.append(target)
        else:
            _log(f"kept {target}: {r.stderr.strip()}")
    return removed


def image_in_node(node_container: str, image: str) -> bool:
    r = subprocess.run(
        ["docker", "exec", node_container, "docker", "image", "inspect", image],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return r.returncode == 0


def load_image_into_node(node_container: str, image: str, timeout: float = 300) -> None:
    """``docker save IMAGE | docker exec -i NODE docker load`` (skipped when already there).

    ``node_container`` is a container name or id of a node whose inner dockerd is up.
    """
    if image_in_node(node_container, image):
        return
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        load = subprocess.run(
            ["docker", "exec", "-i", node_container, "docker", "load"],
            stdin=save.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
    finally:
        assert save.stdout is not None
        save.stdout.close()
        try:
            save_rc = save.wait(timeout=30)
        except subprocess.TimeoutExpired:
            save.kill()
            save_rc = save.wait()
        save_err = save.stderr.read() if save.stderr else b""
        if save.stderr is not None:
            save.stderr.close()
    if save_rc != 0 or load.returncode != 0:
        raise RuntimeError(
            f"loading {image} into {node_container} failed: docker save rc={save_rc}"
            f" {save_err.decode(errors='replace')!r}; docker load rc={load.returncode}"
            f" {load.stdout.decode(errors='replace')!r} {load.stderr.decode(errors='replace')!r}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.images", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build missing images (cached by tag)")
    b.add_argument("--only", action="append", choices=sorted(IMAGES), help="build only this image (repeatable)")
    b.add_argument("--force", action="store_true", help="rebuild even if the tag exists")
    s = sub.add_parser(
        "sweep",
        help="remove leftover harness containers/networks (of ended"
        " sessions) and harness images that are not current tags",
    )
    s.add_argument(
        "--all", action="store_true", help="remove every harness container/network and current image tags too"
    )
    sub.add_parser("tags", help="print name=tag for every image")
    args = ap.parse_args(argv)

    if args.cmd == "build":
        t0 = time.monotonic()
        try:
            tags = ensure_images(args.only, force=args.force)
        except ImageBuildError as exc:
            _log(f"FAILED: {exc}")
            return 1
        for name, tag in tags.items():
            print(f"{name}={tag}")
        _log(f"images ready in {time.monotonic() - t0:.1f}s")
        return 0
    if args.cmd == "sweep":
        # Containers/networks first (they pin images): leftovers of ended sessions, or all of
        # them with --all; then images.
        try:
            from tests.harness.engine import connect_engine, sweep
        except ImportError as exc:  # docker SDK missing outside the venv
            _log(f"skipping container/network sweep: {exc}")
        else:
            for what in sweep(connect_engine(start=False), everything=args.all):
                print(f"removed {what}")
        for ref in sweep_images(all_images=args.all):
            print(f"removed image {ref}")
        return 0
    if args.cmd == "tags":
        for name, tag in ALL_TAGS.items():
            print(f"{name}={tag}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
