"""What one CI run left on the Docker engine (scripts/test.sh's leftover check).

`python -m tests.harness.leftovers RUN STARTED_EPOCH` lists what
`engine.run_leftovers` finds and exits 1 if anything is there.
"""

from __future__ import annotations

import docker
import docker.errors

from .engine import run_leftovers


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.harness.leftovers RUN STARTED_EPOCH`: list them, exit 1 if any."""
    import sys
    import time

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m tests.harness.leftovers RUN STARTED_EPOCH", file=sys.stderr)
        return 2
    try:
        client = docker.from_env()
        left = run_leftovers(client, args[0], time.time() - float(args[1]))
    except docker.errors.DockerException as exc:
        print(f"[ci] cannot check for leftovers: the Docker engine does not answer ({exc})", file=sys.stderr)
        return 1
    for line in left:
        print(f"[ci] left behind by this run: {line}", file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
