#!/usr/bin/env bash
# A one-machine HakuRiver cluster: Host + Runner on this machine, the embedded SQLite,
# a generated config (with a fresh admin token and runner token), and a sample task in a container.
#
#   bash scripts/quickstart.sh          bring the cluster up (or reuse it) and run a sample task
#   bash scripts/quickstart.sh status   whether the Host and the Runner run, and the nodes table
#   bash scripts/quickstart.sh stop     stop the Host and the Runner (running tasks keep running)
#   bash scripts/quickstart.sh --help   this text
#
# Everything lives in $HAKURIVER_QUICKSTART_DIR (default ~/.hakuriver/quickstart): config.toml,
# the database, shared/ (task logs), logs of both services. Ports: QS_HOST_PORT (8000),
# QS_RUNNER_PORT (8001). Runs on a fresh Debian 12 machine as root; needs no registry.
#
# The default environment is the local image hakuriver/hakuriver-base:base: python:3.12-slim
# pulled and tagged so, or offline the test suite's task image (Debian + python3, built with
# debootstrap). The Host uses that image as it is; the config's docker.initial_base_image
# (python:3.12-alpine) is pulled only where neither a tarball nor that tag exists. `stop`
# removes the tag again if the quickstart made it (the image itself stays).
# The man pages are linked into .venv/share/man/man1: with .venv/bin on PATH, `man
# hakuriver.task` finds them (an editable install, pip install -e, installs none).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
LOG_TAG=quickstart
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

QS=${HAKURIVER_QUICKSTART_DIR:-$HOME/.hakuriver/quickstart}
CONFIG=$QS/config.toml
ENV_NAME=hakuriver-base
ENV_IMAGE=hakuriver/$ENV_NAME:base
PUBLIC_IMAGE=python:3.12-slim
# Present when the quickstart tagged ENV_IMAGE itself, so that stop removes only its own tag.
TAG_MARKER=$QS/made-image-tag

usage() {
    # The comment block at the top of this file, without the '# '.
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

running() { # running SVC: true when SVC's pid file names a live process (its pid in $pid)
    [[ -f $QS/$1.pid ]] && pid=$(cat "$QS/$1.pid") && kill -0 "$pid" 2>/dev/null
}

stop() {
    local svc pid
    for svc in runner host; do
        if running "$svc"; then
            kill "$pid"
            log "stopped the $svc (pid $pid)"
        fi
        rm -f "$QS/$svc.pid"
    done
    if [[ -f $TAG_MARKER ]]; then
        # Only the tag: the image stays under its own name (python:3.12-slim or the test image).
        if docker rmi "$ENV_IMAGE" >/dev/null 2>&1; then
            log "removed the tag $ENV_IMAGE (the quickstart made it)"
        else
            log "kept the tag $ENV_IMAGE (in use, or already gone)"
        fi
        rm -f "$TAG_MARKER"
    fi
}

status() {
    # Looks only: starts nothing and installs nothing.
    local svc pid up=0
    for svc in host runner; do
        if running "$svc"; then
            log "$svc running (pid $pid, log $QS/$svc.log)"
            [[ $svc == host ]] && up=1
        else
            log "$svc not running"
        fi
    done
    if ((up)) && [[ -x $VENV/bin/hakuriver.client ]]; then
        "$VENV/bin/hakuriver.client" --config "$CONFIG" nodes || true
    fi
}

case ${1:-} in
    "") ;;
    -h | --help)
        usage
        exit 0
        ;;
    stop | status)
        (($# == 1)) || {
            echo "quickstart.sh: error: '$1' takes no arguments (see 'quickstart.sh --help')" >&2
            exit 2
        }
        "$1"
        exit 0
        ;;
    *)
        echo "quickstart.sh: error: unknown argument '$1' (see 'quickstart.sh --help')" >&2
        exit 2
        ;;
esac

environment_image() {
    if docker image inspect "$ENV_IMAGE" >/dev/null 2>&1; then
        log "environment image $ENV_IMAGE present"
        return
    fi
    # A normal machine pulls a small public Python image; an offline one builds a
    # Debian minbase + python3 image locally with debootstrap (about a minute).
    if docker pull -q "$PUBLIC_IMAGE" >/dev/null 2>&1; then
        docker tag "$PUBLIC_IMAGE" "$ENV_IMAGE"
        log "environment $ENV_NAME from $PUBLIC_IMAGE"
    else
        log "no registry reachable: building the environment image locally (the test suite's task image)"
        local tag
        tag=$("$VENV/bin/python" -c 'from tests.images import TASK_IMAGE; print(TASK_IMAGE)')
        "$VENV/bin/python" -m tests.images build --only task
        docker tag "$tag" "$ENV_IMAGE"
        log "environment $ENV_NAME from $tag"
    fi
    touch "$TAG_MARKER"
}

man_pages() {
    # pip install -e puts no data files (the man pages) into the venv; link the
    # committed pages there, so `man hakuriver.task` works with .venv/bin on PATH
    # (man-db looks in <dir>/../share/man for every <dir> on PATH).
    mkdir -p "$VENV/share/man/man1"
    ln -sf "$ROOT"/man/*.1 "$VENV/share/man/man1/"
    log "man pages linked into $VENV/share/man/man1"
}

write_config() {
    mkdir -p "$QS/shared" "$QS/local_temp"
    if [[ -f $CONFIG ]]; then
        log "using $CONFIG"
        return
    fi
    "$VENV/bin/hakuriver.init" config --output "$CONFIG" \
        --host-bind-ip 127.0.0.1 --host-address 127.0.0.1 --host-port "${QS_HOST_PORT:-8000}" \
        --runner-address 127.0.0.1 --runner-port "${QS_RUNNER_PORT:-8001}" \
        --shared-dir "$QS/shared" --local-temp-dir "$QS/local_temp" --db-file "$QS/hakuriver.db" >/dev/null
    log "wrote $CONFIG (mode 0600, a fresh admin token and runner token)"
}

start_service() {
    local svc=$1 pid
    if [[ -f $QS/$svc.pid ]] && pid=$(cat "$QS/$svc.pid") && kill -0 "$pid" 2>/dev/null; then
        log "$svc already running (pid $pid)"
        return
    fi
    setsid "$VENV/bin/python" -m "hakuriver.cli.$svc" --config "$CONFIG" >>"$QS/$svc.log" 2>&1 </dev/null &
    echo $! >"$QS/$svc.pid"
    log "started the $svc (pid $!, log $QS/$svc.log)"
}

wait_for() {
    local what=$1 svc=$2
    shift 2
    local deadline=$((SECONDS + 60))
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$(cat "$QS/$svc.pid")" 2>/dev/null; then
            tail -n 20 "$QS/$svc.log" >&2
            die "the $svc exited; see $QS/$svc.log"
        fi
        ((SECONDS < deadline)) || die "timed out waiting for $what; see $QS/$svc.log"
        sleep 0.5  # polling with a deadline
    done
}

node_online() {
    "$VENV/bin/hakuriver.client" --config "$CONFIG" nodes --json \
        | "$VENV/bin/python" -c 'import json, sys; sys.exit(not any(n["online"] for n in json.load(sys.stdin)["nodes"]))'
}

phase "system packages" apt_packages
phase "docker engine" docker_engine
phase "python venv" python_venv
phase "man pages" man_pages
mkdir -p "$QS"
phase "environment image" environment_image
phase "config" write_config
start_service host
wait_for "the Host" host "$VENV/bin/hakuriver.client" --config "$CONFIG" health
start_service runner
wait_for "the Runner to register" runner node_online

log "submitting a sample task"
SUBMITTED=$("$VENV/bin/hakuriver.task" --config "$CONFIG" submit --cores 1 --memory 256M --wait -- \
    python3 -c 'import platform, sys; print(f"Hello from HakuRiver: Python {sys.version.split()[0]} in a container on {platform.node()}")')
TASK_ID=${SUBMITTED%%$'\n'*}
echo
"$VENV/bin/hakuriver.client" --config "$CONFIG" nodes
echo
"$VENV/bin/hakuriver.task" --config "$CONFIG" status "$TASK_ID"
echo
echo "--- output of task $TASK_ID:"
"$VENV/bin/hakuriver.task" --config "$CONFIG" logs "$TASK_ID"
cat <<EOF

The cluster keeps running. Try:
  export HAKURIVER_CONFIG=$CONFIG PATH=$VENV/bin:\$PATH
  hakuriver.task submit --cores 1 --memory 512M --wait -- python3 -c 'print(6 * 7)'
  hakuriver.task list
  hakuriver.admin user add alice      # a lab member with their own token
  man hakuriver.task                  # every command has a man page (or: man -l man/hakuriver.task.1)
See it with: bash scripts/quickstart.sh status
Stop it with: bash scripts/quickstart.sh stop
EOF
