# Pylon — build, test, run and benchmark. Every target installs what it needs (see `deps`).
SHELL := /bin/bash
SWIFT ?= swift
CONFIG ?= debug

.PHONY: deps kube redis-tests build release test unit-test integration-test run bench compat manifests chart images clean

## deps: install the Debian packages Pylon needs (idempotent; skips what is installed)
deps:
	@scripts/install-deps.sh

## kube: a real kube-apiserver + etcd for the operator's tests (built once from Debian's source
## package into ~/.cache/pylon; ~5 minutes the first time)
kube: deps
	@scripts/install-kube.sh > /dev/null

## redis-tests: Redis's own Tcl test suite from Debian's redis source package (into ~/.cache/pylon)
redis-tests: deps
	@scripts/install-redis-tests.sh > /dev/null

## build: debug build of every target
build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

## test: the whole suite — unit tests and integration tests against real redis-server, broker and
## kube-apiserver processes
test: deps kube redis-tests
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --no-parallel

## run: the main job on one machine (a Kafka-protocol broker and two racks, each a Redis with a sidecar)
run: release
	@scripts/run-local.sh

## bench: redis-benchmark against direct Redis, twemproxy and pylon-sidecar, side by side:
## the read path, the write path (SET, replication lag, catch-up), the consistency levels, the
## clustering layer, the operator, catch-up from a snapshot
bench: release
	@scripts/bench.sh
	@scripts/bench-writes.sh
	@scripts/bench-consistency.sh
	@scripts/bench-world.sh
	@scripts/bench-operator.sh
	@scripts/bench-snapshot.sh

## compat: Redis's own test suite against redis-server and through a sidecar, side by side (about
## 20 minutes); fails on a failure the README does not list
compat: release redis-tests
	@scripts/compat.sh

## manifests: render charts/pylon into manifests/ (rbac, operator, webhook, and pylon.yaml — what
## `kubectl apply -f manifests/` installs)
manifests: deps
	@scripts/manifests.sh

## chart: print charts/pylon rendered (`helm template` without helm); VALUES=file.yaml to override
chart: deps
	@scripts/render-chart.sh $(VALUES)

## images: the sidecar and operator images (needs a Docker engine, which this machine lacks)
IMAGE_PREFIX ?= ghcr.io/pylon
IMAGE_TAG ?= latest
images:
	docker build --target sidecar -t $(IMAGE_PREFIX)/pylon-sidecar:$(IMAGE_TAG) .
	docker build --target operator -t $(IMAGE_PREFIX)/pylon-operator:$(IMAGE_TAG) .

clean:
	rm -rf .build
