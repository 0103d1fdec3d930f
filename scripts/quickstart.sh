#!/usr/bin/env bash
# A one-machine HakuRiver cluster: Host + Runner on this machine, the embedded SQLite,
# a generated config (with a fresh admin token and runner token), and a sample task in a container.
#
#   bash scripts/quickstart.sh          bring the cluster up (or reuse it) and run a sample task
#   bash scripts/quickstart.sh stop     stop the Host and the Runner (running tasks keep running)
#
# Everything lives in $HAKURIVER_QUICKSTART_DIR (default ~/.hakuriver/quickstart): config.toml,
# the database, shared/ (task logs), logs of both services. Ports: QS_HOST_PORT (8000),
# QS_RUNNER_PORT (8001). Runs on a fresh Debian 12 machine as root; needs no registry.
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

stop() {
    local svc pid
    for svc in runner host; do
        if [[ -f $QS/$svc.pid ]] && pid=$(cat "$QS/$svc.pid") && kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            log "stopped the $svc (pid $pid)"
        fi
        rm -f "$QS/$svc.pid"
    done
}

if [[ ${1:-} == stop ]]; then
    stop
    exit 0
fi

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
        log "no registry reachable: building the environment image locally"
        local tag
        tag=$("$VENV/bin/python" -c 'from tests.images import TASK_IMAGE; print(TASK_IMAGE)')
        "$VENV/bin/python" -m tests.images build --only task
        docker tag "$tag" "$ENV_IMAGE"
    fi
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
Stop it with: bash scripts/quickstart.sh stop
EOF
