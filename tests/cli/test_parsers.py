"""The CLIs without a Host: pure parsers, local validation, one-line errors."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hakuriver.cli import admin as admin_cli
from hakuriver.cli import client as client_cli
from hakuriver.cli import docker as docker_cli
from hakuriver.cli import host as host_cli
from hakuriver.cli import init as init_cli
from hakuriver.cli import runner as runner_cli
from hakuriver.cli import task as task_cli
from hakuriver.cli.common import EXIT_USAGE, format_command, format_cpus, printable, table
from hakuriver.errors import ValidationError
from tests.harness.procs import free_port

from .fakehost import _isolated_env, write_config  # noqa: F401 - autouse fixture

ROOT = Path(__file__).resolve().parents[2]
MODULES = [task_cli, client_cli, host_cli, runner_cli, docker_cli]


def _help_texts(parser: argparse.ArgumentParser) -> list[str]:
    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name in sorted(action.choices):
                texts.append(action.choices[name].format_help())
    return texts


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_build_parser_is_pure_and_deterministic(module, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("build_parser() must not read config, files or the network")

    monkeypatch.setattr("hakuriver.config.load_config", forbidden)
    monkeypatch.setattr("builtins.open", forbidden)
    monkeypatch.setattr(socket, "socket", forbidden)
    first, second = module.build_parser(), module.build_parser()
    assert isinstance(first, argparse.ArgumentParser)
    assert _help_texts(first) == _help_texts(second)
    assert first.prog == module.PROG


def test_prog_names_match_console_scripts():
    assert [m.PROG for m in MODULES] == [
        "hakuriver.task",
        "hakuriver.client",
        "hakuriver.host",
        "hakuriver.runner",
        "hakuriver.docker",
    ]


@pytest.mark.parametrize(
    "argv, command",
    [
        (["submit", "--", "echo", "$(id)", "a;b"], ["echo", "$(id)", "a;b"]),
        (
            ["submit", "--cores", "2", "--", "sh", "-c", "echo $HOME && rm -rf /"],
            ["sh", "-c", "echo $HOME && rm -rf /"],
        ),
        (["submit", "--", "python", "--cores", "3", "--", "x"], ["python", "--cores", "3", "--", "x"]),
        (["submit", "--", "-v"], ["-v"]),
        (["submit", "echo", "it's", "  spaced  "], ["echo", "it's", "  spaced  "]),
        (["submit", "--", "printf", "%s\\n", "\u00e9\u4e2d", ""], ["printf", "%s\\n", "\u00e9\u4e2d", ""]),
    ],
)
def test_submit_keeps_argv_verbatim(argv, command):
    args = task_cli.build_parser().parse_args(argv)
    assert task_cli.submit_request(args)["command"] == command


def test_submit_request_validates_and_normalises():
    args = task_cli.build_parser().parse_args(
        [
            "submit",
            "--target",
            "node1:0::1,2",
            "--target",
            "node2",
            "--cores",
            "4",
            "--memory",
            "1.5G",
            "--env",
            "A=1=2",
            "--env",
            "EMPTY=",
            "--mount",
            "/data//x/:/x:ro",
            "--container",
            "my-env",
            "--",
            "true",
        ]
    )
    req = task_cli.submit_request(args)
    assert req["targets"] == ["node1:0::1,2", "node2"]
    assert req["cores"] == 4
    assert req["memory"] == int(1.5 * (1 << 30))
    assert req["env"] == {"A": "1=2", "EMPTY": ""}
    assert req["container"] == "my-env"
    assert req["mounts"] == ["/data/x:/x:ro"]
    assert req["privileged"] is None  # not given: the Host's policy default applies


def test_submit_request_systemd_container():
    args = task_cli.build_parser().parse_args(["submit", "--container", "NULL", "--", "true"])
    assert task_cli.submit_request(args)["container"] == "NULL"


def test_submit_request_omits_defaults():
    args = task_cli.build_parser().parse_args(["submit", "--", "true"])
    req = task_cli.submit_request(args)
    assert req == {
        "command": ["true"],
        "cores": None,
        "memory": None,
        "container": None,
        "env": None,
        "mounts": None,
        "privileged": None,
        "targets": None,
        "gpus": None,
        "time_limit": None,
        "after": None,
        "after_any": None,
        "array": None,
        "sweep": None,
        "retries": None,
        "retry_on_exit": None,
        "priority": None,
    }


def test_submit_priority_is_checked_locally():
    parser = task_cli.build_parser()
    assert task_cli.submit_request(parser.parse_args(["submit", "--priority", "-5", "--", "true"]))["priority"] == -5
    for bad in ("1001", "high", "1.5"):
        with pytest.raises(SystemExit):
            parser.parse_args(["submit", "--priority", bad, "--", "true"])
    args = parser.parse_args(["priority", "12", "-3"])
    assert (args.task_id, args.priority) == ("12", -3)


def test_submit_request_takes_an_array_and_checks_it_locally():
    args = task_cli.build_parser().parse_args(["submit", "--array", "0-3,5%2", "--", "true"])
    assert task_cli.submit_request(args)["array"] == "0-3,5%2"
    args = task_cli.build_parser().parse_args(
        ["submit", "--array", "0-3", "--target", "a", "--target", "b", "--", "true"]
    )
    with pytest.raises(ValidationError, match="at most one --target"):
        task_cli.submit_request(args)
    args = task_cli.build_parser().parse_args(["submit", "--array", "1,1", "--", "true"])
    with pytest.raises(ValidationError, match="index 1 is repeated"):
        task_cli.submit_request(args)


def test_submit_request_checks_a_sweep_locally():
    args = task_cli.build_parser().parse_args(["submit", "--sweep", "--array", "%2", "--", "run", "span:{1..3}"])
    req = task_cli.submit_request(args)
    assert (req["sweep"], req["array"], req["command"]) == (True, "%2", ["run", "span:{1..3}"])
    for argv, words in (
        (["submit", "--sweep", "--", "run", "1"], "needs a span"),
        (["submit", "--sweep", "--array", "0-3", "--", "run", "span:[a]"], "give only %N"),
        (["submit", "--sweep", "--", "run", "span:{3..1}"], "ends before it starts"),
    ):
        with pytest.raises(ValidationError, match=words):
            task_cli.submit_request(task_cli.build_parser().parse_args(argv))


def test_list_takes_a_batch_id():
    args = task_cli.build_parser().parse_args(["list", "--batch", "123"])
    assert args.batch == "123"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["submit", "--target", "bad name", "--", "true"], "invalid target 'bad name'"),
        (["submit", "--target", "node1:x", "--", "true"], "NUMA id 'x'"),
        (["submit", "--target", "node1::", "--", "true"], "must be followed by GPU ids"),
        (["submit", "--memory", "12X", "--", "true"], "invalid size '12X'"),
        (["submit", "--memory", "0", "--", "true"], "greater than zero"),
        (["submit", "--env", "NOEQUALS", "--", "true"], "expected KEY=VALUE"),
        (["submit", "--env", "1A=b", "--", "true"], "invalid env name '1A'"),
        (["submit", "--env", "HAKURIVER_TASK_ID=1", "--", "true"], "reserved"),
        (["submit", "--mount", "relative:/x", "--", "true"], "must be absolute"),
        (["submit", "--mount", "/a/../etc:/x", "--", "true"], "'..'"),
        (["submit", "--container", "Bad/Name", "--", "true"], "invalid environment name"),
        (["submit", "--container", "NULL", "--privileged", "--", "true"], "Docker tasks only"),
        (["submit", "--container", "NULL", "--mount", "/a:/b", "--", "true"], "Docker tasks only"),
        (["submit", "--gpus", "1", "--target", "n1", "--", "true"], "not both"),
        (["submit", "--cores", "0", "--", "true"], "--cores"),
        (["submit", "--cores", "two", "--", "true"], "--cores"),
        (["submit", "--cores", "2"], "no command given"),
        (["submit", "--"], "no command given"),
        (["submit", "--", ""], "must not be empty"),
        (["submit", "--wait-timeout", "-1", "--", "true"], "--wait-timeout"),
        (["submit", "--time", "90", "--", "true"], "give a unit"),
        (["submit", "--time", "31d", "--", "true"], "longer than 30d"),
        (["submit", "--time", "1:61", "--", "true"], "up to 59"),
        (["status", "abc"], "invalid task id"),
        (["status", "0"], "out of range"),
        (["wait"], "required"),
        (["list", "--state", "runing"], "unknown state runing"),
        (["list", "--limit", "5000"], "at most 1000"),
        (["list", "--node", "a/b"], "invalid node name"),
        (["logs", "1", "--tail", "-3"], "--tail"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    # A config pointing at a port nobody listens on: nothing may be sent anyway.
    config = write_config(tmp_path / "c.toml", 9)
    code = task_cli.main(["--config", str(config), *argv])
    out, err = capsys.readouterr()
    assert code == EXIT_USAGE
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hakuriver.task: error: ")
    assert message in lines[0]
    assert "Traceback" not in err


def test_options_work_before_and_after_the_subcommand():
    parser = task_cli.build_parser()
    a = parser.parse_args(["--json", "--config", "x.toml", "list"])
    b = parser.parse_args(["list", "--json", "--config", "x.toml"])
    c = parser.parse_args(["list"])
    assert (a.json, a.config) == (b.json, b.config) == (True, "x.toml")
    assert (c.json, c.config, c.verbose) == (False, None, False)


def test_help_exits_0(capsys):
    assert task_cli.main(["--help"]) == 0
    assert "submit" in capsys.readouterr().out
    assert task_cli.main(["submit", "--help"]) == 0
    assert "-- COMMAND" in capsys.readouterr().out


def test_client_bad_node_name_is_usage(capsys, tmp_path):
    config = write_config(tmp_path / "c.toml", 9)
    assert client_cli.main(["--config", str(config), "health", "../etc"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "invalid node name" in err


# ----------------------------------------------------------- config problems
def test_missing_token_is_one_clear_line(capsys, tmp_path):
    config = write_config(tmp_path / "c.toml", 9, token=None)
    assert task_cli.main(["--config", str(config), "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"no API token in {config}" in err and "hakuriver.client login" in err and "$HAKURIVER_TOKEN" in err


def test_no_config_at_all_says_so(capsys):
    assert task_cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no config file found" in err


def test_missing_config_file_is_one_line(capsys, tmp_path):
    assert task_cli.main(["--config", str(tmp_path / "nope.toml"), "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_env_var_config_is_used(capsys, tmp_path, monkeypatch):
    config = write_config(tmp_path / "c.toml", 9, token=None)
    monkeypatch.setenv("HAKURIVER_CONFIG", str(config))
    assert task_cli.main(["list"]) == 1
    assert str(config) in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["list"], ["status", "123"], ["submit", "--", "true"], ["wait", "5"], ["logs", "5", "--follow"]]
)
def test_unreachable_host_is_one_line_exit_1(argv, capsys, tmp_path):
    port = free_port()  # nothing listens there
    config = write_config(tmp_path / "c.toml", port)
    assert task_cli.main(["--config", str(config), *argv]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    expected = f"hakuriver.task: error: cannot reach the Host at http://127.0.0.1:{port}: connection refused"
    assert err.splitlines() == [expected]


def test_unreachable_host_client_cli(capsys, tmp_path):
    port = free_port()  # nothing listens there
    config = write_config(tmp_path / "c.toml", port)
    assert client_cli.main(["--config", str(config), "nodes"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the Host" in err


# --------------------------------------------------------------- subprocess
def _run(module: str, *argv: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HAKURIVER_CONFIG"}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", module, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "argv, code",
    [
        (["submit", "--target", "no good", "--", "echo", "hi"], 2),
        (["submit", "--memory", "lots", "--", "echo", "hi"], 2),
        (["submit", "--env", "=x", "--", "echo", "hi"], 2),
        (["status", "not-an-id"], 2),
        (["list"], 1),  # no config file anywhere
    ],
)
def test_python_dash_m_task_never_tracebacks(argv, code, tmp_path):
    proc = _run("hakuriver.cli.task", *argv, home=tmp_path)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("hakuriver.task: error: ")
    assert "Traceback" not in proc.stderr


def test_python_dash_m_unreachable(tmp_path):
    config = write_config(tmp_path / "c.toml", free_port())
    proc = _run("hakuriver.cli.task", "--config", str(config), "submit", "--", "echo", "hi", home=tmp_path)
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1 and "cannot reach the Host" in proc.stderr


@pytest.mark.parametrize(
    "module",
    [
        "hakuriver.cli.task",
        "hakuriver.cli.client",
        "hakuriver.cli.host",
        "hakuriver.cli.runner",
        "hakuriver.cli.docker",
    ],
)
def test_python_dash_m_help(module, tmp_path):
    proc = _run(module, "--help", home=tmp_path)
    assert proc.returncode == 0 and "usage:" in proc.stdout


# -------------------------------------------------------------- formatting
def test_table_aligns_and_marks_missing():
    text = table(("A", "LONGER"), [("x", None), ("yyyy", "z")])
    assert text.splitlines() == ["A     LONGER", "x     -", "yyyy  z"]


def test_format_command_quotes_for_display_and_truncates():
    assert format_command(["echo", "a b", "$(id)"]) == "echo 'a b' '$(id)'"
    assert format_command(["x" * 50], 10) == "xxxxxxx..."


def test_format_cpus_ranges():
    assert format_cpus([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"


@pytest.mark.parametrize("flag, value", [([], None), (["--privileged"], True), (["--no-privileged"], False)])
def test_privileged_is_tristate(flag, value):
    args = task_cli.build_parser().parse_args(["submit", *flag, "--", "true"])
    assert task_cli.submit_request(args)["privileged"] is value


def test_multi_line_commands_stay_on_one_line():
    # A `python -c` script with newlines and tabs, as `list` and `status` show it.
    command = ["python3", "-u", "-c", "import time\nfor i in range(3):\n\tprint(i)\r"]
    shown = format_command(command)
    assert "\n" not in shown and "\t" not in shown and "\r" not in shown
    assert shown == "python3 -u -c 'import time\\nfor i in range(3):\\n\\tprint(i)\\r'"
    # Escaped before truncating: the width still holds.
    assert len(format_command(command, 20)) == 20
    # Any cell with user text: one row stays one line, escape sequences are shown, not sent.
    text = table(("NAME", "IMAGE"), [("a\nb", "\x1b[31mred"), ("c", "d")])
    assert text.splitlines() == ["NAME  IMAGE", "a\\nb  \\x1b[31mred", "c     d"]
    assert printable("no controls: ü ⏎ \\n") == "no controls: ü ⏎ \\n"


def test_list_table_keeps_one_row_per_task(capsys, monkeypatch):
    tasks = [{"task_id": "7", "state": "running", "command": ["sh", "-c", "echo a\necho b"], "submitted_at": 0}]

    class Host:
        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return None

        async def list_tasks(self, **kwargs):
            return {"tasks": tasks}

    args = task_cli.build_parser().parse_args(["list"])
    assert asyncio.run(args.func(args, lambda: Host())) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "'echo a\\necho b'" in lines[1]


# ------------------------------------------------------- no abbreviations
ALL_MODULES = [*MODULES, admin_cli, init_cli]


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += _all_parsers(child)
    return found


@pytest.mark.parametrize("module", ALL_MODULES, ids=lambda m: m.__name__)
def test_no_parser_takes_abbreviations(module):
    parsers = _all_parsers(module.build_parser())
    assert len(parsers) >= 1
    assert all(p.allow_abbrev is False for p in parsers), [p.prog for p in parsers if p.allow_abbrev]


@pytest.mark.parametrize(
    "module, argv",
    [
        (task_cli, ["submit", "--core", "2", "--", "true"]),
        (task_cli, ["submit", "--mem", "1G", "--", "true"]),
        (task_cli, ["logs", "1", "--foll"]),
        (task_cli, ["list", "--js"]),
        (docker_cli, ["create-container", "img", "env", "--pul"]),
        (client_cli, ["nodes", "--conf", "x.toml"]),
        (admin_cli, ["user", "add", "bob", "--adm"]),
    ],
)
def test_a_prefix_of_an_option_is_a_usage_error(module, argv, capsys, tmp_path):
    config = write_config(tmp_path / "c.toml", 9)
    code = module.main(["--config", str(config), *argv])
    out, err = capsys.readouterr()
    assert code == EXIT_USAGE, err
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(f"{module.PROG}: error: unrecognized arguments: ")


# ---------------------------------------------------- exit codes in --help
@pytest.mark.parametrize(
    "module, argv, waits",
    [
        (task_cli, [], True),
        (task_cli, ["submit"], True),
        (task_cli, ["wait"], True),
        (client_cli, [], False),
        (docker_cli, [], False),
        (admin_cli, [], False),
    ],
)
def test_help_lists_only_the_exit_codes_a_command_returns(module, argv, waits, capsys):
    assert module.main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert "exit status:" in out
    assert ("124" in out) is waits
    assert ("waited-for task" in out) is waits
    for code in ("  0 ", "  1 ", "  2 ", "  130 "):
        assert code in out


@pytest.mark.parametrize(("flag", "seconds"), [("2h", 7200), ("90m", 5400), ("45s", 45), ("1:30:00", 5400)])
def test_submit_time_is_sent_as_seconds(flag, seconds):
    args = task_cli.build_parser().parse_args(["submit", "--time", flag, "--", "true"])
    assert task_cli.submit_request(args)["time_limit"] == seconds


def test_wait_exits_1_for_a_timeout():
    waited = {"done": True, "tasks": [{"state": "completed"}, {"state": "timeout"}]}
    assert task_cli.wait_status(waited) == 1
