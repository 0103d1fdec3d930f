#!/usr/bin/env bash
# HakuRiver test suite: the one command to run everything (also what .ci/run calls).
#
#   bash scripts/test.sh [pytest args...]
#
# Runs on a fresh Debian 12 machine as root and is idempotent:
#   1. apt-get installs what is missing (docker.io, debootstrap, numactl, sudo, ...)
#   2. starts dockerd in the background if no engine answers
#   3. creates .venv and installs the project with its test extra (skipped when pyproject.toml
#      did not change since the last install)
#   4. builds the test images with debootstrap (cached by tag: seconds when nothing changed)
#   5. runs pytest, then checks that no harness container is left behind
# Environment: PYTHON (interpreter for the venv, default python3, must be >= 3.11).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}
HARNESS_FILTER=label=org.hakuriver.harness=1
DOCKERD_LOG=/var/log/hakuriver-dockerd.log
T_START=$SECONDS

log() { echo "[ci] $*"; }
die() { echo "[ci] ERROR: $*" >&2; exit 1; }

# phase NAME FUNCTION: run FUNCTION, print how long it took.
phase() {
    local name=$1 t0=$SECONDS
    shift
    log "--- $name"
    "$@"
    log "$name: $((SECONDS - t0))s"
}

apt_packages() {
    local wanted=(docker.io debootstrap numactl sudo iproute2 procps tar ca-certificates
                  python3 python3-venv)
    local missing=() p
    for p in "${wanted[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "system packages present"
        return
    fi
    [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}) and not root to install them"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
}

docker_engine() {
    if docker info >/dev/null 2>&1; then
        log "docker engine answers"
        return
    fi
    [[ $EUID -eq 0 ]] || die "docker engine not reachable and not root to start dockerd"
    command -v dockerd >/dev/null || die "dockerd not found"
    log "starting dockerd (log: $DOCKERD_LOG)"
    setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local deadline=$((SECONDS + 60))
    until docker info >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "[ci] dockerd did not answer within 60s; log tail:" >&2
            tail -n 50 "$DOCKERD_LOG" >&2 || true
            exit 1
        fi
        sleep 0.5  # polling with a deadline, not synchronisation
    done
    log "docker engine up"
}

python_venv() {
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PY is $("$PY" -V 2>&1); need Python >= 3.11 (set PYTHON=...)"
    # A venv whose interpreter vanished or is too old is recreated.
    if [[ -d $VENV ]] && ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        log "recreating broken/old $VENV"
        rm -rf "$VENV"
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.hakuriver-install-stamp" want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
        log "venv up to date (pyproject.toml unchanged)"
        return
    fi
    log "pip install -e '.[test]' (log: $VENV/pip-install.log)"
    rm -f "$stamp"
    if ! "$VENV/bin/python" -m pip install -e '.[test]' >"$VENV/pip-install.log" 2>&1; then
        tail -n 40 "$VENV/pip-install.log" >&2
        die "pip install failed"
    fi
    echo "$want" >"$stamp"
}

images() {
    "$VENV/bin/python" -m tests.images build
}

PYTEST_RC=0
run_pytest() {
    set +e
    "$VENV/bin/python" -m pytest "$@"
    PYTEST_RC=$?
    set -e
    log "pytest exit status: $PYTEST_RC"
}

LEFT_RC=0
leftovers() {
    local left nets
    left=$(docker ps -a --filter "$HARNESS_FILTER" -q)
    nets=$(docker network ls --filter "$HARNESS_FILTER" -q)
    if [[ -n $left || -n $nets ]]; then
        echo "[ci] harness containers/networks left behind:" >&2
        docker ps -a --filter "$HARNESS_FILTER" >&2
        docker network ls --filter "$HARNESS_FILTER" >&2
        LEFT_RC=1
        return 0
    fi
    log "no harness containers left"
}

phase "system packages" apt_packages
phase "docker engine" docker_engine
phase "python venv" python_venv
phase "images" images
phase "pytest" run_pytest "$@"
# ======== MOLECULE: add the molecule phase here (after pytest, before the leftover check),
# ======== e.g.  phase "molecule" run_molecule   (and fold its status into the exit below)
phase "leftover check" leftovers

log "total: $((SECONDS - T_START))s"
if ((PYTEST_RC != 0)); then
    echo "[ci] FAILED: pytest exit status $PYTEST_RC" >&2
    exit "$PYTEST_RC"
fi
((LEFT_RC == 0)) || die "harness containers/networks left behind"
log "OK"
