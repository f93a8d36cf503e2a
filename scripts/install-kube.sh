#!/usr/bin/env bash
# Builds a real kube-apiserver and kube-controller-manager (v1.20.2) from Debian bookworm's
# `kubernetes` source package, once, into a cache outside the repository, and installs etcd:
# the control plane the operator's tests run against. Idempotent: prints the cache directory.
#   PYLON_CACHE (default ~/.cache/pylon) holds kubernetes-v1.20.2/{kube-apiserver,kube-controller-manager}.
# A cold build takes ~5 minutes on 2 cores and ~2.5 GB of scratch space, deleted afterwards.
set -euo pipefail
VERSION=v1.20.2
CACHE=${PYLON_CACHE:-$HOME/.cache/pylon}/kubernetes-$VERSION
if [ -x "$CACHE/kube-apiserver" ] && [ -x "$CACHE/kube-controller-manager" ] && command -v etcd >/dev/null; then
  echo "$CACHE"
  exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

# Debian's source packages: a deb-src entry beside the binary one.
source "$(dirname "$0")/deb-src.sh"
packages=(golang-go rsync jq golang-github-modern-go-reflect2-dev etcd-server dpkg-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian starts etcd as a service on 2379 after installing it; the tests run their own.
$SUDO systemctl disable --now etcd >/dev/null 2>&1 || true

if [ ! -x "$CACHE/kube-apiserver" ] || [ ! -x "$CACHE/kube-controller-manager" ]; then
  scratch=$(mktemp -d /tmp/pylon-kube.XXXXXX)
  trap 'chmod -R u+w "$scratch" 2>/dev/null; rm -rf "$scratch"' EXIT
  echo "building kube-apiserver $VERSION from Debian's kubernetes source package (~5 min) in $scratch" >&2
  (cd "$scratch" && apt-get source -qq --download-only kubernetes >/dev/null && dpkg-source -x --skip-patches kubernetes_*.dsc tree >/dev/null)
  tree=$scratch/tree
  # The vendored reflect2 1.0.1 crashes Go 1.19 ("fatal error: fault") on the first custom-resource
  # create; Debian's 1.0.2 does not.
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
  rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod"
  mkdir -p "$scratch/gopath/src/k8s.io"
  ln -s "$tree" "$scratch/gopath/src/k8s.io/kubernetes"
  (cd "$scratch/gopath/src/k8s.io/kubernetes" && GOPATH=$scratch/gopath GO111MODULE=off GOFLAGS=-mod=vendor CGO_ENABLED=0 \
    GOCACHE=$scratch/gocache KUBE_GIT_VERSION=$VERSION KUBE_GIT_TREE_STATE=clean \
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$scratch/build.log" 2>&1) \
    || { tail -30 "$scratch/build.log" >&2; exit 1; }
  mkdir -p "$CACHE"
  cp "$tree"/_output/local/bin/linux/*/kube-apiserver "$tree"/_output/local/bin/linux/*/kube-controller-manager "$CACHE/"
fi
echo "$CACHE"
