#!/usr/bin/env bash
# Installs the real servers and checkers wave's tests run against, into one tools folder.
# Idempotent: each step is skipped when its result is already present, so a second run
# takes a second or two. Prints `export` lines for the caller with --print-env.
set -euo pipefail

TOOLS="${WAVE_TOOLS_DIR:-$HOME/.cache/wave-tools}"
S3S_FS_VERSION=0.14.1
GARAGE_VERSION=2.5.0
STATSD_VERSION=0.9.0
mkdir -p "$TOOLS/bin"

log() { printf '[install-test-deps] %s\n' "$*" >&2; }

cargo_tool() { # name version binary [extra cargo args...]
  local name=$1 version=$2 bin=$3; shift 3
  local stamp="$TOOLS/.$name-$version"
  if [[ -x "$TOOLS/bin/$bin" && -f "$stamp" ]]; then return; fi
  log "cargo install $name@$version (one-time build)"
  cargo install "$name@$version" --locked --root "$TOOLS" "$@" >&2
  touch "$stamp"
}

apt_tool() { # binary package
  command -v "$1" >/dev/null 2>&1 && return
  log "apt-get install $2"
  if [[ ! -f "$TOOLS/.apt-updated" ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    touch "$TOOLS/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >&2
}

pip_tools() { # the StatsD clients statsd and datadog are the ingest tests' real senders
  local venv="$TOOLS/venv"
  if [[ -x "$venv/bin/kubernetes-validate" && -x "$venv/bin/aws" ]] \
    && "$venv/bin/python3" -c 'import statsd, datadog' 2>/dev/null; then return; fi
  log "pip install kubernetes-validate awscli statsd datadog"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate awscli 'statsd==4.0.*' 'datadog==0.56.*' >&2
}

npm_statsd() { # Etsy's StatsD daemon, the reference the ingest benchmark compares with
  local dir="$TOOLS/statsd"
  if [[ -f "$dir/node_modules/statsd/stats.js" ]]; then return; fi
  log "npm install statsd@$STATSD_VERSION"
  mkdir -p "$dir"
  npm install --silent --prefix "$dir" "statsd@$STATSD_VERSION" >&2
}

cargo_tool s3s-fs "$S3S_FS_VERSION" s3s-fs --features binary
cargo_tool garage "$GARAGE_VERSION" garage
apt_tool prometheus prometheus
apt_tool chromium chromium
command -v node >/dev/null 2>&1 || apt_tool node nodejs
command -v npm >/dev/null 2>&1 || apt_tool npm npm
npm_statsd
pip_tools
command -v cargo-nextest >/dev/null 2>&1 || cargo_tool cargo-nextest 0.9.143 cargo-nextest
# The webhook's fuzz targets (webhook/fuzz): libFuzzer through cargo-fuzz.
cargo_tool cargo-fuzz 0.13.2 cargo-fuzz

if [[ "${1:-}" == "--print-env" ]]; then
  echo "export PATH=\"$TOOLS/bin:$TOOLS/venv/bin:\$PATH\""
fi
log "ready in $TOOLS"
