"""Man pages: one per console script, current with its parser, shipped in the wheel."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hakuriver.deploy import manpages

REPO = Path(__file__).resolve().parents[2]


def test_every_console_script_has_a_page_and_the_right_parser() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(manpages.SCRIPTS)
    for prog, target in scripts.items():
        module, _, func = target.partition(":")
        assert manpages.SCRIPTS[prog][0] == module
        assert func == "run" and hasattr(importlib.import_module(module), "build_parser")
        assert manpages.build_parser_for(prog).prog == prog
    assert sorted(p.name for p in (REPO / "man").glob("*.1")) == sorted(f"{p}.1" for p in scripts)


def test_committed_pages_are_current(tmp_path: Path) -> None:
    fresh = tmp_path / "man"
    manpages.write_pages(fresh)
    renderer = manpages.renderer_id()
    for page in sorted(fresh.iterdir()):
        committed = REPO / "man" / page.name
        assert committed.is_file(), f"man/{page.name} is missing: run python -m hakuriver.deploy.manpages"
        text = committed.read_text()
        if manpages.page_renderer(text) != renderer:
            pytest.skip(
                f"man/{page.name} was rendered by {manpages.page_renderer(text)}, this is {renderer}: "
                "argparse layouts differ between them, so staleness cannot be judged here"
            )
        assert text == page.read_text(), (
            f"man/{page.name} is stale against its parser: run python -m hakuriver.deploy.manpages"
        )


@contextlib.contextmanager
def _audit_opens() -> Iterator[list[Any]]:
    events: list[Any] = []
    active = [True]

    def hook(event: str, args: Any) -> None:
        if active[0] and (
            event in ("open", "subprocess.Popen", "os.system", "os.listdir", "os.scandir")
            or event.startswith("socket.")
        ):
            events.append((event, args[:2] if isinstance(args, tuple) else args))

    sys.addaudithook(hook)  # hooks cannot be removed; this one goes quiet after the block
    try:
        yield events
    finally:
        active[0] = False


def test_build_parsers_are_pure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No file, socket or process while a parser is built, and the same page
    whatever the environment, home, config or terminal width."""
    reference = manpages.render_all()
    for prog in manpages.SCRIPTS:
        importlib.import_module(manpages.SCRIPTS[prog][0])
        with _audit_opens() as events:
            manpages.build_parser_for(prog)
        assert events == [], f"{prog}: build_parser() touched {events}"
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    monkeypatch.setenv("HAKURIVER_CONFIG", str(tmp_path / "nothing.toml"))
    monkeypatch.setenv("COLUMNS", "37")
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.chdir(tmp_path)
    assert manpages.render_all() == reference
    assert os.environ["COLUMNS"] == "37", "the renderer restores the environment"


def test_check_mode_reports_stale_pages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manpages.write_pages(tmp_path)
    assert manpages.main(["--check", "--output-dir", str(tmp_path)]) == 0
    (tmp_path / "hakuriver.task.1").write_text("old\n")
    assert manpages.main(["--check", "--output-dir", str(tmp_path)]) == 1
    assert "hakuriver.task.1" in capsys.readouterr().err


def test_the_wheel_ships_the_pages(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(REPO)],
        check=True,
        cwd=str(tmp_path),
    )
    [wheel] = tmp_path.glob("hakuriver-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        pages = {n.rsplit("/", 1)[1]: zf.read(n).decode() for n in zf.namelist() if "/data/share/man/man1/" in n}
        entry_points = next(zf.read(n).decode() for n in zf.namelist() if n.endswith("entry_points.txt"))
    assert sorted(pages) == sorted(f"{p}.1" for p in manpages.SCRIPTS)
    for name, text in pages.items():
        assert text == (REPO / "man" / name).read_text()
    assert "hakuriver.init = hakuriver.cli.init:run" in entry_points
