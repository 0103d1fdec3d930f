"""`hakuriver.host`: run the Host service (node registry, task queue, API).

Listens on `network.host_bind_ip`:`network.host_port`; logs to stderr and,
when set, to `paths.host_log_file`. Stops cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import SERVICE_EPILOG, CliParser, exit_service, serve, service_options

PROG = "hakuriver.host"


def build_parser() -> argparse.ArgumentParser:
    """The full parser. Pure: reads no config, environment, network or files."""
    return CliParser(
        prog=PROG,
        description="Run the HakuRiver Host: the node registry, the task queue and the HTTP API\n"
        "that runners and the CLIs talk to.",
        epilog=SERVICE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[service_options()],
    )


def _create_app(config: Any) -> Any:
    from ..host.app import create_app

    return create_app(config)


def main(argv: list[str] | None = None) -> int:
    return serve(
        build_parser(),
        argv,
        factory=_create_app,
        bind=lambda c: (c.network.host_bind_ip, c.network.host_port),
        log_file=lambda c: c.paths.host_log_file,
    )


def run() -> None:
    exit_service(main())


if __name__ == "__main__":
    run()
