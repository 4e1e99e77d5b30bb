#!/usr/bin/env bash
# Runs the webhook's fuzz targets (webhook/fuzz) for SECONDS in total (default 60), split
# between them; each starts from its seeds (the golden review in webhook/tests/fixtures, the
# annotation seeds in webhook/fuzz/seeds) plus what earlier runs left in webhook/fuzz/corpus.
# A finding stops the run with the crashing input in webhook/fuzz/artifacts/. cargo-fuzz
# needs nightly flags: RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$0")/../webhook/fuzz"
seconds=${1:-60}
targets=(review annotations)
per_target=$(( seconds / ${#targets[@]} ))
mkdir -p corpus/review corpus/annotations
cp ../tests/fixtures/*.json corpus/review/
cp seeds/annotations/* corpus/annotations/
export RUSTC_BOOTSTRAP=1
mkdir -p target
# The instrumented release build is the long part the first time (minutes); cargo shows it.
echo "==> cargo fuzz build --release (the fuzz targets with libFuzzer; minutes the first time)"
cargo fuzz build --release
for target in "${targets[@]}"; do
  echo "==> cargo fuzz run $target (${per_target}s)"
  log="target/fuzz-$target.log"
  if ! cargo fuzz run --release "$target" "corpus/$target" -- \
    -max_total_time="$per_target" -max_len=65536 -print_final_stats=1 > "$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed (a finding is in webhook/fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E '^Done|stat::number_of_executed_units|stat::peak_rss_mb' "$log"
done
