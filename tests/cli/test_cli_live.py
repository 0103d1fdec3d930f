"""The CLIs end to end against a live (fake) Host on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hakuriver.cli import client as client_cli
from hakuriver.cli import task as task_cli

from .fakehost import (  # noqa: F401 - fixtures
    FakeHost,
    _isolated_env,
    fake_host,
    host_config,
    sample_node,
    write_config,
)


def task(config: Path, *argv: str) -> int:
    return task_cli.main(["--config", str(config), *argv])


def client(config: Path, *argv: str) -> int:
    return client_cli.main(["--config", str(config), *argv])


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------ submit
def test_submit_sends_argv_as_a_list_and_prints_the_id(fake_host: FakeHost, host_config: Path, capsys):
    assert task(host_config, "submit", "--", "echo", "$(id)", "a;b", "it's") == 0
    out, err = capsys.readouterr()
    (body,) = fake_host.submitted_bodies()
    assert body == {"command": ["echo", "$(id)", "a;b", "it's"]}
    assert out.splitlines() == list(fake_host.tasks)
    assert err == ""


def test_submit_flags_reach_the_host(fake_host: FakeHost, host_config: Path, capsys):
    code = task(
        host_config,
        "submit",
        "--target",
        "node1:0::1",
        "--target",
        "node2",
        "--cores",
        "2",
        "--memory",
        "512M",
        "--env",
        "A=x=y",
        "--mount",
        "/data:/data:ro",
        "--container",
        "my-env",
        "--privileged",
        "--",
        "python",
        "-c",
        "print(1)",
    )
    assert code == 0
    (body,) = fake_host.submitted_bodies()
    assert body == {
        "command": ["python", "-c", "print(1)"],
        "cores": 2,
        "memory": 512 << 20,
        "container": "my-env",
        "env": {"A": "x=y"},
        "mounts": ["/data:/data:ro"],
        "privileged": True,
        "targets": ["node1:0::1", "node2"],
    }
    ids = capsys.readouterr().out.splitlines()
    assert len(ids) == 2 and all(i.isdigit() for i in ids)


def test_submit_json(fake_host: FakeHost, host_config: Path, capsys):
    assert task(host_config, "submit", "--json", "--", "true") == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"batch_id", "task_ids", "tasks"}
    assert data["tasks"][0]["command"] == ["true"]


@pytest.mark.parametrize(
    "program, code, state", [("true", 0, "completed"), ("false", 1, "failed"), ("oom", 1, "killed_oom")]
)
def test_submit_wait_exit_codes(fake_host: FakeHost, host_config: Path, capsys, program, code, state):
    assert task(host_config, "submit", "--wait", "--", program) == code
    out = capsys.readouterr().out.splitlines()
    task_id = out[0]
    assert out[1].split() == ["ID", "STATE", "EXIT", "NODE", "ERROR"]
    assert out[2].split()[:2] == [task_id, state]


def test_submit_wait_timeout_is_124(fake_host: FakeHost, host_config: Path, capsys):
    assert task(host_config, "submit", "--wait-timeout", "0.3", "--", "sleep", "100") == 124
    out = capsys.readouterr().out
    assert "running" in out


def test_submit_wait_json(fake_host: FakeHost, host_config: Path, capsys):
    assert task(host_config, "submit", "--wait", "--json", "--target", "n1", "--target", "n2", "--", "false") == 1
    data = json.loads(capsys.readouterr().out)
    assert data["done"] is True and [t["state"] for t in data["tasks"]] == ["failed", "failed"]


def test_host_validation_error_is_one_line(fake_host: FakeHost, host_config: Path, capsys):
    fake_host.token = "rotated"
    assert task(host_config, "submit", "--", "true") == 1
    line = one_error_line(capsys.readouterr().err)
    assert (
        line == f"hakuriver.task: error: invalid bearer token (check $HAKURIVER_TOKEN or auth.token in {host_config})"
    )


# -------------------------------------------------------------------- wait
def test_wait_exit_codes(fake_host: FakeHost, host_config: Path, capsys):
    ok, ok2, bad = fake_host.add_task(["true"]), fake_host.add_task(["echo"]), fake_host.add_task(["false"])
    assert task(host_config, "wait", ok["task_id"], ok2["task_id"]) == 0
    assert task(host_config, "wait", ok["task_id"], bad["task_id"]) == 1
    out = capsys.readouterr().out
    assert "completed" in out and "failed" in out


def test_wait_timeout_and_json(fake_host: FakeHost, host_config: Path, capsys):
    slow, bad = fake_host.add_task(["sleep", "1000"]), fake_host.add_task(["false"])
    assert task(host_config, "wait", "--json", "--timeout", "0.3", slow["task_id"]) == 124
    data = json.loads(capsys.readouterr().out)
    assert data["done"] is False and data["tasks"][0]["state"] == "running"
    # A known failure wins over "some are still running".
    assert task(host_config, "wait", "--timeout", "0.3", slow["task_id"], bad["task_id"]) == 1


def test_wait_unknown_task_is_one_line(fake_host: FakeHost, host_config: Path, capsys):
    assert task(host_config, "wait", "99") == 1
    assert one_error_line(capsys.readouterr().err) == "hakuriver.task: error: no task 99"


# -------------------------------------------------------------------- logs
def test_logs_follow_reads_until_final(fake_host: FakeHost, host_config: Path, capsysbinary):
    t = fake_host.add_task(["python", "job.py"], state="running")
    chunks = [b"", b"line 1\n", b"", b"line 2\n\xff\xfe raw bytes\n", b"last line, no newline"]
    fake_host.log_script[t["task_id"]] = list(chunks)
    assert task(host_config, "logs", t["task_id"], "--follow", "--interval", "0.01") == 0
    assert capsysbinary.readouterr().out == b"".join(chunks)
    assert fake_host.tasks[t["task_id"]]["state"] == "completed"
    log_reads = [r for r in fake_host.requests if r.path.endswith("/logs")]
    # After the read that revealed the last chunk (state still "running"),
    # one more read saw "completed" with nothing new.
    assert len(log_reads) == len(chunks) + 1
    offsets = [int(r.query["offset"]) for r in log_reads]
    assert offsets == sorted(offsets)


def test_logs_reads_every_chunk_without_follow(fake_host: FakeHost, host_config: Path, capsysbinary):
    t = fake_host.add_task(["true"], state="completed")
    fake_host.logs[(t["task_id"], "stdout")] = b"0123456789abcdef\n"
    fake_host.log_chunk = 5
    assert task(host_config, "logs", t["task_id"]) == 0
    assert capsysbinary.readouterr().out == b"0123456789abcdef\n"


def test_logs_tail_and_stderr(fake_host: FakeHost, host_config: Path, capsysbinary):
    t = fake_host.add_task(["true"], state="failed")
    fake_host.logs[(t["task_id"], "stdout")] = b"a\nb\nc\n"
    fake_host.logs[(t["task_id"], "stderr")] = b"boom\n"
    assert task(host_config, "logs", t["task_id"], "--tail", "2") == 0
    assert capsysbinary.readouterr().out == b"b\nc\n"
    assert task(host_config, "logs", t["task_id"], "--stderr") == 0
    assert capsysbinary.readouterr().out == b"boom\n"
    assert fake_host.requests[-1].query["stream"] == "stderr"


def test_logs_unknown_task(fake_host: FakeHost, host_config: Path, capsys):
    assert task(host_config, "logs", "42", "--follow") == 1
    assert one_error_line(capsys.readouterr().err) == "hakuriver.task: error: no task 42"


# ------------------------------------------------------- list/status/kill
def test_list_table(fake_host: FakeHost, host_config: Path, capsys):
    fake_host.add_task(
        ["python", "train.py", "--epochs", "100", "--learning-rate", "0.001", "--name", "x" * 30],
        state="running",
        cores=4,
        memory=8 << 30,
    )
    fake_host.add_task(["true"], state="completed", node="node2")
    assert task(host_config, "list") == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "NODE", "CORES", "MEM", "COMMAND", "SUBMITTED"]
    assert lines[1].split()[1:3] == ["completed", "node2"]
    assert lines[2].split()[1:5] == ["running", "node1", "4", "8G"]
    assert "python train.py --epochs" in lines[2] and "..." in lines[2] and "x" * 30 not in lines[2]
    assert err == ""


def test_list_filters_paging_and_json(fake_host: FakeHost, host_config: Path, capsys):
    for _ in range(3):
        fake_host.add_task(["true"], state="running")
    assert task(host_config, "list", "--state", "running,paused", "--node", "node1", "--limit", "2") == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3
    assert "--before" in err
    assert fake_host.requests[-1].query == {"state": "running,paused", "node": "node1", "limit": "2"}
    assert task(host_config, "list", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["tasks"]) == 3 and data["next_before"] is None


def test_status_kill_pause_resume(fake_host: FakeHost, host_config: Path, capsys):
    t = fake_host.add_task(["sleep", "9"], state="running", env={"K": "V"})
    tid = t["task_id"]
    assert task(host_config, "status", tid) == 0
    out = capsys.readouterr().out
    assert "state       running" in out and "command     sleep 9" in out and "K=V" in out
    assert task(host_config, "pause", tid) == 0
    assert capsys.readouterr().out.split() == [tid, "paused"]
    assert task(host_config, "resume", tid) == 0
    assert task(host_config, "kill", tid, "--json") == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["state"] == "killed"
    assert task(host_config, "kill", tid) == 1
    assert one_error_line(capsys.readouterr().err) == f"hakuriver.task: error: task {tid} is already killed"


# ------------------------------------------------------- hakuriver.client
def test_client_nodes_table(fake_host: FakeHost, host_config: Path, capsys):
    fake_host.nodes = [sample_node("node1"), sample_node("node2", online=False)]
    assert client(host_config, "nodes") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NODE", "STATE", "CORES", "MEMORY", "GPUS", "NUMA", "LAST", "SEEN", "RUNS"]
    assert lines[1].split()[:6] == ["node1", "online", "4/16", "8G/64G", "1/2", "2"]
    assert lines[2].split()[:2] == ["node2", "offline"]
    assert "ago" in lines[1]
    assert lines[1].endswith("  unknown")  # a runner that did not say what it runs


def test_client_nodes_shows_what_each_node_runs(fake_host: FakeHost, host_config: Path, capsys):
    no_systemd = {"docker": {"available": True}, "null": {"available": False, "reason": "systemd is not PID 1"}}
    fake_host.nodes = [
        sample_node("both", capabilities={"docker": {"available": True}, "null": {"available": True}}),
        sample_node("vm", capabilities=no_systemd),
        sample_node(
            "none",
            capabilities={
                "docker": {"available": False, "reason": "cannot reach the Docker engine"},
                "null": {"available": False, "reason": "systemd is not PID 1"},
            },
        ),
    ]
    assert client(host_config, "nodes") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "RUNS"
    runs = {line.split()[0]: line[lines[0].index("RUNS") :] for line in lines[1:]}
    assert runs == {
        "both": "docker,null",
        "vm": "docker (null: systemd is not PID 1)",
        "none": "none (docker: cannot reach the Docker engine; null: systemd is not PID 1)",
    }
    assert client(host_config, "--json", "nodes") == 0
    assert json.loads(capsys.readouterr().out)["nodes"][1]["capabilities"] == no_systemd
    assert client(host_config, "health", "vm") == 0
    assert "runs        docker (null: systemd is not PID 1)" in capsys.readouterr().out


@pytest.mark.parametrize("spelling", ["null", "Null", "NUll"])
def test_submit_container_null_spelled_otherwise_gets_the_hint(
    fake_host: FakeHost, host_config: Path, capsys, spelling: str
):
    assert task(host_config, "submit", "--container", spelling, "--", "true") != 0
    assert one_error_line(capsys.readouterr().err) == (
        f"hakuriver.task: error: unknown environment {spelling!r}: did you mean NULL (run without a container)?"
    )
    assert fake_host.tasks == {}  # refused before anything was sent


def test_client_nodes_json(fake_host: FakeHost, host_config: Path, capsys):
    fake_host.nodes = [sample_node("node1")]
    assert client(host_config, "--json", "nodes") == 0
    assert json.loads(capsys.readouterr().out)["nodes"][0]["hostname"] == "node1"


def test_client_health_summary(fake_host: FakeHost, host_config: Path, capsys):
    fake_host.nodes = [sample_node("node1"), sample_node("node2", online=False)]
    fake_host.add_task(["true"], state="running")
    assert client(host_config, "health") == 0
    out = capsys.readouterr().out
    assert "1 online, 1 offline" in out and "running 1" in out and "pending 0" not in out
    assert "node1" in out and "42%" in out and "55C" in out and "87%" in out
    assert client(host_config, "health", "--json") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"


def test_client_health_one_node(fake_host: FakeHost, host_config: Path, capsys):
    fake_host.nodes = [sample_node("node1")]
    assert client(host_config, "health", "node1") == 0
    out = capsys.readouterr().out
    for expected in (
        "node1",
        "online",
        "4/16 allocated",
        "NUMA",
        "0-7",
        "8-15",
        "TEMPERATURES",
        "coretemp/Package id 0",
        "55.0",
        "GPUS (1 allocated)",
        "Fake GPU",
        "87%",
        "71C",
        "210.5W",
        "4G/16G",
        "1.50 1.20 1.00",
    ):
        assert expected in out, expected
    assert client(host_config, "health", "nodeX") == 1
    assert one_error_line(capsys.readouterr().err) == "hakuriver.client: error: no node nodeX"


def test_client_status_and_kill(fake_host: FakeHost, host_config: Path, capsys):
    t = fake_host.add_task(["sleep", "9"], state="running")
    assert client(host_config, "status", t["task_id"]) == 0
    assert "running" in capsys.readouterr().out
    assert client(host_config, "kill", t["task_id"]) == 0
    assert capsys.readouterr().out.split() == [t["task_id"], "killed"]


def test_client_wrong_token(fake_host: FakeHost, tmp_path: Path, capsys):
    config = write_config(tmp_path / "other.toml", fake_host.port, token="wrong")
    assert client(config, "nodes") == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("hakuriver.client: error: invalid bearer token (check $HAKURIVER_TOKEN or auth.token in ")


def test_malformed_answer_is_one_line_unless_verbose(fake_host: FakeHost, host_config: Path, capsys):
    fake_host.nodes = [{"online": True}]  # no hostname: not what the API documents
    assert client(host_config, "nodes") == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("hakuriver.client: error: unexpected KeyError") and "-v" in line
    with pytest.raises(KeyError):
        client(host_config, "nodes", "-v")
