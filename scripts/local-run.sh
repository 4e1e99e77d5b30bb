#!/usr/bin/env bash
# README's first command: builds wave and runs a small wave test locally on file:// stores
# (no cluster, no cloud): 3 machines × 10 agents × 100 players of the example game client
# against a local stand-in game backend, then prints the `wave report` of the test.
# Extra arguments go to wave-local (see `target/debug/wave-local --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> cargo build (wave-webhook, wave-agent, wave, wave-local; about 6 minutes the first time, seconds after)" >&2
cargo build --locked --bin wave-webhook --bin wave-agent --bin wave --bin wave-local
exec target/debug/wave-local "$@"
