#!/usr/bin/env bash
# Pylon's main job on one machine: a local world of one Kafka-protocol broker (noida-db) and two
# racks, each a redis-server with a pylon-sidecar in front of it, on fixed ports. Write through
# one rack, read through the other with redis-cli; Ctrl-C stops everything.
#   KAFKA_PORT=9092 RACK_A_PORT=6381 RACK_B_PORT=6382 scripts/run-local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KAFKA_PORT=${KAFKA_PORT:-9092}
RACK_A_PORT=${RACK_A_PORT:-6381}
RACK_B_PORT=${RACK_B_PORT:-6382}
WORLD=${WORLD:-local}
BIN=${BIN:-.build/release/pylon-sidecar}
[ -x "$BIN" ] || swift build -c release
source scripts/lib.sh
trap 'echo; echo "stopping…"; stop_tracked' INT TERM

# Each rack N uses: sidecar on its port, its Redis on port+20, its admin endpoint on port+3100.
for port in "$KAFKA_PORT" "$RACK_A_PORT" "$RACK_B_PORT" $((RACK_A_PORT + 20)) $((RACK_B_PORT + 20)) $((RACK_A_PORT + 3100)) $((RACK_B_PORT + 3100)); do
  if port_open "$port"; then echo "port $port is in use; set KAFKA_PORT/RACK_A_PORT/RACK_B_PORT" >&2; exit 1; fi
done

start_broker "$KAFKA_PORT"

start_rack() {  # name, sidecar port, the other rack's sidecar port (its peer)
  local name=$1 port=$2 peer=$3
  start_redis $((port + 20))
  "$BIN" --listen "127.0.0.1:$port" --admin "127.0.0.1:$((port + 3100))" --redis "redis://127.0.0.1:$((port + 20))" \
    --kafka-brokers "127.0.0.1:$KAFKA_PORT" --world "$WORLD" --rack "$name" --peers "127.0.0.1:$peer" > "$WORK/sidecar-$name.log" 2>&1 &
  track $!
  wait_port "$port"
}
start_rack a "$RACK_A_PORT" "$RACK_B_PORT"
start_rack b "$RACK_B_PORT" "$RACK_A_PORT"

cat <<TXT

  world "$WORLD": Kafka-protocol broker (noida-db) on 127.0.0.1:$KAFKA_PORT, topic pylon.$WORLD.ops
  rack a: pylon-sidecar 127.0.0.1:$RACK_A_PORT -> redis-server 127.0.0.1:$((RACK_A_PORT + 20)), admin 127.0.0.1:$((RACK_A_PORT + 3100))
  rack b: pylon-sidecar 127.0.0.1:$RACK_B_PORT -> redis-server 127.0.0.1:$((RACK_B_PORT + 20)), admin 127.0.0.1:$((RACK_B_PORT + 3100))

  redis-cli -p $RACK_A_PORT SET greeting hello     # a write: in Kafka, applied by rack a, Redis's reply
  redis-cli -p $RACK_B_PORT GET greeting           # a read on the other rack: "hello"
  redis-cli -p $RACK_B_PORT PYLON INFO             # the sidecar's view: its partitions, applied offsets, lag
  redis-cli -p $RACK_A_PORT PYLON PEERS            # rack b's sidecar as rack a's sees it
  redis-cli -p $RACK_A_PORT INCR n                # the real count, as Redis answers it
  redis-cli -p $((RACK_A_PORT + 20)) SHUTDOWN NOSAVE   # stop rack a's Redis: GETs through $RACK_A_PORT go to rack b
  curl -s 127.0.0.1:$((RACK_A_PORT + 3100))/metrics         # Prometheus metrics; also /healthz and /readyz

  Logs: $WORK. Ctrl-C stops everything.
TXT
wait
