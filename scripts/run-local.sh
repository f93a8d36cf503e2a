#!/usr/bin/env bash
# Pylon's main job on one machine, as far as it goes today: a local Redis (the rack's Redis) and
# a pylon-sidecar in front of it, on fixed ports. Talk to the sidecar with redis-cli; Ctrl-C stops all.
#   REDIS_PORT=6400 SIDECAR_PORT=6380 ADMIN_PORT=9480 scripts/run-local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REDIS_PORT=${REDIS_PORT:-6400}
SIDECAR_PORT=${SIDECAR_PORT:-6380}
ADMIN_PORT=${ADMIN_PORT:-9480}
BIN=.build/release/pylon-sidecar
[ -x "$BIN" ] || swift build -c release
source scripts/lib.sh
trap 'echo; echo "stopping…"; stop_tracked' INT TERM

for port in "$REDIS_PORT" "$SIDECAR_PORT" "$ADMIN_PORT"; do
  if port_open "$port"; then echo "port $port is in use; set REDIS_PORT/SIDECAR_PORT/ADMIN_PORT" >&2; exit 1; fi
done
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" --logfile "$WORK/redis.log" &
track $!
wait_port "$REDIS_PORT"
redis-cli -p "$REDIS_PORT" set greeting "hello from the rack's redis" > /dev/null
"$BIN" --listen "127.0.0.1:$SIDECAR_PORT" --admin "127.0.0.1:$ADMIN_PORT" --redis "redis://127.0.0.1:$REDIS_PORT" --rack local-a &
track $!
wait_port "$SIDECAR_PORT"

cat <<TXT

  rack local-a:  redis-server on 127.0.0.1:$REDIS_PORT, pylon-sidecar on 127.0.0.1:$SIDECAR_PORT

  redis-cli -p $SIDECAR_PORT GET greeting        # a read, served by the local Redis
  redis-cli -p $SIDECAR_PORT PYLON INFO          # the sidecar's own view
  redis-cli -p $SIDECAR_PORT SET k v             # a write: refused until a world (Kafka) is configured
  curl -s 127.0.0.1:$ADMIN_PORT/metrics          # Prometheus metrics; also /healthz and /readyz

  Ctrl-C stops everything.
TXT
wait
