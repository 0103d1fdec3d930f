"""`hakuriver.runner`: run the Runner agent on a compute node.

Listens on `network.runner_address`:`network.runner_port` (the address the
Host uses to reach this runner), registers with the Host at
`network.host_reachable_address`:`network.host_port` and heartbeats. Logs to
stderr and, when set, to `paths.runner_log_file`. Stopping the runner never
stops its tasks; a restarted runner adopts them again.
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import SERVICE_EPILOG, CliParser, exit_service, serve, service_options

PROG = "hakuriver.runner"


def build_parser() -> argparse.ArgumentParser:
    """The full parser. Pure: reads no config, environment, network or files."""
    return CliParser(
        prog=PROG,
        description="Run the HakuRiver Runner: registers this node with the Host, heartbeats,\n"
        "and runs the tasks the Host sends (Docker containers, or systemd units for --container NULL).",
        epilog=SERVICE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[service_options()],
    )


def _create_app(config: Any) -> Any:
    from ..runner.app import create_app

    return create_app(config)


def main(argv: list[str] | None = None) -> int:
    return serve(
        build_parser(),
        argv,
        factory=_create_app,
        bind=lambda c: (c.network.runner_address, c.network.runner_port),
        log_file=lambda c: c.paths.runner_log_file,
    )


def run() -> None:
    exit_service(main())


if __name__ == "__main__":
    run()
