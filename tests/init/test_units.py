"""The pure unit generator: hakuriver.deploy.units."""

from __future__ import annotations

import dataclasses
import re

import pytest

from hakuriver.config import config_from_dict
from hakuriver.deploy.units import (
    DEFAULT_SYSTEM_PATH,
    UnitError,
    UnitParams,
    build_path_env,
    render_host_unit,
    render_runner_unit,
    render_unit,
    unit_name,
    unit_params_from_config,
)

PY = "/opt/hakuriver/venv/bin/python"


def params(role: str = "host", **kw: object) -> UnitParams:
    base: dict[str, object] = dict(
        role=role,
        user="hakuriver",
        group="hakuriver",
        python=PY,
        config_path="/etc/hakuriver/config.toml",
        working_directory="/srv/shared",
        path_env=build_path_env(PY, None),
    )
    base.update(kw)
    return UnitParams(**base)  # type: ignore[arg-type]


def sections(text: str) -> dict[str, list[str]]:
    """{section: [directive lines]} with comments and blanks dropped."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            out[current] = []
        else:
            out[current].append(line)
    return out


def directives(text: str, section: str) -> dict[str, list[str]]:
    d: dict[str, list[str]] = {}
    for line in sections(text)[section]:
        key, _, value = line.partition("=")
        d.setdefault(key, []).append(value)
    return d


def test_host_unit_matches_the_guide() -> None:
    text = render_host_unit(params())
    assert list(sections(text)) == ["Unit", "Service", "Install"]
    unit = directives(text, "Unit")
    assert unit["Description"] == ["HakuRiver Host Server"]
    assert unit["After"] == ["network.target"]
    svc = directives(text, "Service")
    assert svc["Type"] == ["simple"]
    assert svc["User"] == ["hakuriver"] and svc["Group"] == ["hakuriver"]
    assert svc["WorkingDirectory"] == ["/srv/shared"]
    assert svc["ExecStart"] == [f"{PY} -m hakuriver.cli.host --config /etc/hakuriver/config.toml"]
    assert svc["Restart"] == ["on-failure"] and svc["RestartSec"] == ["5"]
    assert svc["Environment"] == [f'"PATH=/opt/hakuriver/venv/bin:{DEFAULT_SYSTEM_PATH}"']
    assert "KillMode" not in svc and "NoNewPrivileges" not in svc
    assert directives(text, "Install") == {"WantedBy": ["multi-user.target"]}
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_runner_unit_orders_after_docker_without_requiring_it_and_keeps_tasks() -> None:
    text = render_runner_unit(params("runner"))
    unit = directives(text, "Unit")
    assert unit["Description"] == ["HakuRiver Runner Agent"]
    assert set(unit["After"][0].split()) == {"network.target", "network-online.target", "docker.service"}
    assert set(unit["Wants"][0].split()) == {"network-online.target", "docker.service"}
    assert "Requires" not in unit and "BindsTo" not in unit
    svc = directives(text, "Service")
    assert svc["ExecStart"] == [f"{PY} -m hakuriver.cli.runner --config /etc/hakuriver/config.toml"]
    assert svc["KillMode"] == ["process"]
    assert not any(k.startswith(("NoNewPrivileges", "Protect", "Private")) for k in svc), (
        "the runner uses sudo: no sandboxing"
    )


def test_render_unit_dispatches_and_renderers_check_the_role() -> None:
    assert render_unit(params()) == render_host_unit(params())
    assert render_unit(params("runner")) == render_runner_unit(params("runner"))
    with pytest.raises(UnitError):
        render_host_unit(params("runner"))
    with pytest.raises(UnitError):
        render_runner_unit(params())


def test_rendering_is_pure_and_deterministic() -> None:
    p = params("runner", instance="a1")
    assert render_unit(p) == render_unit(dataclasses.replace(p))
    # JSON-ish input (as an Ansible filter would pass it) gives the same text
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(p).items()}
    assert render_unit(UnitParams(**as_json)) == render_unit(p)


def test_unit_names_and_instances() -> None:
    assert unit_name("host") == "hakuriver-host.service"
    assert unit_name("runner") == "hakuriver-runner.service"
    assert unit_name("runner", "gpu1") == "hakuriver-runner-gpu1.service"
    text = render_unit(params("runner", instance="gpu1"))
    assert "Description=HakuRiver Runner Agent (gpu1)" in text
    assert text.startswith("# hakuriver-runner-gpu1.service:")
    for bad in ("", "a/b", "a b", "-x", "x@y", "a\nb", "x" * 65):
        with pytest.raises(UnitError):
            params("runner", instance=bad)
    for bad in ("a/b", "x@y"):
        with pytest.raises(UnitError):
            unit_name("runner", bad)
    with pytest.raises(UnitError):
        params("host", instance="a1")


def test_hardening_is_host_only_and_scoped_to_the_configs_paths() -> None:
    text = render_unit(params(harden=True, read_write_paths=("/srv/shared", "/var/lib/hakuriver")))
    svc = directives(text, "Service")
    assert svc["NoNewPrivileges"] == ["yes"]
    assert svc["ProtectSystem"] == ["strict"]
    assert svc["ReadWritePaths"] == ["/srv/shared /var/lib/hakuriver"]
    assert svc["ProtectHome"] == ["yes"]
    assert svc["PrivateTmp"] == ["yes"]
    assert svc["CapabilityBoundingSet"] == [""]
    with pytest.raises(UnitError, match="Host unit only"):
        params("runner", harden=True)


def test_hardening_keeps_home_and_tmp_paths_reachable() -> None:
    home = render_unit(
        params(harden=True, config_path="/home/ann/.hakuriver/config.toml", read_write_paths=("/srv/shared",))
    )
    assert directives(home, "Service")["ProtectHome"] == ["read-only"]
    tmp = render_unit(params(harden=True, read_write_paths=("/tmp/hkr/shared",)))
    assert "PrivateTmp" not in directives(tmp, "Service"), "a private /tmp would hide the Host's files"


@pytest.mark.parametrize(
    "field,value",
    [
        ("config_path", "/etc/x\nExecStartPre=/bin/evil"),
        ("config_path", "relative/config.toml"),
        ("config_path", '/etc/a"b.toml'),
        ("working_directory", "/srv/x\\y"),
        ("python", ""),
        ("user", "root\nUser=x"),
        ("user", "a b"),
        ("group", "g:h"),
        ("path_env", "/usr/bin::/bin"),
        ("path_env", "/usr/bin:relative"),
        ("version", "1.0\nX=y"),
    ],
)
def test_values_that_could_break_the_unit_are_refused(field: str, value: str) -> None:
    with pytest.raises(UnitError):
        params(**{field: value})


def test_percent_and_spaces_are_escaped() -> None:
    text = render_unit(params(config_path="/etc/hakuriver/my 100%.toml", working_directory="/srv/a%b"))
    svc = directives(text, "Service")
    assert svc["ExecStart"] == [f'{PY} -m hakuriver.cli.host --config "/etc/hakuriver/my 100%%.toml"']
    assert svc["WorkingDirectory"] == ["/srv/a%%b"]
    assert "# Config: /etc/hakuriver/my 100%.toml" in text


def test_path_env_has_the_venv_first_and_no_empty_or_relative_elements() -> None:
    assert build_path_env(PY, None) == f"/opt/hakuriver/venv/bin:{DEFAULT_SYSTEM_PATH}"
    assert build_path_env(PY, "") == f"/opt/hakuriver/venv/bin:{DEFAULT_SYSTEM_PATH}"
    got = build_path_env(PY, ":/usr/bin::.:bin:/opt/hakuriver/venv/bin:/usr/bin/:/bin:")
    assert got == "/opt/hakuriver/venv/bin:/usr/bin:/bin"
    assert "::" not in got and not got.endswith(":")


def _config(**paths: str) -> object:
    data = {
        "auth": {"token": "t" * 32},
        "paths": {"shared_dir": "/srv/shared", "local_temp_dir": "/var/tmp/hkr"},
        "database": {"db_file": "/var/lib/hakuriver/host.db"},
    }
    for key, value in paths.items():
        section, _, name = key.partition("__")
        data.setdefault(section, {})[name] = value
    return config_from_dict(data, source="/etc/hakuriver/config.toml")


def test_params_from_config_take_the_configs_own_paths() -> None:
    config = _config(paths__host_log_file="/var/log/hakuriver/host.log")
    p = unit_params_from_config(
        config, "host", user="u", group="g", python=PY, path_env=build_path_env(PY, None), harden=True
    )
    assert p.config_path == "/etc/hakuriver/config.toml"
    assert p.working_directory == "/srv/shared"
    assert p.read_write_paths == ("/srv/shared", "/var/lib/hakuriver", "/var/log/hakuriver")
    r = unit_params_from_config(
        config, "runner", user="u", group="g", python=PY, path_env=build_path_env(PY, None), instance="b"
    )
    assert (r.role, r.instance, r.harden, r.read_write_paths) == ("runner", "b", False, ())


def test_params_from_config_refuse_what_the_service_would_refuse() -> None:
    kw = dict(user="u", group="g", python=PY, path_env=build_path_env(PY, None))
    with pytest.raises(UnitError, match="database.db_file"):
        unit_params_from_config(
            config_from_dict({"auth": {"token": "x" * 20}, "paths": {"shared_dir": "/s"}}, source="/c.toml"),
            "host",
            **kw,
        )
    with pytest.raises(UnitError, match="local_temp_dir"):
        unit_params_from_config(
            config_from_dict({"auth": {"token": "x" * 20}, "paths": {"shared_dir": "/s"}}, source="/c.toml"),
            "runner",
            **kw,
        )
    with pytest.raises(UnitError, match="config file"):
        unit_params_from_config(config_from_dict({}), "host", **kw)
    with pytest.raises(UnitError, match="absolute"):
        unit_params_from_config(_config(paths__shared_dir="shared"), "runner", **kw)


def test_params_from_config_take_split_credentials() -> None:
    """What `hakuriver.init config` writes (admin_token + runner_token, no auth.token) makes a
    Host unit; a Runner needs only the runner secret; neither starts without its own."""
    kw = dict(user="u", group="g", python=PY, path_env=build_path_env(PY, None))
    paths = {"shared_dir": "/srv/shared", "local_temp_dir": "/var/tmp/hkr"}
    host = {"admin_token": "a" * 32, "runner_token": "r" * 32}
    both = {"paths": paths, "database": {"db_file": "/var/lib/hakuriver/db/host.db"}}
    assert unit_params_from_config(config_from_dict({**both, "auth": host}, source="/c.toml"), "host", **kw)
    runner = config_from_dict({"paths": paths, "auth": {"runner_token": "r" * 32}}, source="/c.toml")
    assert unit_params_from_config(runner, "runner", **kw).role == "runner"
    with pytest.raises(UnitError, match="auth.admin_token and auth.runner_token"):
        unit_params_from_config(
            config_from_dict({**both, "auth": {"runner_token": "r" * 32}}, source="/c"), "host", **kw
        )
    with pytest.raises(UnitError, match="auth.runner_token"):
        unit_params_from_config(config_from_dict({"paths": paths}, source="/c.toml"), "runner", **kw)


def test_every_line_is_a_directive_a_section_or_a_comment() -> None:
    pattern = re.compile(r"^(#.*|\[(Unit|Service|Install)\]|[A-Za-z]+=.*|)$")
    for p in (params(), params("runner", instance="x"), params(harden=True, read_write_paths=("/srv/shared",))):
        for line in render_unit(p).splitlines():
            assert pattern.match(line), line
