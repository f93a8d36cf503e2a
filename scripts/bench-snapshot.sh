#!/usr/bin/env bash
# Catch-up from a snapshot (issue 14), in one run on one machine:
#  - a source rack (Redis + sidecar) gets KEYS ops of six types (strings, strings with a TTL,
#    hashes, lists, sets, sorted sets) through its sidecar, so they are in the world's log too;
#  - baseline: the source's keys DUMPed (with absolute TTLs) into RESTORE commands, loaded by
#    `redis-cli --pipe` into an empty Redis: keys/s and MB/s of the restore alone;
#  - Pylon: a new rack (Redis + sidecar with --snapshot-from the source's Redis) takes the
#    snapshot (SYNC) and loads it: load keys/s and MB/s (PYLON INFO), and the time from the
#    sidecar's start to the rack caught up with the log;
#  - a new rack without a snapshot replays the whole log: time to caught up;
#  - p99 of GETs through the source rack's sidecar before and during the snapshot load: on the
#    shared cores, and again with the racks on a core each, as on two machines (the load runs on
#    the new rack's; on shared cores the GETs wait for the load's CPU more than for the copy).
# The broker is librdkafka's mock cluster (scripts/mock-kafka), as in bench-consistency.sh. It
# keeps at most 100,000 messages and 5 MB per partition, dropping the oldest (retention): the
# topic has 32 partitions so that the whole log of a million ops stays (checked: the replaying
# rack ends with every key). It answers a fetch only when the fetch's max wait is over, so an idle
# consumer polls at that rate: with 1 ms (bench-consistency.sh's setting, for write latency) the
# source rack's idle sidecar and the loading sidecar's applier took about half a core each during
# the load; 10 ms keeps them near idle and the replay fast.
# Usage: scripts/bench-snapshot.sh     env: KEYS=1000000 FETCH_WAIT_MS=10
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
BIN=${BIN:-.build/release/pylon-sidecar}
[ -x "$BIN" ] || swift build -c release
source scripts/lib.sh

gcc -O2 -o "$WORK/mock-kafka" scripts/mock-kafka/mock-kafka.c -lrdkafka -ldl
PARTITIONS=32
"$WORK/mock-kafka" pylon.bench.ops "$PARTITIONS" > "$WORK/mock-kafka.out" 2>> "$WORK/mock-kafka.log" &
track $!
for _ in $(seq 100); do [ -s "$WORK/mock-kafka.out" ] && break; sleep 0.05; done
bootstrap=$(head -n 1 "$WORK/mock-kafka.out")

sidecar() {  # name, redis port, extra flags… → sets SIDECAR_PORT
  local name=$1 redis_port=$2
  shift 2
  SIDECAR_PORT=$(free_port)
  ${CORE:+taskset -c "$CORE"} "$BIN" --listen "127.0.0.1:$SIDECAR_PORT" --admin "127.0.0.1:$(free_port)" --redis "redis://127.0.0.1:$redis_port" \
    --kafka-brokers "$bootstrap" --world bench --rack "$name" --sidecar-name "$name-0" --log-level notice \
    --kafka-property fetch.wait.max.ms=${FETCH_WAIT_MS:-10} "$@" 2>> "$WORK/sidecar-$name.log" &
  track $!
  wait_port "$SIDECAR_PORT"
}
info() { redis-cli -p "$1" PYLON INFO | tr -d '\r'; }
field() { info "$1" | sed -n "s/^$2://p"; }
# The rack's applier has every partition and lags by nothing.
caught_up() {
  local text
  text=$(info "$1")
  [ "$(grep -c '^partition[0-9]*:' <<< "$text")" = "$PARTITIONS" ] && ! grep -q '^partition.*lag=[^0]' <<< "$text" && ! grep -q 'lag=?' <<< "$text"
}
# The rack applied the log up to OPS ops in all (its partitions' next offsets add up to it).
applied_all() {  # sidecar port, ops
  local sum
  sum=$(info "$1" | sed -n 's/^partition[0-9]*:next_offset=\([0-9]*\).*/\1/p' | paste -sd+ | bc)
  [ "${sum:-0}" -ge "$2" ]
}
now() { date +%s.%N; }

source_redis=$(free_port)
start_redis "$source_redis"
source_pids=("$LAST_PID")
sidecar source "$source_redis"
source_sidecar=$SIDECAR_PORT
source_pids+=("$LAST_PID")
until [ "$(redis-cli -p "$source_sidecar" INCR warm-up)" -ge 1 ] 2>/dev/null; do sleep 0.1; done

echo "writing $KEYS ops of six types through the source rack's sidecar…" >&2
per=$((KEYS / 6))
fill() { redis-benchmark -p "$source_sidecar" -c 50 -P 16 -n "$per" -r 100000000 -q "$@" > /dev/null; }
fill SET "str:__rand_int__" "value-of-twenty-byte"
fill SET "ttl:__rand_int__" "value-with-ttl" EX 86400
fill HSET "hash:__rand_int__" name pylon count 3 kind hash
fill RPUSH "list:__rand_int__" a b c d
fill SADD "set:__rand_int__" a b c d
fill ZADD "zset:__rand_int__" 1 a 2 b 3 c
until caught_up "$source_sidecar"; do sleep 0.2; done
keys=$(redis-cli -p "$source_redis" DBSIZE)
log_ops=$(info "$source_sidecar" | sed -n 's/^partition[0-9]*:next_offset=\([0-9]*\).*/\1/p' | paste -sd+ | bc)
echo "source: $keys keys, $log_ops ops in the log" >&2

# Baseline: DUMP/RESTORE through redis-cli --pipe into an empty Redis.
python3 - "$source_redis" "$WORK/restores.resp" <<'PY'
import sys, redis
source, path = redis.Redis(port=int(sys.argv[1])), sys.argv[2]
def command(*parts):
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        part = part if isinstance(part, bytes) else str(part).encode()
        out += [b"$%d\r\n" % len(part), part, b"\r\n"]
    return b"".join(out)
with open(path, "wb") as out:
    batch = []
    def flush():
        pipe = source.pipeline(transaction=False)
        for key in batch:
            pipe.dump(key)
            pipe.execute_command("PEXPIRETIME", key)
        replies = pipe.execute()
        for key, dump, expiry in zip(batch, replies[0::2], replies[1::2]):
            if key.startswith(b"pylon:") or dump is None:
                continue
            out.write(command(b"RESTORE", key, max(expiry, 0), dump, b"REPLACE", b"ABSTTL") if expiry > 0 else command(b"RESTORE", key, 0, dump, b"REPLACE"))
        batch.clear()
    for key in source.scan_iter(count=10000):
        batch.append(key)
        if len(batch) == 10000:
            flush()
    flush()
PY
restore_bytes=$(stat -c %s "$WORK/restores.resp")
baseline_redis=$(free_port)
start_redis "$baseline_redis"
t0=$(now)
redis-cli -p "$baseline_redis" --pipe < "$WORK/restores.resp" > "$WORK/pipe.out"
t1=$(now)
baseline_keys=$(redis-cli -p "$baseline_redis" DBSIZE)
baseline_seconds=$(echo "$t1 - $t0" | bc -l)

p99() { ${CORE:+taskset -c "$CORE"} redis-benchmark -p "$source_sidecar" -c 5 -n "$1" -r 100000000 -t get --csv 2>/dev/null | tail -n 1 | tr -d '"' | cut -d, -f7; }
p99_before=$(p99 20000)

# Pylon: a new rack from the source's snapshot, GETs going to the source meanwhile.
snapshot_redis=$(free_port)
start_redis "$snapshot_redis"
t0=$(now)
sidecar snapshot "$snapshot_redis" --snapshot-from "redis://127.0.0.1:$source_redis" --snapshot-dir "$WORK/snapshots"
snapshot_sidecar=$SIDECAR_PORT
until [ "$(field "$snapshot_sidecar" snapshot_phase)" = loading ]; do sleep 0.05; done
p99_during=$(p99 20000)
still_loading=$(field "$snapshot_sidecar" snapshot_phase)
until [ "$(field "$snapshot_sidecar" snapshot_phase)" = loaded ] && applied_all "$snapshot_sidecar" "$log_ops"; do sleep 0.1; done
t1=$(now)
snapshot_seconds=$(echo "$t1 - $t0" | bc -l)
load_keys=$(field "$snapshot_sidecar" snapshot_keys_loaded)
load_rate=$(field "$snapshot_sidecar" snapshot_keys_per_second)
file_bytes=$(field "$snapshot_sidecar" snapshot_file_bytes)
snapshot_keys=$(redis-cli -p "$snapshot_redis" DBSIZE)

# A new rack replaying the whole log.
replay_redis=$(free_port)
start_redis "$replay_redis"
t0=$(now)
sidecar replay "$replay_redis"
replay_sidecar=$SIDECAR_PORT
until applied_all "$replay_sidecar" "$log_ops"; do sleep 0.1; done
t1=$(now)
replay_seconds=$(echo "$t1 - $t0" | bc -l)
replay_keys=$(redis-cli -p "$replay_redis" DBSIZE)

# The copy's effect on the source with the racks on a core each: the source rack (its Redis and
# sidecar) and the GETs on CPU 0; a new rack loading a snapshot (its Redis and sidecar) on CPU 1.
p99_pinned_before=0 p99_pinned_during=0 pinned_still_loading=none
if [ "$(nproc)" -ge 2 ]; then
  for pid in "${source_pids[@]}"; do taskset -a -p -c 0 "$pid" > /dev/null; done
  p99_pinned_before=$(CORE=0 p99 20000)
  pinned_redis=$(free_port)
  start_redis "$pinned_redis"
  taskset -a -p -c 1 "$LAST_PID" > /dev/null
  CORE=1 sidecar pinned "$pinned_redis" --snapshot-from "redis://127.0.0.1:$source_redis" --snapshot-dir "$WORK/snapshots-pinned"
  pinned_sidecar=$SIDECAR_PORT
  until [ "$(field "$pinned_sidecar" snapshot_phase)" = loading ]; do sleep 0.05; done
  p99_pinned_during=$(CORE=0 p99 20000)
  pinned_still_loading=$(field "$pinned_sidecar" snapshot_phase)
fi

python3 - <<PY
keys, baseline_keys, baseline_seconds, restore_bytes = $keys, $baseline_keys, $baseline_seconds, $restore_bytes
load_keys, load_rate, file_bytes = $load_keys, $load_rate, $file_bytes
load_seconds = load_keys / load_rate
print(f"source: {keys:,} keys (Pylon's bookkeeping included), {$log_ops:,} ops in the log; snapshot file {file_bytes / 1e6:.1f} MB")
print()
print("| what | keys | seconds | keys/s | MB/s |")
print("|---|---|---|---|---|")
print(f"| DUMP/RESTORE by redis-cli --pipe (restore only) | {baseline_keys:,} | {baseline_seconds:.2f} | {baseline_keys / baseline_seconds:,.0f} | {restore_bytes / 1e6 / baseline_seconds:.1f} |")
print(f"| Pylon snapshot load (restore only) | {load_keys:,} | {load_seconds:.2f} | {load_rate:,.0f} | {file_bytes / 1e6 / load_seconds:.1f} |")
print(f"| Pylon: new rack caught up from a snapshot (SYNC, load, the log after) | {$snapshot_keys:,} | {$snapshot_seconds:.2f} | | |")
print(f"| Pylon: new rack caught up by replaying the log | {$replay_keys:,} | {$replay_seconds:.2f} | | |")
print()
print(f"targets: load rate / pipelined RESTORE rate: {load_rate / (baseline_keys / baseline_seconds):.2f} (target >= 0.7)")
if $p99_pinned_before > 0:
    print(f"         source GET p99 during the copy / before, racks on a core each: {$p99_pinned_during:.3f} / {$p99_pinned_before:.3f} ms = {$p99_pinned_during / $p99_pinned_before:.2f} (target <= 2; the load was {'still' if '$pinned_still_loading' == 'loading' else 'no longer'} running when the GETs ended)")
else:
    print("         source GET p99 with the racks on a core each: not measured (one core)")
print(f"         the same, everything on the two shared cores: {$p99_during:.3f} / {$p99_before:.3f} ms = {$p99_during / $p99_before:.2f} (the load was {'still' if '$still_loading' == 'loading' else 'no longer'} running)")
print(f"         catch-up from a snapshot / by replay: {$snapshot_seconds / $replay_seconds:.2f}")
PY
