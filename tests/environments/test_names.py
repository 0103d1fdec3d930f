"""Environment names: one rule (parsing.validate_env_name) at the CLI, the API and the runner,
and no name ever reaches a path outside the tarball directory. Plus the shell's pure framing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
from pathlib import Path

import pytest

from hakuriver import tarballs
from hakuriver.cli import docker as docker_cli
from hakuriver.config import config_from_dict
from hakuriver.errors import ExecutorError, ValidationError
from hakuriver.host.environments import restore_changes
from hakuriver.host.shell import parse_client_message
from hakuriver.parsing import validate_env_name
from hakuriver.runner.environments import EnvironmentSync, LocalImage, needs_load
from hakuriver.runner.supervisor import Supervisor
from hakuriver.runrequest import RunRequest

TRICKS = [
    "../x",
    "a/b",
    ".",
    "..",
    "x\x00y",
    "/etc/passwd",
    "a" * 129,
    "",
    "-a",
    "a-",
    "a..b",
    "~root",
    "a b",
    "a\nb",
    "%2e%2e",
    "..\\x",
]


@pytest.mark.parametrize("name", TRICKS)
def test_path_tricks_are_refused_and_never_become_paths(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        validate_env_name(name)
    with pytest.raises(ValidationError):
        tarballs.tarball_path(tmp_path, name, 1)
    with pytest.raises(ValidationError):
        tarballs.list_tarballs(tmp_path, name)


def test_upper_case_is_refused_with_the_lower_case_suggestion_everywhere(tmp_path: Path, capsys) -> None:
    expected = "Docker image names must be lower-case; use 'myenv'"
    with pytest.raises(ValidationError, match=expected):
        validate_env_name("MyEnv")
    # CLI: a usage error, one line, nothing sent (no config needed).
    assert docker_cli.main(["create-tar", "MyEnv"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    # Runner: the sync and the supervisor refuse it with the same words.
    config = config_from_dict({"paths": {"shared_dir": str(tmp_path), "local_temp_dir": str(tmp_path)}})
    sync = EnvironmentSync(config, client=object())  # never reaches Docker
    with pytest.raises(ExecutorError, match=expected):
        asyncio.run(sync.ensure("MyEnv"))
    sup = Supervisor(config, None, {}, None, (), frozenset())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=expected):
        sup.build_spec(RunRequest.from_json({"task_id": "1", "command": ["true"], "container": "MyEnv"}))


def test_tarball_names_round_trip_and_junk_is_ignored(tmp_path: Path) -> None:
    assert tarballs.parse_tarball_name("my-env-2-1700000000.tar") == ("my-env-2", 1700000000)
    for junk in (".my-env-1.tar", "my-env-1.tar.part-abcd", "My-1.tar", "x.tar", "-1.tar", "a-1.tar.gz", "a-b.tar"):
        assert tarballs.parse_tarball_name(junk) is None, junk
    for name in ("a", "a-b", "a.b_c"):
        path = tarballs.tarball_path(tmp_path, name, 5)
        assert path.parent == tmp_path and tarballs.parse_tarball_name(path.name) == (name, 5)
    (tmp_path / "env-3.tar").write_bytes(b"3")
    (tmp_path / "env-10.tar").write_bytes(b"10")
    (tmp_path / "env-x-11.tar").write_bytes(b"other env")
    (tmp_path / ".env-12.tar.part-0000").write_bytes(b"half")
    (tmp_path / "env-13.tar").mkdir()
    os.symlink("/etc/hostname", tmp_path / "env-14.tar")
    assert [(t.name, t.version) for t in tarballs.list_tarballs(tmp_path, "env")] == [("env", 10), ("env", 3)]
    assert tarballs.newest_tarball(tmp_path, "nothing") is None
    assert tarballs.next_version([10, 3], now=5) == 11 and tarballs.next_version([10], now=50) == 50


def test_load_decision() -> None:
    newest = tarballs.Tarball("e", 10, "/x/e-10.tar", 1, 0.0)
    assert needs_load(None, newest)
    assert needs_load(LocalImage("sha256:a", None), newest)  # hand-tagged, but a tarball exists
    assert needs_load(LocalImage("sha256:a", 9), newest)
    assert not needs_load(LocalImage("sha256:a", 10), newest)
    assert not needs_load(LocalImage("sha256:a", 11), newest)  # the Host's own fresh commit
    assert not needs_load(LocalImage("sha256:a", None), None)


def test_commit_restores_the_image_entrypoint_and_command() -> None:
    assert restore_changes({"Entrypoint": None, "Cmd": ["/bin/sh"]}) == ['ENTRYPOINT [""]', 'CMD ["/bin/sh"]']
    assert restore_changes({"Entrypoint": ["tini", "--"], "Cmd": None}) == ['ENTRYPOINT ["tini", "--"]']


def test_shell_framing() -> None:
    # What the CLI sends and the Host reads.
    assert parse_client_message(docker_cli.resize_message(40, 120)) == (40, 120)
    for bad in (
        '{"type": "resize", "rows": 0, "cols": 80}',
        '{"type": "resize", "rows": true, "cols": 80}',
        '{"type": "stdin"}',
        "[]",
        "not json",
    ):
        with pytest.raises(ValidationError):
            parse_client_message(bad)
    # What the Host sends and the CLI reads.
    assert docker_cli.parse_server_message('{"type":"exit","code":3}') == docker_cli.ServerMessage("exit", 3)
    assert docker_cli.parse_server_message('{"type":"exit","code":null}').code is None
    assert docker_cli.parse_server_message('{"type":"error","message":"gone"}').message == "gone"
    assert docker_cli.parse_server_message("junk").kind == "unknown"
    assert [docker_cli.exit_status(c) for c in (0, 3, None, 300, -1)] == [0, 3, 1, 1, 1]
    assert docker_cli.shell_command(["--", "top", "-b"]) == ["top", "-b"]
    assert docker_cli.shell_command([]) is None


def test_cli_parser_is_pure_and_complete() -> None:
    parser = docker_cli.build_parser()
    for argv in (
        ["list-containers"],
        ["create-container", "img", "e", "--pull"],
        ["start-container", "e"],
        ["stop-container", "e"],
        ["delete-container", "e"],
        ["shell", "e", "--", "top"],
        ["create-tar", "e"],
        ["list-tars"],
        ["delete-tar", "e", "--version", "5"],
        ["import-image", "img", "e"],
        ["import-tar", "f.tar", "e"],
    ):
        args = parser.parse_args(argv)
        assert callable(args.func), argv


@pytest.mark.docker
def test_api_refuses_bad_names_before_any_docker_or_file_work(cluster) -> None:
    shared = cluster.shared
    decoy = shared / "x-1.tar"
    decoy.write_bytes(b"not yours")
    for name in TRICKS[:8] + ["Foo"]:
        quoted = urllib.parse.quote(name, safe="")
        for method, path, body in (
            ("DELETE", f"/api/environments/tarballs/{quoted}?version=1", None),
            ("POST", f"/api/environments/tarballs/{quoted}/image", {"image": "busybox"}),
            ("POST", f"/api/environments/containers/{quoted}", {"image": "busybox"}),
            ("POST", f"/api/environments/containers/{quoted}/tarball", None),
        ):
            status, reply = cluster.api(method, path, body)
            # Refused by the name rule; only the empty name misses the route altogether.
            assert status == 400 or (name == "" and status in (404, 405)), (name, method, path, status, reply)
            if name == "Foo":
                assert status == 400 and "use 'foo'" in reply["error"]["message"], reply
    status, reply = cluster.api("GET", "/api/environments/tarballs?name=Foo")
    assert status == 400 and "use 'foo'" in reply["error"]["message"]
    status, reply = cluster.api("POST", "/api/tasks", {"command": ["true"], "container": "Foo"})
    assert status == 400 and "use 'foo'" in reply["error"]["message"]
    assert decoy.read_bytes() == b"not yours"
    # Every environment route is authenticated.
    status, reply = cluster.api("GET", "/api/environments/tarballs", token="wrong")
    assert status == 401


def test_cli_one_line_errors_when_the_host_is_unreachable(tmp_path: Path, capsys, monkeypatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    config = tmp_path / "c.toml"
    config.write_text(f'[network]\nhost_port = {port}\n[auth]\ntoken = "t"\n')
    stack = contextlib.ExitStack()
    for argv in (["list-tars"], ["create-tar", "env"], ["shell", "env"]):
        if argv[0] == "shell":  # a shell needs real file descriptors, which pytest's capture lacks
            assert docker_cli.main(["--config", str(config), *argv]) == 2
            assert "file descriptors" in capsys.readouterr().err
            monkeypatch.setattr("sys.stdin", stack.enter_context(open(os.devnull)))
            monkeypatch.setattr("sys.stdout", stack.enter_context(open(os.devnull, "w")))
        assert docker_cli.main(["--config", str(config), *argv]) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot reach the Host" in err, err
    monkeypatch.undo()
    stack.close()
