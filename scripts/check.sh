#!/usr/bin/env bash
# The fast check: lint, format, types, man pages and the tests that need no Docker, systemd or browser.
# A few minutes on a 2-core machine (the lint steps, seconds); the first step of .ci/run and what
# pre-commit runs (--no-tests).
#
#   bash scripts/check.sh            # everything
#   bash scripts/check.sh --no-tests # lint, format, types, man pages only (pre-commit)
#
# Creates .venv with the test extra when it is missing (no root needed for that).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
LOG_TAG=check
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
T_START=$SECONDS

TESTS=1
[[ ${1:-} == --no-tests ]] && TESTS=0

phase "python venv" python_venv test
# The sudoers tests run the real visudo: a fresh machine may not have it yet
# (scripts/test.sh installs the rest of the system packages later).
if ((TESTS)) && [[ $EUID -eq 0 ]]; then
    phase "sudo" debs "sudo (visudo for the sudoers tests)" sudo
fi
RC=0
step() {
    local name=$1 t0=$SECONDS rc=0
    shift
    "$@" || rc=$?
    log "$name: exit $rc ($((SECONDS - t0))s)"
    ((rc == 0)) || RC=1
}
step "ruff check" "$VENV/bin/ruff" check hakuriver tests bench roles
step "ruff format" "$VENV/bin/ruff" format --check --quiet hakuriver tests bench roles
step "mypy" "$VENV/bin/mypy"
step "man pages" "$VENV/bin/python" -m hakuriver.deploy.manpages --check
if ((TESTS)); then
    # The in-process tier: real aiohttp servers on loopback, real SQLite files, fake executors
    # (which tests those are: tests/conftest.py, in_fast_tier).
    step "fast tests" env HAKURIVER_TIER=fast "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests
fi
log "total: $((SECONDS - T_START))s"
((RC == 0)) || die "the fast check failed"
log "OK"
