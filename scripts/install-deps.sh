#!/usr/bin/env bash
# Installs the Debian packages Pylon builds, tests and benchmarks with. Idempotent.
set -euo pipefail
# golang-go: Go's text/template, the engine Helm renders charts with (scripts/render-chart.sh).
packages=(redis-server redis-tools nutcracker librdkafka-dev libhiredis-dev curl libcurl4-openssl-dev golang-go)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Kafka-protocol broker the tests and `make run` use (a Rust broker in a wheel; see README).
if ! command -v noida-db >/dev/null; then
  echo "installing: noida-db (pip)"
  python3 -m pip install -q --disable-pip-version-check noida-db==0.2.3 \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages noida-db==0.2.3
fi
# redis-py, the current release: the client-compatibility tests run it with its default settings.
if ! python3 -c 'import redis, sys; sys.exit(redis.__version__ != "8.1.0")' 2>/dev/null; then
  echo "installing: redis-py 8.1.0 (pip)"
  python3 -m pip install -q --disable-pip-version-check redis==8.1.0 \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages redis==8.1.0
fi
# PyYAML: the chart's values.yaml read by scripts/render-chart.sh.
if ! python3 -c "import yaml" 2>/dev/null; then
  echo "installing: pyyaml (pip)"
  python3 -m pip install -q --disable-pip-version-check pyyaml \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages pyyaml
fi
# Debian starts a system redis-server on 6379 after installing; Pylon's scripts use their own ports.
command -v swift >/dev/null || { echo "swift (6.1 or newer) is required: https://swift.org/install" >&2; exit 1; }
