"""The launcher against a unit that ends between its look and its act.

A transient unit is unloaded the moment it ends, so `systemctl stop` or `kill` on a
unit that `systemctl show` called live a moment ago fails with "Unit ... not loaded".
Real systemd cannot be made to lose that race on cue, so a stand-in `systemctl`
(a real executable the launcher runs, as it runs the real one) plays it: the first
`show` says live, the act fails as systemd does, every later `show` says gone.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from hakuriver import launcher as L

STAND_IN = """#!{python}
import json, sys
from pathlib import Path
log = Path({log!r})
seen = log.read_text().splitlines() if log.exists() else []
verb = next(a for a in sys.argv[1:] if not a.startswith("-"))
with log.open("a") as f:
    f.write(verb + "\\n")
if verb == "show":
    unit = sys.argv[-1]
    if "show" not in seen or not {ends}:
        print("Id=" + unit, "LoadState=loaded", "ActiveState=active", "SubState=running",
              "MainPID=4242", sep="\\n")
    else:
        print("Id=" + unit, "LoadState=not-found", "ActiveState=inactive", "SubState=dead", sep="\\n")
    sys.exit(0)
if verb in ("stop", "kill"):
    sys.stderr.write("Failed to %s %s: Unit %s not loaded.\\n" % (verb, sys.argv[-1], sys.argv[-1]))
    sys.exit(5)
sys.exit(0)
"""


@pytest.fixture
def racing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[L.LauncherConfig, Path]:
    return stand_in(tmp_path, monkeypatch, ends=True)


def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, ends: bool) -> tuple[L.LauncherConfig, Path]:
    """`ends`: the unit is gone after the first look; otherwise it stays live."""
    log = tmp_path / "calls"
    tool = tmp_path / "systemctl"
    tool.write_text(STAND_IN.format(python=sys.executable, log=str(log), ends=ends))
    tool.chmod(stat.S_IRWXU)
    state = tmp_path / "state"
    state.mkdir()
    (state / "7.json").write_text(json.dumps({"exit_code": 0}))
    cfg = L.parse_config(
        {
            "task_users": ["alice"],
            "shared_dirs": ["/srv/shared"],
            "local_temp_dirs": ["/srv/temp"],
            "state_dir": str(state),
            "systemctl": str(tool),
        }
    )
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # the subcommands insist on root
    return cfg, log


def test_cleanup_of_a_unit_that_ended_meanwhile_still_drops_its_record(racing) -> None:
    cfg, log = racing
    assert L.cmd_cleanup(cfg, "7") == {"unit": L.unit_name("7"), "removed_status": True}
    assert not (Path(cfg.state_dir) / "7.json").exists()
    assert log.read_text().split() == ["show", "stop", "show"]  # one look after the stop serves both checks


def test_a_kill_of_a_unit_that_ended_meanwhile_is_nothing_to_do(racing) -> None:
    cfg, _ = racing
    assert L.cmd_signal(cfg, "7", "SIGTERM", verb="kill") == {
        "unit": L.unit_name("7"),
        "signalled": False,
        "state": "inactive",
    }


def test_a_pause_of_a_unit_that_ended_meanwhile_says_it_is_not_running(racing) -> None:
    cfg, _ = racing
    with pytest.raises(L.Failed, match="is not running"):
        L.cmd_signal(cfg, "7", "SIGSTOP", verb="pause")


def test_a_stop_that_fails_on_a_live_unit_keeps_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _ = stand_in(tmp_path, monkeypatch, ends=False)
    with pytest.raises(L.Failed, match="systemctl stop .* failed: .*not loaded"):
        L.cmd_cleanup(cfg, "7")
    assert (Path(cfg.state_dir) / "7.json").exists()  # kept for the next try
