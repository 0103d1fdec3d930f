"""What the Host refuses at start in the dashboard and scheduler sections:
values that would log everyone out at once, or break the queue's order."""

from __future__ import annotations

import math
import secrets

import pytest

from hakuriver.config import config_from_dict
from hakuriver.errors import ConfigError
from hakuriver.host.app import check_host_config


def config(tmp_path, **sections):
    data = {
        "paths": {"shared_dir": str(tmp_path)},
        "database": {"db_file": str(tmp_path / "host.db")},
        "auth": {"admin_token": secrets.token_urlsafe(24), "runner_token": secrets.token_urlsafe(24)},
    }
    data.update(sections)
    return config_from_dict(data)


@pytest.mark.parametrize("hours", [0, -1, math.inf, math.nan, 24 * 31])
def test_a_dashboard_session_length_out_of_range_is_refused(tmp_path, hours) -> None:
    with pytest.raises(ConfigError, match="dashboard.session_hours"):
        check_host_config(config(tmp_path, dashboard={"session_hours": hours}))


@pytest.mark.parametrize("weight", [-1.0, math.inf, math.nan])
def test_a_gpu_weight_that_breaks_the_order_is_refused(tmp_path, weight) -> None:
    with pytest.raises(ConfigError, match="scheduler.fairshare_gpu_weight"):
        check_host_config(config(tmp_path, scheduler={"fairshare_gpu_weight": weight}))


def test_the_defaults_and_sane_values_pass(tmp_path) -> None:
    check_host_config(config(tmp_path))
    check_host_config(config(tmp_path, dashboard={"session_hours": 0.5}, scheduler={"fairshare_gpu_weight": 0.5}))
