"""hakuriver_common renders the config from a template: it must hold exactly the keys
of hakuriver.config, load with it, and keep the package's defaults where the role
does not choose its own."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2
import yaml

import hakuriver
from hakuriver.config import Config, config_from_dict
from hakuriver.deploy.configfile import config_keys

ROLE = Path(__file__).resolve().parents[2] / "roles" / "hakuriver_common"
TEMPLATE = ROLE / "templates" / "config.toml.j2"

# Role defaults that deliberately differ from the package's built-in ones
# (the package leaves paths empty; a deployment needs real ones).
ROLE_CHOSEN = {
    "paths.shared_dir",
    "paths.local_temp_dir",
    "database.db_file",
    "network.host_reachable_address",
    "network.runner_address",
    "auth.token",
}


def _template_keys() -> dict[str, tuple[str, ...]]:
    keys: dict[str, list[str]] = {}
    section = None
    for line in TEMPLATE.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^\[(\w+)\]$", line):
            section = m.group(1)
            keys[section] = []
        elif m := re.match(r"^(\w+) = ", line):
            assert section is not None, f"key {m.group(1)} before any section"
            keys[section].append(m.group(1))
    return {s: tuple(k) for s, k in keys.items()}


def _render(**overrides: Any) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    env.filters["bool"] = bool
    variables = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))
    variables.update(
        ansible_managed="Ansible managed",
        _hakuriver_common_host_address="10.0.0.1",
        _hakuriver_common_runner_address="10.0.0.11",
        _hakuriver_common_is_host=True,
        hakuriver_auth_token="a-token-for-the-template-test",
        hakuriver_shared_dir="/srv/hakuriver/shared",
    )
    variables.update(overrides)
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(**variables)


def test_template_has_exactly_the_config_keys_in_order() -> None:
    assert _template_keys() == config_keys()


def test_rendered_defaults_load_and_keep_the_package_defaults() -> None:
    import toml

    config = config_from_dict(toml.loads(_render()), source="rendered")
    assert config.auth.token == "a-token-for-the-template-test"
    assert config.paths.shared_dir == "/srv/hakuriver/shared"
    assert config.network.host_reachable_address == "10.0.0.1"
    rendered, builtin = config.to_dict(), Config().to_dict()
    for section, values in builtin.items():
        for key, default in values.items():
            if f"{section}.{key}" not in ROLE_CHOSEN:
                assert rendered[section][key] == default, f"{section}.{key}: role default differs from the package's"


def test_only_the_hosts_config_holds_the_admin_token() -> None:
    import toml

    split = dict(
        hakuriver_auth_token="",
        hakuriver_auth_admin_token="the-admin-token-0123456789",
        hakuriver_auth_runner_token="the-runner-secret-0123456789",
    )
    host = config_from_dict(toml.loads(_render(**split)), source="rendered").auth
    assert (host.token, host.admin_token, host.runner_token) == (
        "",
        split["hakuriver_auth_admin_token"],
        split["hakuriver_auth_runner_token"],
    )
    text = _render(**split, _hakuriver_common_is_host=False)
    runner = config_from_dict(toml.loads(text), source="rendered").auth
    assert (runner.token, runner.admin_token, runner.runner_token) == ("", "", split["hakuriver_auth_runner_token"])
    assert split["hakuriver_auth_admin_token"] not in text


def test_the_client_config_holds_only_the_hosts_address_and_the_users_token(tmp_path: Path) -> None:
    import toml

    from hakuriver.config import read_config_file

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    template = ROLE.parent / "hakuriver_host" / "templates" / "client-config.toml.j2"
    text = env.from_string(template.read_text(encoding="utf-8")).render(
        ansible_managed="Ansible managed",
        item={"item": {"name": "alice"}},
        _hakuriver_common_host_address="10.0.0.1",
        hakuriver_host_port=8123,
        _hakuriver_host_tokens={"alice": "hkr_the-token-of-alice"},
    )
    assert toml.loads(text) == {
        "network": {"host_reachable_address": "10.0.0.1", "host_port": 8123},
        "auth": {"token": "hkr_the-token-of-alice"},
    }
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    config = read_config_file(path)
    assert config.host_url == "http://10.0.0.1:8123" and config.auth.client_token({}) == "hkr_the-token-of-alice"


def test_values_needing_quotes_survive() -> None:
    import toml

    text = _render(
        hakuriver_shared_dir='/srv/with "quotes" \\ and ünïcode',
        hakuriver_docker_additional_mounts=["/data:/data:ro", "/x y:/z"],
        hakuriver_docker_tasks_privileged=True,
        hakuriver_heartbeat_interval=2,
    )
    config = config_from_dict(toml.loads(text), source="rendered")
    assert config.paths.shared_dir == '/srv/with "quotes" \\ and ünïcode'
    assert config.docker.additional_mounts == ("/data:/data:ro", "/x y:/z")
    assert config.docker.tasks_privileged is True
    assert config.timing.heartbeat_interval == 2.0


def test_pinned_version_is_this_release() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))
    assert defaults["hakuriver_version"] == hakuriver.__version__


def test_the_machine_wide_client_config_holds_the_address_and_no_secret(tmp_path: Path) -> None:
    import toml

    from hakuriver.config import read_config_file

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    env.filters["bool"] = bool
    template = ROLE / "templates" / "client.toml.j2"
    for tls in (False, True):
        text = env.from_string(template.read_text(encoding="utf-8")).render(
            ansible_managed="Ansible managed",
            _hakuriver_common_client_host="10.0.0.1",
            hakuriver_host_port=8123,
            hakuriver_tls=tls,
            hakuriver_tls_ca_file="/etc/hakuriver/tls/ca.pem",
        )
        assert toml.loads(text) == {
            "network": {"host_reachable_address": "10.0.0.1", "host_port": 8123},
            "tls": {"enabled": tls, "ca_file": "/etc/hakuriver/tls/ca.pem" if tls else ""},
        }
        path = tmp_path / "client.toml"
        path.write_text(text, encoding="utf-8")
        config = read_config_file(path)
        assert config.host_url == f"{'https' if tls else 'http'}://10.0.0.1:8123"
        assert config.auth.client_token({}) == ""
