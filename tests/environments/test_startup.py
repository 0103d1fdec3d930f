"""The Host without a default environment, offline: it starts, says how to provide one,
and `hakuriver.docker import-image` / `import-tar` then make its tarballs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hakuriver.cli import docker as docker_cli
from tests.harness.polling import poll

from .conftest import Made

pytestmark = pytest.mark.docker

MISSING_IMAGE = "hakuriver-test-missing/nothing:0"


def test_offline_host_starts_logs_the_import_command_and_imports(
    cluster_factory: Any, made: Made, docker_client: Any, tmp_path: Path, capsys: Any
) -> None:
    name = made.name()
    cluster = cluster_factory(docker_overrides={"default_container_name": name, "initial_base_image": MISSING_IMAGE})
    log = poll(
        lambda: cluster.host_proc.tail() if f"import-image LOCAL_IMAGE {name}" in cluster.host_proc.tail() else None,
        timeout=60,
        what="the Host to explain how to provide the default environment",
    )
    assert MISSING_IMAGE in log and "cannot be pulled" in log
    assert cluster.api("GET", "/api/health")[0] == 200
    config = ["--config", str(cluster.host_config_path)]

    # Nothing is ever pulled without being asked.
    assert docker_cli.main([*config, "create-container", MISSING_IMAGE, name]) == 1
    assert "never pulls silently" in capsys.readouterr().err

    tiny = made.tiny_image()
    assert docker_cli.main([*config, "import-image", tiny, name]) == 0
    out, err = capsys.readouterr()
    assert "[commit]" in err and "[save]" in err and f"{name}  version " in out
    assert docker_cli.main([*config, "--json", "list-tars", name]) == 0
    assert '"file": "' + name in capsys.readouterr().out
    tar_dir = made.tarballs_in(cluster.shared / "hakuriver-containers")
    [first] = sorted(tar_dir.glob(f"{name}-*.tar"))

    # import-tar: an image tarball uploaded from this machine; the tag the load made goes again.
    other = made.name()
    saved = tmp_path / "tiny.tar"
    with open(saved, "wb") as fh:
        for chunk in docker_client.images.get(tiny).save():
            fh.write(chunk)
    docker_client.api.remove_image(tiny)
    assert docker_cli.main([*config, "import-tar", str(saved), other]) == 0
    out, err = capsys.readouterr()
    assert "[upload]" in err and "[load]" in err and f"{other}  version " in out
    assert sorted(tar_dir.glob(f"{other}-*.tar")), list(tar_dir.iterdir())
    assert not docker_client.images.list(name=tiny.rpartition(":")[0]), "import-tar left the loaded tag behind"
    assert not [p for p in tar_dir.iterdir() if p.name.startswith(".")], "an upload or temporary file was left"

    # Not an image tarball: refused with the reason, nothing written.
    assert docker_cli.main([*config, "import-tar", str(first.parent.parent / "not-a-tar"), other]) == 2
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"junk" * 1000)
    assert docker_cli.main([*config, "import-tar", str(junk), other]) == 1
    assert "not a readable image tarball" in capsys.readouterr().err
    assert len(sorted(tar_dir.glob(f"{other}-*.tar"))) == 1
