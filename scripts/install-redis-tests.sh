#!/usr/bin/env bash
# Redis's own Tcl test suite, from Debian bookworm's `redis` source package (the release of the
# redis-server Pylon is tested with), unpacked once into a cache outside the repository, and
# tclsh to run it. Idempotent: prints the suite's directory (it holds tests/test_helper.tcl).
#   PYLON_CACHE (default ~/.cache/pylon) holds redis-tests-<version>/.
set -euo pipefail
CACHE=${PYLON_CACHE:-$HOME/.cache/pylon}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
dpkg-query -W -f='${Status}' tcl 2>/dev/null | grep -q "install ok installed" \
  || { $SUDO apt-get update -qq; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq tcl >/dev/null; }
version=$(redis-server --version | sed -E 's/.*v=([0-9.]+).*/\1/')
suite=$CACHE/redis-tests-$version
if [ ! -f "$suite/tests/test_helper.tcl" ]; then
  source "$(dirname "$0")/deb-src.sh"
  scratch=$(mktemp -d /tmp/pylon-redis-src.XXXXXX)
  trap 'rm -rf "$scratch"' EXIT
  # The upstream tarball of the source package is the release redis-server reports.
  (cd "$scratch" && apt-get source -qq --download-only redis >/dev/null 2>&1 && tar xzf "redis_$version.orig.tar.gz")
  mkdir -p "$suite"
  cp -r "$scratch"/redis-*/tests "$suite/"
  # The suite's helpers expect the source tree's layout (utils/, src/ for local servers only).
  mkdir -p "$suite/src" "$suite/utils"
fi
echo "$suite"
