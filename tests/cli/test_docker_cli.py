"""`hakuriver.docker`: import-tar's engine check against a real Host, and how progress is shown."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from hakuriver.cli import docker as docker_cli
from hakuriver.cli.docker import ProgressPrinter
from tests.inproc.cluster import ThreadedCluster

from .fakehost import _isolated_env, write_config  # noqa: F401 - autouse fixture


# ----------------------------------------------------------- engine preflight
def test_import_tar_refuses_before_uploading_when_the_host_has_no_docker(tmp_path: Path, monkeypatch, capsys):
    # The Host's Docker SDK reads DOCKER_HOST: a socket path where nothing listens
    # is a Host on which Docker is not installed (or not running).
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-docker.sock'}")
    cluster = ThreadedCluster(tmp_path / "cluster")
    try:
        cluster.start_host()
        config = write_config(tmp_path / "c.toml", cluster.inner.host_port, token=cluster.token)
        tarball = tmp_path / "image.tar"
        tarball.write_bytes(b"\0" * (3 << 20))
        code = docker_cli.main(["--config", str(config), "import-tar", str(tarball), "myenv"])
    finally:
        cluster.close()
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    [line] = err.splitlines()  # one line, and no "[upload] sent N MiB" before it
    assert line.startswith("hakuriver.docker: error: cannot reach the Docker engine on the Host: ")
    assert "install Docker on the Host" in line and "docker group" in line
    assert line.endswith("(nothing was uploaded)")


# ------------------------------------------------------------------ progress
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def upload(sent_mib: int, total_mib: int = 160) -> dict[str, object]:
    return {
        "event": "progress",
        "stage": "upload",
        "message": f"sent {sent_mib} MiB",
        "bytes": sent_mib << 20,
        "total": total_mib << 20,
    }


def test_progress_off_a_terminal_is_a_line_every_few_seconds_and_the_last_figure():
    out, clock = io.StringIO(), Clock()
    show = ProgressPrinter(out, tty=False, every=5.0, clock=clock)
    for mib in range(1, 161):  # 160 MiB at 16 MiB/s: 10 s (1/16 s is exact in binary)
        clock.now += 0.0625
        show(upload(mib))
    show({"event": "progress", "stage": "load", "message": "loading the tarball"})
    show.close()
    assert out.getvalue().splitlines() == [
        "[upload] sent 1 MiB",
        "[upload] sent 81 MiB",  # 5 s later
        "[upload] sent 160 MiB",  # the stage's last figure, when the next one starts
        "[load] loading the tarball",
    ]


def test_progress_off_a_terminal_ends_with_the_last_figure_on_close():
    out, clock = io.StringIO(), Clock()
    show = ProgressPrinter(out, tty=False, every=5.0, clock=clock)
    show(upload(1, 2))
    show(upload(2, 2))
    show.close()
    show.close()
    assert out.getvalue().splitlines() == ["[upload] sent 1 MiB", "[upload] sent 2 MiB"]


def test_progress_on_a_terminal_rewrites_one_line():
    out = io.StringIO()
    show = ProgressPrinter(out, tty=True)
    for mib in (1, 2, 3):
        show(upload(mib, 3))
    show({"event": "progress", "stage": "load", "message": "loading"})
    show.close()
    text = out.getvalue()
    assert text == (
        "\r\x1b[K[upload] sent 1 MiB\r\x1b[K[upload] sent 2 MiB\r\x1b[K[upload] sent 3 MiB\n[load] loading\n"
    )


@pytest.mark.parametrize("tty", [True, False])
def test_progress_lines_without_a_count_are_printed_as_they_come(tty):
    out = io.StringIO()
    show = ProgressPrinter(out, tty=tty)
    show({"stage": "pull", "message": "a: Downloading"})
    show({"stage": "pull", "message": "a: Pull complete\nb"})
    show.close()
    assert out.getvalue() == "[pull] a: Downloading\n[pull] a: Pull complete\\nb\n"
