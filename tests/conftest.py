# Shared pytest configuration. The Docker/systemd harness lives in tests/harness/.
import os

import pytest

pytest_plugins = ["tests.harness.fixtures"]


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch):
    """A developer's own $HAKURIVER_TOKEN must not change what tests see."""
    monkeypatch.delenv("HAKURIVER_TOKEN", raising=False)


# The two tiers. The fast check (scripts/check.sh) runs the fast one; CI then
# runs the README's test command with HAKURIVER_TIER=slow (.ci/run), so no
# test runs twice. Unset: every test (`bash scripts/test.sh`).
SLOW_MARKERS = ("docker", "systemd", "conformance", "browser")
"""The browser's too: scripts/test.sh installs chromium, after the fast check."""
SLOW_PATHS = ("tests/test_harness.py", "tests/integration/", "tests/environments/")
"""The harness's own tests and those that start Hosts and Runners in node containers."""


def in_fast_tier(item: pytest.Item) -> bool:
    """No Docker engine, no systemd node, no conformance run, no browser: the in-process tier."""
    if item.nodeid.startswith(SLOW_PATHS):
        return False
    return not any(item.get_closest_marker(marker) for marker in SLOW_MARKERS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tier = os.environ.get("HAKURIVER_TIER", "")
    if not tier:
        return
    if tier not in ("fast", "slow"):
        raise pytest.UsageError(f"HAKURIVER_TIER must be 'fast' or 'slow', not {tier!r}")
    keep, dropped = [], []
    for item in items:
        (keep if in_fast_tier(item) == (tier == "fast") else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
