#!/usr/bin/env bash
# Installs the real servers and checkers wave's tests run against, into one tools folder
# ($WAVE_TOOLS_DIR, default ~/.cache/wave-tools). Idempotent: each step is skipped when its
# result is already present, so a second run takes a second or two. Every step that does
# work says so first, with what it costs on a fresh 2-core machine. Prints `export` lines
# for the caller with --print-env.
set -euo pipefail

TOOLS="${WAVE_TOOLS_DIR:-$HOME/.cache/wave-tools}"
S3S_FS_VERSION=0.14.1
GARAGE_VERSION=2.5.0
STATSD_VERSION=0.9.0
mkdir -p "$TOOLS/bin"

log() { printf '[install-test-deps] %s\n' "$*" >&2; }

cargo_tool() { # name version binary minutes [extra cargo args...]
  local name=$1 version=$2 bin=$3 minutes=$4; shift 4
  local stamp="$TOOLS/.$name-$version"
  if [[ -x "$TOOLS/bin/$bin" && -f "$stamp" ]]; then return; fi
  log "cargo install $name@$version (one-time build, about $minutes min on 2 cores; cargo prints its progress)"
  cargo install "$name@$version" --locked --root "$TOOLS" "$@" >&2
  touch "$stamp"
}

# apt-get as root, or through sudo.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

apt_tool() { # binary package
  command -v "$1" >/dev/null 2>&1 && return
  if [[ ! -f "$TOOLS/.apt-updated" ]]; then
    log "apt-get update (system-wide, needs root or sudo)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    touch "$TOOLS/.apt-updated"
  fi
  log "apt-get install $2 (system-wide, about a minute)"
  # A package's service (Prometheus's) is not started: policy-rc.d answers "not now" to
  # invoke-rc.d, Debian's own switch for this; the tests start their own servers. On a
  # systemd host the unit stays installed and enabled, so it starts at the next boot
  # (`systemctl disable prometheus` turns that off).
  local policy=/usr/sbin/policy-rc.d added=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    added=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >&2
  if [[ -n $added ]]; then as_root rm -f "$policy"; fi
}

pip_tools() { # the StatsD clients statsd and datadog are the ingest tests' real senders
  local venv="$TOOLS/venv"
  if [[ -x "$venv/bin/kubernetes-validate" && -x "$venv/bin/aws" ]] \
    && "$venv/bin/python3" -c 'import statsd, datadog' 2>/dev/null; then return; fi
  log "pip install kubernetes-validate awscli statsd datadog into $venv (about a minute)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate awscli 'statsd==4.0.*' 'datadog==0.56.*' >&2
}

npm_statsd() { # Etsy's StatsD daemon, the reference the ingest benchmark compares with
  local dir="$TOOLS/statsd"
  if [[ -f "$dir/node_modules/statsd/stats.js" ]]; then return; fi
  log "npm install statsd@$STATSD_VERSION (Etsy's daemon, under a minute)"
  mkdir -p "$dir"
  npm install --silent --prefix "$dir" "statsd@$STATSD_VERSION" >&2
}

cargo_tool s3s-fs "$S3S_FS_VERSION" s3s-fs 5 --features binary
cargo_tool garage "$GARAGE_VERSION" garage 22
apt_tool prometheus prometheus
apt_tool chromium chromium
command -v node >/dev/null 2>&1 || apt_tool node nodejs
command -v npm >/dev/null 2>&1 || apt_tool npm npm
npm_statsd
pip_tools
command -v cargo-nextest >/dev/null 2>&1 || cargo_tool cargo-nextest 0.9.143 cargo-nextest 6
# The webhook's fuzz targets (webhook/fuzz): libFuzzer through cargo-fuzz.
cargo_tool cargo-fuzz 0.13.2 cargo-fuzz 2

if [[ "${1:-}" == "--print-env" ]]; then
  echo "export PATH=\"$TOOLS/bin:$TOOLS/venv/bin:\$PATH\""
fi
log "ready in $TOOLS"
