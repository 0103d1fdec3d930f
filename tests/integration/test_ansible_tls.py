"""hakuriver_common's tasks/tls.yml, really run: ansible-playbook with two local
"nodes" (a Host and a Runner). Check mode on fresh nodes makes nothing; then the
CA is made and the certificates signed by this checkout's hakuriver.init, the
files installed with their modes, and a rerun changes nothing. Root only (the
key is chowned to the service user). Here, not in tests/ansible: three playbook
runs take longer than the fast check allows."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "roles" / "hakuriver_common" / "tasks" / "tls.yml"
VENV = Path(sys.executable).parent.parent

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installs files owned by another user"),
    pytest.mark.skipif(shutil.which("ansible-playbook", path=str(VENV / "bin")) is None, reason="no ansible-playbook"),
    pytest.mark.skipif(not (VENV / "bin" / "hakuriver.init").exists(), reason="hakuriver.init is not installed"),
]

PLAY = """\
---
- name: tasks/tls.yml against two local nodes
  hosts: hakuriver
  gather_facts: false
  vars:
    root: {root}
    hakuriver_venv: {venv}
    hakuriver_tls: true
    hakuriver_tls_manage: true
    hakuriver_tls_ca_dir: "{{{{ root }}}}/ca"
    hakuriver_tls_ca_file: "{{{{ root }}}}/{{{{ inventory_hostname }}}}/tls/ca.pem"
    hakuriver_tls_cert_file: "{{{{ root }}}}/{{{{ inventory_hostname }}}}/tls/{{{{ inventory_hostname }}}}.pem"
    hakuriver_tls_key_file: "{{{{ root }}}}/{{{{ inventory_hostname }}}}/tls/{{{{ inventory_hostname }}}}-key.pem"
    hakuriver_tls_extra_names: ["{{{{ 'head.lab' if inventory_hostname == 'head' else '10.9.9.9' }}}}"]
    hakuriver_user: nobody
    hakuriver_group: "{group}"
    _hakuriver_common_host_address: 10.0.0.1
    _hakuriver_common_runner_address: "{{{{ '10.0.0.1' if inventory_hostname == 'head' else '10.0.0.11' }}}}"
  tasks:
    - name: As install.yml notes it
      ansible.builtin.set_fact:
        _hakuriver_common_installed: true
    - name: The role's TLS tasks
      ansible.builtin.include_tasks: {tasks}
"""

INVENTORY = """\
[hakuriver_host]
head

[hakuriver_runners]
gpu1

[hakuriver:children]
hakuriver_host
hakuriver_runners

[hakuriver:vars]
ansible_connection=local
ansible_python_interpreter={python}
"""


def _playbook(tmp_path: Path, *extra: str) -> dict[str, int]:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".ansible")}
    proc = subprocess.run(
        [
            str(VENV / "bin" / "ansible-playbook"),
            "-i",
            str(tmp_path / "inventory.ini"),
            *extra,
            str(tmp_path / "p.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+: ok=\d+\s+changed=(\d+)", proc.stdout, re.M)}


def test_tls_tasks_check_make_sign_install_and_change_nothing_on_a_rerun(tmp_path: Path) -> None:
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    (tmp_path / "p.yml").write_text(PLAY.format(root=nodes, venv=VENV, group=group, tasks=TASKS))
    (tmp_path / "inventory.ini").write_text(INVENTORY.format(python=sys.executable))

    # Check mode on fresh nodes (molecule's `check` scenario, without TLS): it completes, makes nothing.
    _playbook(tmp_path, "--check")
    assert list(nodes.iterdir()) == []

    first = _playbook(tmp_path)
    assert first["head"] > 0 and first["gpu1"] > 0
    ca = nodes / "ca"
    assert stat.S_IMODE(ca.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca / "ca-key.pem").stat().st_mode) == 0o600
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.pem").read_bytes())
    expected = {"head": (["head", "head.lab"], ["10.0.0.1"]), "gpu1": (["gpu1"], ["10.0.0.11", "10.9.9.9"])}
    for name, (dns, ips) in expected.items():
        tls_dir = nodes / name / "tls"
        assert (tls_dir / "ca.pem").read_bytes() == (ca / "ca.pem").read_bytes()
        cert = x509.load_pem_x509_certificate((tls_dir / f"{name}.pem").read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == dns
        assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ips
        key = tls_dir / f"{name}-key.pem"
        info = key.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 65534, "the key: 0600, the service user's"
        assert stat.S_IMODE((tls_dir / f"{name}.pem").stat().st_mode) == 0o644
    before = {p: p.read_bytes() for p in nodes.rglob("*.pem")}

    assert _playbook(tmp_path) == {"head": 0, "gpu1": 0}
    assert {p: p.read_bytes() for p in nodes.rglob("*.pem")} == before
