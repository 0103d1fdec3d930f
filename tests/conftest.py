# Shared pytest configuration. The Docker/systemd harness lives in tests/harness/.
import pytest

pytest_plugins = ["tests.harness.fixtures"]


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch):
    """A developer's own $HAKURIVER_TOKEN must not change what tests see."""
    monkeypatch.delenv("HAKURIVER_TOKEN", raising=False)
