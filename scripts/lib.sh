# Shared steps for scripts/test.sh and scripts/quickstart.sh (sourced, not run).
# Each step is idempotent: on a machine that already has what it needs, it does nothing.
# Expects ROOT (repo root) and PY (python >= 3.11) to be set by the caller.

VENV="$ROOT/.venv"
DOCKERD_LOG=/var/log/hakuriver-dockerd.log

log() { echo "[${LOG_TAG:-hakuriver}] $*"; }
die() { echo "[${LOG_TAG:-hakuriver}] ERROR: $*" >&2; exit 1; }

# phase NAME FUNCTION [ARGS]: run FUNCTION, print how long it took.
phase() {
    local name=$1 t0=$SECONDS
    shift
    log "--- $name"
    "$@"
    log "$name: $((SECONDS - t0))s"
}

# debs WHAT PACKAGE...: install the Debian packages that are missing (as root).
debs() {
    local what=$1 missing=() p
    shift
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "$what present"
        return
    fi
    [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}) and not root to install them"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
}

apt_packages() {
    debs "system packages" docker.io debootstrap numactl sudo iproute2 procps tar ca-certificates \
        python3 python3-venv
}

# The dashboard's browser tests (tests/browser/) drive Debian's headless chromium
# through its chromedriver; without them those tests skip. Tests only: not a
# dependency of a HakuRiver node.
browser_packages() {
    debs "browser packages" chromium chromium-driver
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

# python_venv [EXTRAS]: .venv with the project installed (editable), e.g. python_venv test.
python_venv() {
    local extras=${1:-}
    local spec="."
    [[ -n $extras ]] && spec=".[$extras]"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PY is $("$PY" -V 2>&1); need Python >= 3.11 (set PYTHON=...)"
    # A venv whose interpreter vanished or is too old is recreated.
    if [[ -d $VENV ]] && ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        log "recreating broken/old $VENV"
        rm -rf "$VENV"
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        # Debian splits ensurepip out; the fast check may run before the apt phase.
        if ! "$PY" -c 'import ensurepip' 2>/dev/null; then
            [[ $EUID -eq 0 ]] || die "$PY has no venv support: apt-get install python3-venv (as root)"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        fi
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.hakuriver-install-stamp" want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1) extras=$extras"
    # An install with extras also serves a plain one (the runtime is the same).
    if [[ -f $stamp ]] && { [[ $(cat "$stamp") == "$want" ]] \
            || [[ -z $extras && $(cat "$stamp") == "${want% extras=*} extras="* ]]; }; then
        log "venv up to date (pyproject.toml unchanged)"
        return
    fi
    log "pip install -e '$spec' (log: $VENV/pip-install.log)"
    rm -f "$stamp"
    if ! "$VENV/bin/python" -m pip install -e "$spec" >"$VENV/pip-install.log" 2>&1; then
        tail -n 40 "$VENV/pip-install.log" >&2
        die "pip install failed"
    fi
    echo "$want" >"$stamp"
}

