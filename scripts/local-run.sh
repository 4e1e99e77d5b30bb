#!/usr/bin/env bash
# README's first command: builds wave and runs one wave test machine locally on file://
# stores (no cluster, no cloud): 10 agents × 100 players of the example script.
# Extra arguments go to wave-local (see `target/debug/wave-local --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --quiet --bin wave-webhook --bin wave-agent --bin wave-local
exec target/debug/wave-local "$@"
