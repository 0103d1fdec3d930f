"""Pure parts of the systemd backend, without I/O: the launcher's validation and
argv builders, the sudoers text, the executor's request and result mapping."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from hakuriver import launcher as L
from hakuriver.deploy.launcher_install import (
    install_plan,
    launcher_config_for,
    launcher_source,
    render_launcher_config,
)
from hakuriver.deploy.sudoers import render_sudoers
from hakuriver.errors import ExecutorError
from hakuriver.launcher import DEFAULT_LAUNCHER_PATH
from hakuriver.models import NumaNode, TaskState
from hakuriver.runner.executors import EXECUTORS, executor_class
from hakuriver.runner.executors.base import Fingerprint, LaunchSpec
from hakuriver.runner.executors.systemd import (
    SystemdExecutor,
    allow_list_summary,
    exit_result_from_record,
    exit_result_from_unit,
    fallback_problem,
    launch_request,
    launcher_argv,
    resolve_task_user,
    service_name,
)

CFG = L.parse_config(
    {
        "task_users": ["alice"],
        "shared_dirs": ["/srv/shared"],
        "local_temp_dirs": ["/srv/temp"],
        "numactl_paths": ["/usr/bin/numactl"],
    }
)


def pw(name: str, uid: int, gid: int) -> SimpleNamespace:
    return SimpleNamespace(pw_name=name, pw_uid=uid, pw_gid=gid, pw_dir=f"/home/{name}", pw_shell="/bin/bash")


ALICE = pw("alice", 1001, 1001)
ROOT = SimpleNamespace(pw_name="root", pw_uid=0, pw_gid=0, pw_dir="/root", pw_shell="/bin/bash")


class FakeAccounts:
    """A node's accounts: name -> (passwd entry, supplementary group names)."""

    GROUPS = {
        "root": 0,
        "sudo": 27,
        "docker": 998,
        "dockerroot": 998,  # a second name for docker's gid
        "hkr": 950,
        "lab": 2000,
        "alice": 1001,
        "bob": 1002,
        "users": 100,
    }

    def __init__(self, accounts: dict[str, tuple[SimpleNamespace, tuple[str, ...]]], groups: dict | None = None):
        self.accounts = accounts
        self.groups = {**self.GROUPS, **(groups or {})}

    def user(self, name: str) -> SimpleNamespace:
        return self.accounts[name][0]

    def groups_of(self, entry: SimpleNamespace) -> dict[int, str]:
        names = {v: k for k, v in reversed(list(self.groups.items()))}  # the first name of each gid
        gids = {entry.pw_gid} | {self.groups[g] for g in self.accounts[entry.pw_name][1]}
        return {gid: names.get(gid, "") for gid in gids}

    def group_gid(self, name: str) -> int | None:
        return self.groups.get(name)


ACCOUNTS = FakeAccounts(
    {
        "alice": (ALICE, ()),
        "root": (ROOT, ()),
        "bob": (pw("bob", 1002, 1002), ("lab",)),  # in lab, supplementary
        "carol": (pw("carol", 1003, 2000), ()),  # in lab, primary
        "dave": (pw("dave", 1004, 1004), ("docker",)),
        "erin": (pw("erin", 1005, 1005), ("sudo", "lab")),
        "hkr": (pw("hkr", 950, 950), ("docker",)),
        "rita": (pw("rita", 1006, 1006), ("hkr",)),  # in the runner's group
        "toor": (pw("toor", 0, 1007), ()),  # uid 0 under another name
        "gina": (pw("gina", 1008, 0), ()),  # primary group root
        "dora": (pw("dora", 1009, 1009), ("dockerroot",)),  # docker's gid, another name
    }
)


def request(**overrides: object) -> dict:
    req = {
        "task_id": "123",
        "user": "alice",
        "command": ["echo", "hi"],
        "shared_dir": "/srv/shared",
        "local_temp_dir": "/srv/temp",
    }
    req.update(overrides)
    return {k: v for k, v in req.items() if v is not None}


def plan(**overrides: object) -> L.TaskPlan:
    return L.validate_request(request(**overrides), CFG, accounts=ACCOUNTS, node_exists=lambda n: n == 0)


# ------------------------------------------------------------------ launcher


def test_a_valid_request_becomes_a_plan_with_a_clean_environment() -> None:
    p = plan(env={"FOO": "bar", "HAKURIVER_TASK_ID": "spoof", "PATH": "/opt/bin"}, cores=2, memory=1 << 30)
    assert p.unit == "hakuriver-task-123.service"
    assert (p.user, p.uid, p.cwd) == ("alice", 1001, "/srv/shared")
    assert p.stdout == "/srv/shared/task_outputs/123.out" and p.stderr == "/srv/shared/task_errors/123.err"
    assert p.argv == ["echo", "hi"]
    assert p.env == {
        "PATH": "/opt/bin",
        "HOME": "/home/alice",
        "USER": "alice",
        "LOGNAME": "alice",
        "SHELL": "/bin/bash",
        "FOO": "bar",
        "HAKURIVER_TASK_ID": "123",
        "HAKURIVER_SHARED_DIR": "/srv/shared",
        "HAKURIVER_LOCAL_TEMP_DIR": "/srv/temp",
    }


def test_a_retry_writes_its_own_log_files() -> None:
    p = plan(attempt=3, stdout="/srv/shared/task_outputs/123.attempt3.out")
    assert (p.stdout, p.stderr) == (
        "/srv/shared/task_outputs/123.attempt3.out",
        "/srv/shared/task_errors/123.attempt3.err",
    )
    assert plan(attempt=1).stdout == "/srv/shared/task_outputs/123.out"


@pytest.mark.parametrize(
    "task_id", ["../1", "1 2", "1;id", "01", "0", "-1", "", "1.service", "9" * 20, "１２", True, 1.5]
)
def test_task_ids_are_digits_only(task_id: object) -> None:
    with pytest.raises(L.Refused, match="task id"):
        plan(task_id=task_id)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"user": "root"}, "not allowed"),
        ({"user": "bob"}, "not allowed"),
        ({"user": "alice -p User=root"}, "plain user name"),
        ({"shared_dir": "/etc"}, "shared dir /etc is not"),
        ({"shared_dir": "/srv/shared/../../etc"}, "shared dir /etc is not"),
        ({"shared_dir": "/srv/shared/sub"}, "shared dir /srv/shared/sub is not"),
        ({"shared_dir": "srv/shared"}, "absolute"),
        ({"shared_dir": "/srv/shared x"}, "may only contain"),
        ({"local_temp_dir": "/tmp"}, "local temp dir /tmp is not"),
        ({"stdout": "/etc/passwd"}, "stdout must be"),
        ({"stderr": "/srv/shared/task_errors/124.err"}, "stderr must be"),
        ({"properties": ["User=root"]}, "unknown request field"),
        ({"User": "root"}, "unknown request field"),
        ({"command": []}, "non-empty list"),
        ({"command": "echo hi"}, "non-empty list"),
        ({"command": ["", "x"]}, "must not be empty"),
        ({"command": ["echo", "a\x00b"]}, "NUL"),
        ({"env": {"A=B": "x"}}, "not a valid variable name"),
        ({"env": {"A": 1}}, "must be a string"),
        ({"cores": 0}, "cores"),
        ({"cores": "2; rm"}, "cores"),
        ({"cores": True}, "cores"),
        ({"memory": "50M"}, "memory"),
        ({"numa": 0}, "needs numactl"),
        ({"numa": 0, "numactl": "/tmp/numactl"}, "not one the launcher config allows"),
        ({"numa": 3, "numactl": "/usr/bin/numactl"}, "no NUMA node 3"),
        ({"numactl": "/usr/bin/numactl"}, "only given with a NUMA target"),
        ({"runner": "a b"}, "runner name"),
        ({"attempt": 0}, "attempt must be a whole number"),
        ({"attempt": "2"}, "attempt must be a whole number"),
        ({"attempt": True}, "attempt must be a whole number"),
        ({"attempt": 2, "stdout": "/srv/shared/task_outputs/123.out"}, "stdout must be"),
    ],
)
def test_requests_outside_the_allow_list_are_refused(overrides: dict, match: str) -> None:
    with pytest.raises(L.Refused, match=match):
        plan(**overrides)


def test_missing_fields_and_unknown_users_are_refused() -> None:
    with pytest.raises(L.Refused, match="missing request field"):
        L.validate_request({"task_id": "1"}, CFG, accounts=ACCOUNTS)
    cfg = L.parse_config({"task_users": ["ghost"], "shared_dirs": ["/srv/shared"], "local_temp_dirs": ["/srv/temp"]})
    with pytest.raises(L.Refused, match="does not exist on this node"):
        L.validate_request(request(user="ghost"), cfg, accounts=ACCOUNTS)


def allow(**fields: object) -> L.LauncherConfig:
    return L.parse_config({"shared_dirs": ["/srv/shared"], "local_temp_dirs": ["/srv/temp"], **fields})


def test_task_accounts_are_listed_users_or_members_of_listed_groups() -> None:
    cfg = allow(task_users=["alice"], task_groups=["lab"], runner_user="hkr", runner_group="hkr")
    for name in ("alice", "bob", "carol"):  # listed; lab supplementary; lab primary
        assert L.check_task_account(cfg, name, ACCOUNTS).pw_name == name
    with pytest.raises(L.Refused, match=r"'dave' is not allowed .*\(allowed: alice, members of lab\)"):
        L.check_task_account(cfg, "dave", ACCOUNTS)
    with pytest.raises(L.Refused, match="does not exist on this node"):
        L.check_task_account(cfg, "ghost", ACCOUNTS)  # not listed, but a group might have allowed it
    assert L.validate_request(request(user="bob"), cfg, accounts=ACCOUNTS).uid == 1002
    with pytest.raises(L.Refused, match="allows no task accounts yet"):
        L.check_task_account(allow(), "alice", ACCOUNTS)


@pytest.mark.parametrize(
    "user, match",
    [
        ("root", r"'root' is root \(uid 0\)"),
        ("toor", r"'toor' is root \(uid 0\)"),
        ("hkr", "'hkr' is the runner service's own account"),
        ("dave", "'dave' is a member of the group 'docker', which is root-equivalent"),
        ("dora", "'dora' is a member of the group 'docker', which is root-equivalent"),
        ("erin", "'erin' is a member of the group 'sudo', which is root-equivalent"),
        ("rita", "'rita' is a member of the group 'hkr', which is the runner service's own group"),
        ("gina", r"'gina' is a member of the group 'root' \(gid 0\)"),
    ],
)
def test_root_and_members_of_root_equivalent_groups_are_refused(user: str, match: str) -> None:
    everyone = ["root", "toor", "hkr", "dave", "dora", "erin", "rita", "gina"]
    cfg = allow(task_users=everyone, task_groups=["lab"], runner_user="hkr", runner_group="hkr")
    with pytest.raises(L.Refused, match=match) as info:
        L.check_task_account(cfg, user, ACCOUNTS)
    assert f"unless allow_privileged_users in its config names '{user}'" in str(info.value)
    with pytest.raises(L.Refused, match=match):
        L.validate_request(request(user=user), cfg, accounts=ACCOUNTS)
    # Named explicitly, it is allowed (and only if it is allowed at all).
    explicit = allow(
        task_users=everyone, task_groups=["lab"], runner_user="hkr", runner_group="hkr", allow_privileged_users=[user]
    )
    assert L.check_task_account(explicit, user, ACCOUNTS).pw_name == user
    with pytest.raises(L.Refused, match="not allowed"):
        L.check_task_account(allow(task_users=["alice"], allow_privileged_users=[user]), user, ACCOUNTS)


@pytest.mark.parametrize("group", L.ROOT_EQUIVALENT_GROUPS)
def test_every_root_equivalent_group_is_refused(group: str) -> None:
    accounts = FakeAccounts({"zed": (pw("zed", 1100, 1100), (group,))}, {group: FakeAccounts.GROUPS.get(group, 3000)})
    with pytest.raises(L.Refused, match=f"member of the group '{group}'"):
        L.check_task_account(allow(task_users=["zed"]), "zed", accounts)


def test_group_grants_do_not_lift_refusals_and_the_runner_group_counts_when_recorded() -> None:
    assert {"docker", "sudo", "wheel", "adm", "disk", "lxd", "libvirt"} <= set(L.ROOT_EQUIVALENT_GROUPS)
    with pytest.raises(L.Refused, match="'sudo'"):  # erin is in lab, and in sudo
        L.check_task_account(allow(task_groups=["lab"]), "erin", ACCOUNTS)
    assert L.check_task_account(allow(task_users=["rita"]), "rita", ACCOUNTS).pw_uid == 1006
    assert allow(runner_group="hkr").privileged_groups == (*L.ROOT_EQUIVALENT_GROUPS, "hkr")
    assert allow(runner_group="docker").privileged_groups == L.ROOT_EQUIVALENT_GROUPS


def test_an_old_allow_list_still_works() -> None:
    """A config from before task_groups (only task_users): same accounts, and the
    root-equivalent refusals apply to it too."""
    old = {
        "version": 1,
        "task_users": ["alice", "dave"],
        "shared_dirs": ["/srv/shared"],
        "local_temp_dirs": ["/srv/temp"],
        "numactl_paths": ["/usr/bin/numactl"],
        "state_dir": "/var/lib/hakuriver/task-status",
        "systemd_run": "/usr/bin/systemd-run",
        "systemctl": "/usr/bin/systemctl",
    }
    cfg = L.parse_config(old)
    assert (cfg.task_groups, cfg.allow_privileged_users, cfg.runner_user, cfg.runner_group) == ((), (), "", "")
    assert L.validate_request(request(), cfg, accounts=ACCOUNTS).user == "alice"
    with pytest.raises(L.Refused, match="'docker'"):
        L.validate_request(request(user="dave"), cfg, accounts=ACCOUNTS)
    assert L.parse_config(cfg.to_json()).to_json() == cfg.to_json()


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"task_groups": ["a b"]}, "task group 'a b' is not a plain group name"),
        ({"task_groups": "lab"}, "task_groups must be a list"),
        ({"allow_privileged_users": ["%sudo"]}, "not a plain user name"),
        ({"runner_user": ["hkr"]}, "runner_user must be a plain user name"),
        ({"runner_group": "a,b"}, "runner_group must be a plain group name"),
    ],
)
def test_parse_config_checks_the_account_keys(fields: dict, match: str) -> None:
    with pytest.raises(L.Refused, match=match):
        allow(task_users=["alice"], **fields)


def test_numa_wraps_the_command_in_numactl() -> None:
    p = plan(numa=0, numactl="/usr/bin/numactl", command=["python3", "-c", "pass"])
    assert p.argv == ["/usr/bin/numactl", "--cpunodebind=0", "--membind=0", "--", "python3", "-c", "pass"]


def test_systemd_run_argv_is_built_from_validated_values_only() -> None:
    evil = ["sh", "-c", "$(id); echo ${HOME} %n", "a;b && c", "q'\"", "new\nline", "--property=User=root"]
    p = plan(command=evil, cores=2, memory=64 << 20, runner="node-1")
    argv = L.systemd_run_argv(p, CFG, DEFAULT_LAUNCHER_PATH)
    dashdash = argv.index("--")
    options, tail = argv[:dashdash], argv[dashdash + 1 :]
    assert options == [
        "/usr/bin/systemd-run",
        "--no-ask-password",
        "--quiet",
        "--no-block",
        "--unit=hakuriver-task-123.service",
        "--description=HakuRiver task 123 (runner node-1)",
        "--property=Type=exec",
        "--property=KillMode=control-group",
        f"--property=TimeoutStopSec={L.TIMEOUT_STOP}",
        "--property=CPUQuota=200%",
        f"--property=MemoryMax={64 << 20}",
        "--property=ExecStopPost=" + L.poststop_command(123, CFG.state_dir),
    ]
    # No User=: setpriv makes the process alice's (so the hook needs no `+`).
    assert not [a for a in argv if "User=" in a]
    assert tail[:7] == [
        "/usr/bin/setpriv",
        "--reuid=1001",
        "--regid=1001",
        "--groups=1001",
        "--",
        DEFAULT_LAUNCHER_PATH,
        "exec",
    ]
    # systemd expands $VAR in ExecStart and %-specifiers in unit files: the spec holds neither.
    assert all(
        set(chunk) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.") for chunk in tail[7:]
    )
    spec = L.decode_spec(tail[7:])
    assert spec["argv"] == evil and spec["user"] == "alice" and spec["uid"] == 1001
    assert spec["env"]["HAKURIVER_TASK_ID"] == "123"


def test_limits_are_omitted_when_not_requested() -> None:
    argv = L.systemd_run_argv(plan(), CFG, DEFAULT_LAUNCHER_PATH)
    assert not [a for a in argv if "CPUQuota" in a or "MemoryMax" in a]


def test_the_in_unit_stages_run_the_code_cache_when_there_is_one() -> None:
    argv = L.systemd_run_argv(plan(), CFG, DEFAULT_LAUNCHER_PATH, ("/usr/bin/python3", "/var/lib/h/.c.pyc"))
    assert "--property=ExecStopPost=" + L.poststop_command(123, CFG.state_dir) in argv  # dash, not Python
    tail = argv[argv.index("--") + 1 :]
    assert tail[5:9] == ["/usr/bin/python3", "-IS", "/var/lib/h/.c.pyc", "exec"]
    with pytest.raises(L.Refused):
        L.systemd_run_argv(plan(), CFG, DEFAULT_LAUNCHER_PATH, ("/usr/bin/python3", "/tmp/a b.pyc"))


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every account can reach (pytest's tmp_path is under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="hkr-launcher-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_code_cache_is_the_launchers_own_code_and_is_remade_when_stale_or_not_roots(open_dir: Path) -> None:
    tmp_path = open_dir
    state = tmp_path / "state"
    state.mkdir()
    cfg = L.parse_config({**CFG.to_json(), "state_dir": str(state)})
    launcher = tmp_path / "launcher"
    launcher.write_text(launcher_source())
    python, cache = L.ensure_code_cache(cfg, str(launcher))
    assert cache == f"{state}/{L.CODE_CACHE_NAME}" and python == sys.executable
    # It is the launcher: run with no arguments, it says how it is used.
    proc = subprocess.run([python, "-IS", cache], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("hakuriver-task-launcher: usage:"), proc
    first = os.stat(cache)
    assert stat.S_IMODE(first.st_mode) == 0o644
    if os.geteuid() == 0:  # only a root-owned cache is ever reused
        L.ensure_code_cache(cfg, str(launcher))
        assert os.stat(cache).st_ino == first.st_ino, "a current cache was rewritten"
    # A changed launcher gets its own code, not the old.
    launcher.write_text(launcher_source().replace('PROG = "hakuriver-task-launcher"', 'PROG = "changed-launcher"'))
    L.ensure_code_cache(cfg, str(launcher))
    proc = subprocess.run([python, "-IS", cache], capture_output=True, text=True)
    assert proc.stderr.startswith("changed-launcher: usage:"), proc
    # A link planted in its place is replaced, never followed; a group-writable cache is replaced.
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    os.unlink(cache)
    os.symlink(target, cache)
    L.ensure_code_cache(cfg, str(launcher))
    assert not os.path.islink(cache) and target.read_text() == "keep"
    os.chmod(cache, 0o664)
    L.ensure_code_cache(cfg, str(launcher))
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o644
    # Where it cannot be made, or a task's account could not read it, the units run the
    # launcher itself.
    assert L.ensure_code_cache(cfg, str(tmp_path / "missing")) is None
    state.chmod(0o750)
    assert L.ensure_code_cache(cfg, str(launcher)) is None


def test_tools_run_as_argv_with_only_the_tool_environment_and_default_signals() -> None:
    script = (
        "import os, sys; print(sorted(os.environ)); print(repr(sys.stdin.read()));"
        "print('to stderr', file=sys.stderr); sys.exit(3)"
    )
    proc = L._run([sys.executable, "-IS", "-c", script, "$(touch /tmp/hkr-never)"])
    env_keys, stdin = proc.stdout.decode().splitlines()
    assert proc.returncode == 3 and proc.stderr == b"to stderr\n"
    assert env_keys == repr(sorted(L.TOOL_ENV)) and stdin == "''"
    # The tool starts with SIGPIPE (13) and SIGXFSZ (25) at their defaults, not ignored as in Python.
    grep = shutil.which("grep")
    assert grep
    ignored = L._run([grep, "SigIgn", "/proc/self/status"]).stdout.split()[1]
    assert not int(ignored, 16) & ((1 << 12) | (1 << 24)), ignored
    assert not os.path.exists("/tmp/hkr-never")
    assert L._run([sys.executable, "-IS", "-c", "import os; os.kill(os.getpid(), 9)"]).returncode == -9
    with pytest.raises(L.Failed, match="is missing"):
        L._run(["/nonexistent/systemctl", "show"])
    with pytest.raises(L.Failed, match="did not answer within"):
        L._run([sys.executable, "-IS", "-c", "import time; time.sleep(30)"], timeout=0.2)
    # Output closed but still running: the wait is bounded too.
    closer = "import os, time; os.close(1); os.close(2); time.sleep(30)"
    with pytest.raises(L.Failed, match="did not answer within"):
        L._run([sys.executable, "-IS", "-c", closer], timeout=0.2)


def test_big_specs_are_split_into_arguments_below_the_kernel_limit() -> None:
    p = plan(command=["echo"] + [f"{i:03}" + "x" * 1000 for i in range(200)])
    chunks = L.encode_spec(L.exec_spec(p))
    assert len(chunks) > 1 and all(len(c) <= L.SPEC_CHUNK for c in chunks)
    assert L.decode_spec(chunks)["argv"] == p.argv
    with pytest.raises(L.Refused):
        L.decode_spec([base64.urlsafe_b64encode(b"[1]").decode()])
    with pytest.raises(L.Refused, match="malformed"):
        L.decode_spec([L.SPEC_MARSHAL + "not*base64"])


def test_a_json_spec_from_an_older_launcher_still_decodes() -> None:
    """A unit queued by the previous launcher (JSON spec) may start after an upgrade."""
    spec = L.exec_spec(plan(command=["echo", "$HOME", "é"]))
    text = base64.urlsafe_b64encode(json.dumps(spec).encode()).decode()
    assert L.decode_spec([text[:10], text[10:]]) == spec


def test_names_with_a_trailing_newline_are_refused() -> None:
    """A `$`-anchored pattern let "alice\n" through; the checks now see every character."""
    with pytest.raises(L.Refused, match="not a plain user name"):
        L.check_task_account(CFG, "alice\n")
    with pytest.raises(L.Refused, match="task id"):
        L.parse_task_id("12\n")
    with pytest.raises(L.Refused, match="may only contain"):
        L.clean_path("/srv/shared\n", "shared dir")
    with pytest.raises(L.Refused, match="environment variable|env"):
        plan(env={"A\n": "x"})
    assert L.parse_task_id("9223372036854775807") == 2**63 - 1
    with pytest.raises(L.Refused):
        L.parse_task_id("9223372036854775808")


def test_status_records_are_json_whatever_systemd_put_in_them() -> None:
    plain = {
        "task_id": "7",
        "unit": "hakuriver-task-7.service",
        "result": "exit-code",
        "exit_code": "killed",
        "exit_status": "SEGV",
        "oom_kills": 0,
        "time": 1764629000.25,
    }
    assert json.loads(L.status_record_text(plain)) == plain
    odd = {**plain, "exit_status": 'a "quoted"\nword', "result": "é", "time": float("nan")}
    text = L.status_record_text(odd)
    assert json.loads(text)["exit_status"] == 'a "quoted"\nword' and json.loads(text)["result"] == "é"


def test_the_in_unit_stages_import_nothing_heavy(tmp_path: Path) -> None:
    """`exec` and `poststop` are a Python start each in every task: they must not pay for
    json, re, enum or signal (about 15 ms of a start on a slow node)."""
    probe = (
        "import sys\n"
        f"ns = {{'__name__': 'launcher', '__file__': {L.__file__!r}}}\n"
        f"exec(compile(open({L.__file__!r}, 'rb').read(), 'launcher', 'exec'), ns)\n"
        "codes = [ns['main']([*sys.argv[1:3]])]\n"
        # cmd_poststop itself: main() first checks that the launcher's directories are
        # root's, which a checkout in /tmp is not.
        "try:\n"
        "    ns['cmd_poststop'](ns['_StateDirOnly'](sys.argv[3]), 1)\n"
        "except ns['Refused'] as exc:\n"
        "    codes.append(exc.exit_code)\n"
        "    print('poststop:', exc, file=sys.stderr)\n"
        "print(codes, sorted(m for m in ('json', 're', 'enum', 'signal') if m in sys.modules))\n"
    )
    spec = L.encode_spec(L.exec_spec(plan()))
    assert len(spec) == 1
    r = subprocess.run(
        [sys.executable, "-IS", "-c", probe, "exec", spec[0], str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin")},
    )
    # Both are refused here (wrong uid; not inside a unit), after doing their imports.
    assert r.stdout.strip() == "[2, 2] []", (r.stdout, r.stderr)
    assert "exec must run as the task's user" in r.stderr, r.stderr
    # As root: not inside a unit; as anyone else: not root.
    assert "poststop: poststop runs only" in r.stderr or "poststop: this subcommand must run as root" in r.stderr


def test_kill_takes_known_signals_only() -> None:
    assert L.kill_argv(CFG, "hakuriver-task-1.service", "SIGTERM") == [
        "/usr/bin/systemctl",
        "--no-ask-password",
        "--no-pager",
        "kill",
        "--kill-who=all",
        "--signal=SIGTERM",
        "hakuriver-task-1.service",
    ]
    with pytest.raises(L.Refused):
        L.kill_argv(CFG, "hakuriver-task-1.service", "SIGKILL --kill-who=main")


def test_parse_config_rejects_what_it_does_not_know() -> None:
    with pytest.raises(L.Refused, match="unknown launcher config"):
        L.parse_config({"task_users": ["a"], "shared_dirs": ["/s"], "local_temp_dirs": ["/t"], "extra": 1})
    with pytest.raises(L.Refused, match="shared_dirs must not be empty"):
        L.parse_config({"task_users": ["a"], "shared_dirs": [], "local_temp_dirs": ["/t"]})
    assert L.parse_config({"task_users": [], "shared_dirs": ["/s"], "local_temp_dirs": ["/t"]}).task_users == ()
    with pytest.raises(L.Refused, match="cannot be a task directory"):
        L.parse_config({"task_users": ["a"], "shared_dirs": ["/"], "local_temp_dirs": ["/t"]})


def test_parse_show_and_oom_counters() -> None:
    blocks = L.parse_show("Id=a.service\nActiveState=active\n\nId=b.service\nLoadState=not-found\n")
    assert blocks == [{"Id": "a.service", "ActiveState": "active"}, {"Id": "b.service", "LoadState": "not-found"}]
    files = {
        "/sys/fs/cgroup/memory/docker/x/system.slice/t.service/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        "/sys/fs/cgroup/system.slice/u.service/memory.events": "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n",
    }
    v1 = ["9:name=systemd:/docker/x/system.slice/t.service", "4:memory:/docker/x/system.slice/t.service"]
    assert L.oom_kills_from(v1, read=files.get) == 2
    assert L.oom_kills_from(["0::/system.slice/u.service"], read=files.get) == 1
    assert L.oom_kills_from(["0::/system.slice/none.service"], read=files.get) == 0


def test_in_unit_subcommands_refuse_to_run_under_sudo(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("SUDO_UID", "1000")
    with pytest.raises(L.Refused, match="never through sudo"):
        L.cmd_exec(L.encode_spec({"v": 1}))
    with pytest.raises(L.Refused, match="never through sudo"):
        L.cmd_poststop(CFG, 1)


def test_main_refuses_bad_arity_and_unknown_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["kill", "1", "SIGKILL", "extra"],
        ["start", "--property=User=root"],
        ["shell"],
        [],
        ["pause"],
        ["kill", "1", "SIGSTOP"],
    ):
        assert L.main(argv, config_path="/nonexistent/launcher.json") == 2, argv
    assert "hakuriver-task-launcher:" in capsys.readouterr().err


# ------------------------------------------------------------ install texts


def test_sudoers_text_grants_the_launcher_only_and_passes_visudo(tmp_path: object) -> None:
    text = render_sudoers("hakuriver")
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rules == [
        f"Cmnd_Alias HAKURIVER_LAUNCHER = {DEFAULT_LAUNCHER_PATH}",
        "Defaults!HAKURIVER_LAUNCHER env_reset, !requiretty",
        "hakuriver ALL=(root) NOPASSWD: HAKURIVER_LAUNCHER",
    ]
    pinned = render_sudoers("hakuriver", launcher_sha256="ab" * 32)
    assert f"sha256:{'ab' * 32} {DEFAULT_LAUNCHER_PATH}" in pinned
    visudo = shutil.which("visudo")
    if visudo is None:
        pytest.skip("visudo is not installed here (the node tests check it)")
    for t in (text, pinned):
        path = tmp_path / "hakuriver"  # type: ignore[operator]
        path.write_text(t)
        proc = subprocess.run([visudo, "-cf", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr + proc.stdout


@pytest.mark.parametrize("user", ["root", "", "Bob", "a b", "a,b", "ALL", "x" * 40, "%wheel"])
def test_sudoers_refuses_odd_user_names(user: str) -> None:
    with pytest.raises(ValueError):
        render_sudoers(user)


def test_install_texts_come_from_the_package() -> None:
    source = launcher_source()
    assert source.startswith("#!/usr/bin/python3 -IS\n")
    assert "import hakuriver" not in source and "from hakuriver" not in source
    compile(source, "launcher", "exec")
    cfg_text = render_launcher_config(task_users=["alice"], shared_dirs=["/srv/shared/"], local_temp_dirs=["/srv/temp"])
    assert json.loads(cfg_text)["shared_dirs"] == ["/srv/shared"]
    with pytest.raises(ValueError):
        render_launcher_config(task_users=["alice"], shared_dirs=["/srv/a b"], local_temp_dirs=["/srv/temp"])
    files = install_plan("alice", cfg_text)
    assert [(f.path, f.mode) for f in files] == [
        (DEFAULT_LAUNCHER_PATH, 0o755),
        ("/etc/hakuriver/launcher.json", 0o644),
        ("/etc/sudoers.d/hakuriver", 0o440),
    ]
    assert [f.path for f in install_plan("root", cfg_text)] == [DEFAULT_LAUNCHER_PATH, "/etc/hakuriver/launcher.json"]
    config = SimpleNamespace(
        paths=SimpleNamespace(
            shared_dir="/srv/shared", local_temp_dir="/srv/temp", numactl_path="/opt/numactl/bin/numactl"
        ),
        environment=SimpleNamespace(runner_user=""),
    )
    allow_list = json.loads(launcher_config_for(config, runner_user="hkr", runner_group="hkr"))
    assert allow_list["numactl_paths"] == ["/opt/numactl/bin/numactl"]
    # Nobody by default: not the runner's own user, which is recorded to be refused.
    assert (allow_list["task_users"], allow_list["task_groups"]) == ([], [])
    assert (allow_list["runner_user"], allow_list["runner_group"]) == ("hkr", "hkr")
    config.environment.runner_user = "labuser"
    allow_list = json.loads(
        launcher_config_for(
            config,
            runner_user="hkr",
            runner_group="hkr",
            task_users=["alice", "labuser"],
            task_groups=["lab"],
            allow_privileged_users=["ops"],
        )
    )
    assert allow_list["task_users"] == ["alice", "labuser"]  # environment.runner_user once
    assert (allow_list["task_groups"], allow_list["allow_privileged_users"]) == (["lab"], ["ops"])
    with pytest.raises(ValueError, match="not a plain group name"):
        launcher_config_for(config, runner_user="hkr", runner_group="hkr", task_groups=["a b"])


# ------------------------------------------------------------------ executor


def spec(**overrides: object) -> LaunchSpec:
    fields = dict(
        task_id=7,
        command=("python3", "-c", "print(1)"),
        env={"A": "1"},
        stdout_path="/srv/shared/task_outputs/7.out",
        stderr_path="/srv/shared/task_errors/7.err",
        shared_dir="/srv/shared",
        local_temp_dir="/srv/temp",
    )
    fields.update(overrides)
    return LaunchSpec(**fields)  # type: ignore[arg-type]


def test_the_executor_is_registered() -> None:
    assert executor_class("systemd") is SystemdExecutor and EXECUTORS["systemd"].name == "systemd"
    assert service_name(42) == "hakuriver-task-42.service"


def test_launch_request_is_argv_and_validates_with_the_launcher() -> None:
    req = launch_request(
        spec(cores=2, memory=1 << 26, numa=NumaNode(0, (0, 1), 0)),
        user="alice",
        runner_name="n1",
        numactl="/usr/bin/numactl",
    )
    assert req == {
        "task_id": "7",
        "user": "alice",
        "command": ["python3", "-c", "print(1)"],
        "env": {"A": "1"},
        "shared_dir": "/srv/shared",
        "local_temp_dir": "/srv/temp",
        "stdout": "/srv/shared/task_outputs/7.out",
        "stderr": "/srv/shared/task_errors/7.err",
        "runner": "n1",
        "cores": 2,
        "memory": 1 << 26,
        "numa": 0,
        "numactl": "/usr/bin/numactl",
    }
    p = L.validate_request(json.loads(json.dumps(req)), CFG, accounts=ACCOUNTS, node_exists=lambda n: True)
    assert p.argv[:4] == ["/usr/bin/numactl", "--cpunodebind=0", "--membind=0", "--"]
    with pytest.raises(ExecutorError, match="numactl is not installed"):
        launch_request(spec(numa=NumaNode(0, (0,), 0)), user="alice", runner_name="n1", numactl=None)
    with pytest.raises(ExecutorError, match="Docker"):
        launch_request(spec(gpus=(0,)), user="alice", runner_name="n1", numactl=None)


def test_launcher_argv_uses_sudo_non_interactively() -> None:
    assert launcher_argv("/l", "kill", "7", "SIGTERM", sudo="/usr/bin/sudo") == [
        "/usr/bin/sudo",
        "-n",
        "--",
        "/l",
        "kill",
        "7",
        "SIGTERM",
    ]
    assert launcher_argv("/l", "info", sudo=None) == ["/l", "info"]


def test_tasks_run_as_the_submitters_account_else_the_admins_fallback_else_not_at_all() -> None:
    assert resolve_task_user(spec(user="alice", unix_user="alice"), "") == "alice"
    assert resolve_task_user(spec(user="alice", unix_user="al"), "labuser") == "al"
    assert resolve_task_user(spec(user="bob"), "labuser") == "labuser"
    with pytest.raises(ExecutorError, match=r"user 'bob' has no Unix account.*--unix-user.*environment\.runner_user"):
        resolve_task_user(spec(user="bob"), "")
    with pytest.raises(ExecutorError, match="no Unix account"):
        resolve_task_user(spec(user="bob"), "  ")


def test_the_executor_never_defaults_to_its_own_user() -> None:
    import asyncio

    ex = SystemdExecutor("n1", service_user="hkr", launcher_path="/nonexistent/launcher")
    with pytest.raises(ExecutorError, match="no Unix account"):
        asyncio.run(ex.start(spec(user="bob")))
    # With an account, it gets as far as the launcher (absent here).
    with pytest.raises(ExecutorError, match="not installed"):
        asyncio.run(ex.start(spec(user="alice", unix_user="alice")))
    asyncio.run(ex.close())


def test_the_fingerprint_check_of_the_fallback_user_is_the_launchers() -> None:
    info = {
        "version": 1,
        "launcher": DEFAULT_LAUNCHER_PATH,
        "config": "/etc/hakuriver/launcher.json",
        "privileged_groups": list(L.ROOT_EQUIVALENT_GROUPS) + ["hkr"],
        **allow(task_users=["alice", "dave"], task_groups=["lab"], runner_user="hkr", runner_group="hkr").to_json(),
    }
    assert allow_list_summary(info) == "alice, dave, members of lab"
    assert allow_list_summary({"task_users": [], "task_groups": []}) == "nobody yet"
    assert fallback_problem(info, "alice", ACCOUNTS) is None
    assert fallback_problem(info, "bob", ACCOUNTS) is None
    assert "'docker'" in (fallback_problem(info, "dave", ACCOUNTS) or "")
    assert "not allowed" in (fallback_problem(info, "hkr", ACCOUNTS) or "")


@pytest.mark.parametrize(
    "record, state, code",
    [
        ({"result": "success", "exit_code": "exited", "exit_status": "0", "oom_kills": 0}, TaskState.COMPLETED, 0),
        ({"result": "exit-code", "exit_code": "exited", "exit_status": "3", "oom_kills": 0}, TaskState.FAILED, 3),
        ({"result": "signal", "exit_code": "killed", "exit_status": "KILL", "oom_kills": 1}, TaskState.KILLED_OOM, 137),
        (
            {"result": "oom-kill", "exit_code": "killed", "exit_status": "KILL", "oom_kills": 0},
            TaskState.KILLED_OOM,
            137,
        ),
        ({"result": "signal", "exit_code": "killed", "exit_status": "TERM", "oom_kills": 0}, TaskState.FAILED, 143),
        ({"result": "core-dump", "exit_code": "dumped", "exit_status": "SEGV", "oom_kills": 0}, TaskState.FAILED, 139),
        ({"result": "success", "exit_code": "exited", "exit_status": "0", "oom_kills": 2}, TaskState.COMPLETED, 0),
        ({"result": "resources", "exit_code": "exited", "exit_status": "217", "oom_kills": 0}, TaskState.FAILED, 217),
    ],
)
def test_exit_records_map_to_results(record: dict, state: TaskState, code: int) -> None:
    result = exit_result_from_record(record)
    assert (result.state, result.exit_code) == (state, code)
    if state is TaskState.FAILED:
        assert result.error


def test_failed_units_without_a_record_fall_back_to_systemd() -> None:
    r = exit_result_from_unit({"ExecMainCode": "2", "ExecMainStatus": "9", "Result": "signal"})
    assert (r.state, r.exit_code, r.error) == (TaskState.FAILED, 137, "killed by signal SIGKILL")
    r = exit_result_from_unit({"ExecMainCode": "1", "ExecMainStatus": "4", "Result": "exit-code"})
    assert (r.state, r.exit_code) == (TaskState.FAILED, 4)


def test_default_executors_offer_systemd_only_where_it_can_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    import asyncio

    from hakuriver.config import config_from_dict
    from hakuriver.runner import app
    from hakuriver.runner.executors import docker as docker_mod
    from hakuriver.runner.executors import systemd as systemd_mod

    async def fake_docker_check(self: object) -> Fingerprint:
        return Fingerprint("test", "Docker engine test")

    async def fake_check(self: SystemdExecutor) -> Fingerprint:
        return Fingerprint("1", "systemd", {"launcher": self.launcher_path})

    monkeypatch.setattr(docker_mod.DockerExecutor, "fingerprint", fake_docker_check)
    monkeypatch.setattr(systemd_mod.SystemdExecutor, "fingerprint", fake_check)
    config = config_from_dict(
        {
            "paths": {"shared_dir": str(tmp_path), "local_temp_dir": str(tmp_path)},
            "environment": {"runner_user": "alice"},
            "runner": {"name": "n1"},
        }
    )

    async def names() -> list[str]:
        executors = await app.default_executors(config)
        for ex in executors.values():
            await ex.close()
        return sorted(executors)

    monkeypatch.setattr(systemd_mod, "systemd_booted", lambda *_: False)
    assert asyncio.run(names()) == ["docker"]
    monkeypatch.setattr(systemd_mod, "systemd_booted", lambda *_: True)
    monkeypatch.setattr(systemd_mod, "launcher_problem", lambda path: f"not installed at {path}")
    assert asyncio.run(names()) == ["docker"]
    monkeypatch.setattr(systemd_mod, "launcher_problem", lambda path: None)
    assert asyncio.run(names()) == ["docker", "systemd"]


def test_a_log_file_must_be_the_task_users_own_with_one_link() -> None:
    import os
    import stat as st

    me = os.geteuid()

    def fake(mode: int = st.S_IFREG | 0o644, uid: int = me, nlink: int = 1) -> SimpleNamespace:
        return SimpleNamespace(st_mode=mode, st_uid=uid, st_nlink=nlink)

    assert L.log_file_problem(fake(), "/s/task_outputs/1.out", "alice") == ""
    assert "not a regular file" in L.log_file_problem(fake(mode=st.S_IFIFO | 0o666), "/s/x", "alice")
    assert f"belongs to uid {me + 1}, not to user alice" in L.log_file_problem(fake(uid=me + 1), "/s/x", "alice")
    assert "has 2 links" in L.log_file_problem(fake(nlink=2), "/s/x", "alice")


def test_an_array_task_carries_its_index_to_the_launcher_and_its_environment() -> None:
    req = launch_request(spec(array_index=4, batch_id=99), user="alice", runner_name="n1", numactl=None)
    assert (req["array_index"], req["batch_id"]) == (4, "99")
    p = plan(array_index=4, batch_id="99", env={"HAKURIVER_ARRAY_INDEX": "spoof"})
    assert (p.env["HAKURIVER_ARRAY_INDEX"], p.env["HAKURIVER_BATCH_ID"]) == ("4", "99")
    assert "array_index" not in launch_request(spec(), user="alice", runner_name="n1", numactl=None)
    assert "HAKURIVER_ARRAY_INDEX" not in plan().env
    for bad in ({"array_index": -1, "batch_id": "9"}, {"array_index": True, "batch_id": "9"}, {"batch_id": "9"}):
        with pytest.raises(L.Refused):
            plan(**bad)
