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
#   5. runs pytest, then ansible-lint, yamllint and the molecule scenarios (HAKURIVER_MOLECULE=0
#      skips those), then checks that no harness container is left behind
# Environment: PYTHON (interpreter for the venv, default python3, must be >= 3.11).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
LOG_TAG=ci
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
T_START=$SECONDS
# This run's id: the harness and the molecule nodes label what they make with
# it, and the leftover check counts only that (a developer's own containers on
# the same engine never fail CI).
export HAKURIVER_CI_RUN=${HAKURIVER_CI_RUN:-ci-$(date +%s)-$$}
RUN_STARTED=$(date +%s)

images() {
    "$VENV/bin/python" -m tests.images build
}

PYTEST_RC=0
run_pytest() {
    set +e
    # The browser phase installed chromium: a browser test that skips would hide a gap.
    HAKURIVER_REQUIRE_BROWSER=1 "$VENV/bin/python" -m pytest "$@"
    PYTEST_RC=$?
    set -e
    log "pytest exit status: $PYTEST_RC"
}

# Molecule phase: lint the Ansible content, then each molecule scenario (molecule/)
# on systemd nodes from the harness images. HAKURIVER_MOLECULE=0 skips it.
MOLECULE_RC=0
run_molecule() {
    if [[ ${HAKURIVER_MOLECULE:-1} == 0 ]]; then
        log "molecule skipped (HAKURIVER_MOLECULE=0)"
        return 0
    fi
    local name tag scenario t0 rc
    # molecule runs ansible-config, ansible-playbook, ... from PATH.
    export PATH="$VENV/bin:$PATH" ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
    # The harness image tags are content hashes: molecule.yml reads them from here.
    while IFS='=' read -r name tag; do
        case $name in
            task) export HAKURIVER_TASK_IMAGE=$tag ;;
            node) export HAKURIVER_NODE_IMAGE=$tag ;;
            node-docker) export HAKURIVER_NODE_DOCKER_IMAGE=$tag ;;
        esac
    done < <("$VENV/bin/python" -m tests.images tags)
    set +e
    t0=$SECONDS
    yamllint roles ansible molecule ansible/group_vars/all.yml.example .ansible-lint .yamllint
    rc=$?
    log "yamllint: exit $rc ($((SECONDS - t0))s)"
    ((rc == 0)) || MOLECULE_RC=$rc
    t0=$SECONDS
    ansible-lint --nocolor
    rc=$?
    log "ansible-lint: exit $rc ($((SECONDS - t0))s)"
    ((rc == 0)) || MOLECULE_RC=$rc
    for scenario in check default; do
        t0=$SECONDS
        molecule test --scenario-name "$scenario"
        rc=$?
        log "molecule scenario $scenario: exit $rc, wall time $((SECONDS - t0))s"
        ((rc == 0)) || MOLECULE_RC=$rc
    done
    set -e
    log "molecule exit status: $MOLECULE_RC"
}

LEFT_RC=0
leftovers() {
    if ! "$VENV/bin/python" -m tests.harness.leftovers "$HAKURIVER_CI_RUN" "$RUN_STARTED"; then
        LEFT_RC=1
        return 0
    fi
    log "no containers or networks left by this run ($HAKURIVER_CI_RUN)"
}

phase "system packages" apt_packages
phase "browser packages" browser_packages
phase "docker engine" docker_engine
phase "python venv" python_venv test
phase "images" images
phase "pytest" run_pytest "$@"
phase "molecule" run_molecule
phase "leftover check" leftovers

log "total: $((SECONDS - T_START))s"
if ((PYTEST_RC != 0)); then
    echo "[ci] FAILED: pytest exit status $PYTEST_RC" >&2
    exit "$PYTEST_RC"
fi
if ((MOLECULE_RC != 0)); then
    echo "[ci] FAILED: molecule/lint exit status $MOLECULE_RC" >&2
    exit "$MOLECULE_RC"
fi
((LEFT_RC == 0)) || die "harness containers/networks left behind"
log "OK"
