#!/usr/bin/env bash
# Makes sure apt knows Debian bookworm's source packages (a deb-src entry beside the binary
# one), for `apt-get source`. Idempotent. Sourced by install-kube.sh and install-redis-tests.sh.
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "adding deb-src entries for bookworm" >&2
  $SUDO tee /etc/apt/sources.list.d/pylon-deb-src.sources >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  $SUDO apt-get update -qq
fi
