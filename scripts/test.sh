#!/usr/bin/env bash
# README's second command (and what CI runs): installs what the tests need when it is
# missing (s3s-fs, Garage, Prometheus, kubernetes-validate, the AWS CLI; idempotent, quick
# when present), runs README's first command briefly so it cannot rot, then every test in
# the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> scripts/install-test-deps.sh (the test servers and tools; seconds when installed, about 35 minutes on a fresh machine)"
eval "$(scripts/install-test-deps.sh --print-env)"

echo "==> cargo build (the workspace binaries the tests run)"
cargo build --locked --workspace --bins

echo "==> README's first command: scripts/local-run.sh --seconds 3"
scripts/local-run.sh --seconds 3 --dir target/wave-local-check --metrics-port 0 > target/wave-local-check.log 2>&1 || {
  cat target/wave-local-check.log
  exit 1
}
tail -n 12 target/wave-local-check.log
# The local wave ends with the test's report: 3 machines seen, every agent succeeded, and
# the HTML page written.
grep -q "3 seen of 3" target/wave-local-check.log
grep -q "agents    30 (30 succeeded, 0 failed" target/wave-local-check.log
grep -q "latency_ms{endpoint=\"login\"}" target/wave-local-check.log
test -s target/wave-local-check/report.html

echo "==> scripts/fuzz.sh 60 (the webhook's fuzz targets, briefly, so they cannot rot)"
scripts/fuzz.sh 60

echo "==> cargo nextest run --workspace"
cargo nextest run --locked --workspace --no-fail-fast
