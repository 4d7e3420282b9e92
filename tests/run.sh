#!/usr/bin/env bash
# Runs every test: builds the test control plane if needed, starts it for this run, runs `cargo test` (unit and
# integration tests, the CRD drift check included) against it, and stops it again, whatever the outcome.
# A failing integration test names the control plane's log folder; it is kept after the run.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

export TESTENV_DIR=${TESTENV_DIR:-$repo/.testenv/test-run}
bash tests/testenv/testenv.sh down >/dev/null 2>&1 || true
trap 'bash tests/testenv/testenv.sh down >/dev/null 2>&1 || true' EXIT
bash tests/testenv/testenv.sh up --with-kwok >/dev/null
export TESTENV_KUBECONFIG=$TESTENV_DIR/kubeconfig
echo "tests/run.sh: control plane up; logs in $TESTENV_DIR/logs" >&2
cargo test --locked --no-fail-fast "$@"
