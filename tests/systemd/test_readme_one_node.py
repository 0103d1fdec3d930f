"""The README's "Deployment on one node", run as written, block by block, as root in a
fresh systemd node with Docker inside: from `apt-get install` to a first Docker task and a
first `--container NULL` task.

The commands come from the README itself (the ```sh blocks between its
`<!-- one-node:begin -->` and `<!-- one-node:end -->` markers), so the two cannot drift.
The node has no network, which the README's machine has; `OFFLINE` lists every command
replaced for that, each of which must appear exactly once in the README.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.harness.node import NodeFactory

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- one-node:begin -->", "<!-- one-node:end -->"
WHEELHOUSE = "/tmp/wheelhouse"
BASE_IMAGE = "python:3.12-slim"


def readme_blocks(text: str) -> list[str]:
    """The ```sh blocks between the one-node markers, in order."""
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "the one-node markers must appear once each"
    section = text[text.index(BEGIN) : text.index(END)]
    blocks = re.findall(r"^```sh\n(.*?)^```$", section, flags=re.M | re.S)
    assert blocks, "no ```sh blocks between the one-node markers"
    return blocks


def offline(task_image: str) -> dict[str, str]:
    """README command -> what the offline node runs instead."""
    return {
        # The node image already has these packages (and no mirror): check they are there.
        "apt-get install -y python3-venv docker.io sudo": "dpkg -s python3-venv docker.io sudo >/dev/null",
        # No package index: the same install from wheels built on this machine.
        "/opt/hakuriver/venv/bin/pip install .": (
            f"/opt/hakuriver/venv/bin/pip install --no-index --find-links {WHEELHOUSE} hakuriver"
        ),
        # No registry: the harness's task image, loaded into the node's Docker, under the README's name.
        f"docker pull {BASE_IMAGE}": f"docker tag {task_image} {BASE_IMAGE}",
    }


def substitute(blocks: list[str], replacements: dict[str, str]) -> list[str]:
    joined = "\0".join(blocks)
    for old, new in replacements.items():
        assert joined.count(old) == 1, f"the README no longer has exactly one {old!r}: update OFFLINE"
        joined = joined.replace(old, new)
    return joined.split("\0")


def test_readme_blocks_are_found() -> None:
    """The extraction itself (no node, so in the fast check): every block, and every
    offline replacement, is there."""
    blocks = readme_blocks(README.read_text())
    assert len(blocks) >= 8
    substitute(blocks, offline("IMAGE"))
    script = "\n".join(blocks)
    for step in ("useradd --system", "hakuriver.init service --all", "hakuriver.init launcher", "--container NULL"):
        assert step in script, step


@pytest.mark.docker
@pytest.mark.systemd
def test_one_node_from_the_readme(
    node_factory: NodeFactory, harness_images: dict[str, str], hakuriver_wheelhouse: Any
) -> None:
    blocks = substitute(readme_blocks(README.read_text()), offline(harness_images["task"]))
    node = node_factory("onenode", docker_in_node=True, hostname="onenode")
    node.copy_in(hakuriver_wheelhouse.deps_dir, "/tmp", arcname=Path(WHEELHOUSE).name)
    node.copy_in(hakuriver_wheelhouse.hakuriver_wheel, WHEELHOUSE)
    node.load_image(harness_images["task"])

    outputs = []
    for number, block in enumerate(blocks, 1):
        result = node.exec(["bash", "-euo", "pipefail", "-xc", block], check=False, timeout=600)
        if result.rc != 0:
            journal = node.exec(
                ["journalctl", "--no-pager", "-o", "cat", "-n", "80", "-u", "hakuriver-host", "-u", "hakuriver-runner"],
                check=False,
            ).stdout
            pytest.fail(f"README one-node block {number} failed:\n{result}\n--- journal ---\n{journal}", pytrace=False)
        outputs.append(result.stdout)
        # With every prerequisite done as the README says, hakuriver.init has nothing to warn about.
        warnings = [line for line in result.stderr.splitlines() if line.startswith("hakuriver.init: ")]
        assert warnings == [], f"block {number}: {warnings}"

    docker_task, null_task = outputs[-2], outputs[-1]
    assert docker_task.strip().splitlines()[-1] == "hello from Docker", docker_task
    alice_uid = node.exec(["id", "-u", "alice"]).stdout.strip()
    assert null_task.strip().splitlines()[-1] == alice_uid, null_task
