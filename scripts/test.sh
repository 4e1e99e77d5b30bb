#!/usr/bin/env bash
# README's second command (and what CI runs): installs what the tests need when it is
# missing (s3s-fs, Garage, Prometheus, kubernetes-validate, the AWS CLI; idempotent, quick
# when present) and runs every test in the workspace, then the README's first command.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/install-test-deps.sh --print-env)"

echo "==> cargo build (workspace binaries the tests run)"
cargo build --locked --workspace --bins

echo "==> cargo nextest run --workspace"
cargo nextest run --locked --workspace --no-fail-fast

echo "==> README's first command: scripts/local-run.sh --seconds 3"
scripts/local-run.sh --seconds 3 --dir target/wave-local-check --metrics-port 0
