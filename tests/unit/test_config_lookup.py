"""The config lookup order: a lab member's own file, then the machine-wide
client config (clients only), then built-in defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakuriver.config import load_config
from hakuriver.errors import ConfigError


def _write(path: Path, address: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[network]\nhost_reachable_address = "{address}"\n', encoding="utf-8")
    return path


def test_a_client_falls_back_to_the_machine_wide_client_config(tmp_path: Path) -> None:
    system = _write(tmp_path / "etc" / "client.toml", "10.0.0.7")
    env = {"HOME": str(tmp_path / "home")}
    config = load_config(None, env, client=True, system_path=system)
    assert config.source == str(system) and config.host_url == "http://10.0.0.7:8000"


def test_the_users_own_file_wins_over_the_machine_wide_one(tmp_path: Path) -> None:
    system = _write(tmp_path / "etc" / "client.toml", "10.0.0.7")
    own = _write(tmp_path / "home" / ".hakuriver" / "config.toml", "10.0.0.8")
    config = load_config(None, {"HOME": str(tmp_path / "home")}, client=True, system_path=system)
    assert config.source == str(own.resolve()) and config.host_url == "http://10.0.0.8:8000"


def test_a_service_never_starts_from_the_client_config(tmp_path: Path) -> None:
    system = _write(tmp_path / "etc" / "client.toml", "10.0.0.7")
    config = load_config(None, {"HOME": str(tmp_path / "home")}, system_path=system)
    assert config.source is None


def test_a_named_file_that_is_missing_is_still_an_error(tmp_path: Path) -> None:
    system = _write(tmp_path / "etc" / "client.toml", "10.0.0.7")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.toml"), {"HOME": str(tmp_path)}, client=True, system_path=system)
