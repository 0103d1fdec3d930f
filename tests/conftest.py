# Shared pytest configuration. The Docker/systemd harness lives in tests/harness/.
pytest_plugins = ["tests.harness.fixtures"]
