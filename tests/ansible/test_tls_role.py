"""hakuriver_tls in the roles: the config's [tls] follows it, and tasks/tls.yml keeps
the CA's key on the Host, the node's key private, and reruns free of changes.
(tests/integration/test_ansible_tls.py runs the task file for real.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import toml
import yaml

from hakuriver.config import config_from_dict

ROLE = Path(__file__).resolve().parents[2] / "roles" / "hakuriver_common"


def _render(**overrides: Any) -> Any:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    env.filters["bool"] = bool
    variables = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))
    variables.update(
        ansible_managed="Ansible managed",
        _hakuriver_common_host_address="10.0.0.1",
        _hakuriver_common_runner_address="10.0.0.11",
        _hakuriver_common_is_host=False,
        hakuriver_auth_token="a-token-for-the-template-test",
        hakuriver_shared_dir="/srv/hakuriver/shared",
        **overrides,
    )
    text = env.from_string((ROLE / "templates" / "config.toml.j2").read_text(encoding="utf-8")).render(**variables)
    return config_from_dict(toml.loads(text), source="rendered")


def test_tls_off_renders_no_paths_and_on_renders_them() -> None:
    off = _render(hakuriver_tls_cert_file="/etc/hakuriver/tls/gpu1.pem")
    assert (off.tls.enabled, off.tls.ca_file, off.tls.cert_file, off.tls.key_file) == (False, "", "", "")
    on = _render(
        hakuriver_tls=True,
        hakuriver_tls_ca_file="/etc/hakuriver/tls/ca.pem",
        hakuriver_tls_cert_file="/etc/hakuriver/tls/gpu1.pem",
        hakuriver_tls_key_file="/etc/hakuriver/tls/gpu1-key.pem",
    )
    assert on.tls.enabled and on.scheme == "https"
    assert (on.tls.ca_file, on.tls.cert_file, on.tls.key_file) == (
        "/etc/hakuriver/tls/ca.pem",
        "/etc/hakuriver/tls/gpu1.pem",
        "/etc/hakuriver/tls/gpu1-key.pem",
    )


def test_default_paths_are_per_node_under_the_config_dir() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))
    assert defaults["hakuriver_tls"] is False and defaults["hakuriver_tls_manage"] is True
    assert defaults["hakuriver_tls_ca_file"] == "{{ hakuriver_config_dir }}/tls/ca.pem"
    assert "{{ inventory_hostname }}" in defaults["hakuriver_tls_cert_file"]
    assert "{{ inventory_hostname }}" in defaults["hakuriver_tls_key_file"]


def _tasks() -> dict[str, dict[str, Any]]:
    tasks = yaml.safe_load((ROLE / "tasks" / "tls.yml").read_text(encoding="utf-8"))
    [managed] = [t for t in tasks if "block" in t]
    assert managed["when"] == "hakuriver_tls_manage | bool"
    return {t["name"]: t for t in tasks + managed["block"]}


def test_tls_tasks_are_guarded_idempotent_and_keep_keys_private() -> None:
    main = yaml.safe_load((ROLE / "tasks" / "main.yml").read_text(encoding="utf-8"))
    [imported] = [t for t in main if t.get("ansible.builtin.import_tasks") == "tls.yml"]
    assert imported["when"] == "hakuriver_tls | bool"
    assert main.index(imported) > [t["name"] for t in main].index("Configure")

    tasks = _tasks()
    for name in ("Make the cluster CA on the Host", "Sign this node's certificate on the Host"):
        command = tasks[name]["ansible.builtin.command"]
        assert "creates" in command, f"{name}: must not run again on a rerun"
        assert tasks[name]["delegate_to"] == "{{ _hakuriver_common_tls_ca_host | default(inventory_hostname) }}"
    ca = tasks["Make the cluster CA on the Host"]["ansible.builtin.command"]
    assert ca["argv"][1:3] == ["tls", "ca"] and ca["creates"].endswith("/ca-key.pem")
    assert tasks["Create the CA directory on the Host"]["ansible.builtin.file"]["mode"] == "0700"
    read = tasks["Read the CA certificate and this node's certificate and key from the Host"]
    assert read["no_log"] is True and "ca-key.pem" not in str(read["loop"]), "the CA's key never leaves the Host"
    key = tasks["Install this node's private key"]
    assert key["no_log"] is True
    assert key["ansible.builtin.copy"]["mode"] == "0600"
    assert key["ansible.builtin.copy"]["owner"] == "{{ hakuriver_user }}"
    # New files restart the services, as a changed config does.
    assert "_hakuriver_common_changes" in tasks["Count a TLS change"]["ansible.builtin.set_fact"]
