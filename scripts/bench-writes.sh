#!/usr/bin/env bash
# The write-path benchmark, in one run on one machine:
#   1. SET throughput and latency: pylon (acknowledged by Kafka) vs direct Redis vs twemproxy,
#      -c 50, unpipelined and -P 16, median of ROUNDS interleaved rounds;
#   2. replication lag: SET acknowledged by rack A → visible on rack B, at a steady WRITE_RATE/s;
#   3. catch-up: an empty rack replaying CATCHUP_OPS ops, vs redis-benchmark -t set -P 16 on its Redis.
# Usage: scripts/bench-writes.sh [ROUNDS]
#   env: REQUESTS=100000 CLIENTS=50 WRITE_RATE=10000 CATCHUP_OPS=1000000 SECTIONS="set lag catchup"
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
REQUESTS=${REQUESTS:-100000}
CLIENTS=${CLIENTS:-50}
WRITE_RATE=${WRITE_RATE:-10000}
CATCHUP_OPS=${CATCHUP_OPS:-1000000}
SECTIONS=${SECTIONS:-set lag catchup}
BIN=.build/release/pylon-sidecar
[ -x "$BIN" ] || swift build -c release
source scripts/lib.sh
work=$WORK

kafka=$(free_port); direct=$(free_port); nc_port=$(free_port); nc_stats=$(free_port)
start_broker "$kafka"
broker_pid=$LAST_PID
start_redis "$direct"
start_twemproxy "$nc_port" "$nc_stats" "$direct"

rack() {  # name → starts a Redis and a sidecar; sets sidecar_port and redis_port
  local admin_port
  redis_port=$(free_port); sidecar_port=$(free_port); admin_port=$(free_port)
  start_redis "$redis_port"
  "$BIN" --listen "127.0.0.1:$sidecar_port" --admin "127.0.0.1:$admin_port" --redis "redis://127.0.0.1:$redis_port" \
    --kafka-brokers "127.0.0.1:$kafka" --world bench --rack "$1" --log-level warning 2> "$work/sidecar-$1.log" &
  track $!
  wait_port "$sidecar_port"
}
rack a; rack_a=$sidecar_port
rack b; rack_b=$sidecar_port

# Waits until a sidecar's applier has all 8 partitions at lag 0. Prints: the ops it applied in
# all, and the time and count when it was first seen applying (so start-up is not timed).
caught_up() {
  local info parts lagging applied first_time="" first_applied=0
  while :; do
    info=$(redis-cli -p "$1" PYLON INFO | tr -d '\r')
    parts=$(grep -c '^partition[0-9]' <<< "$info" || true)
    lagging=$(grep '^partition[0-9]' <<< "$info" | grep -vc ',lag=0$' || true)
    applied=$(grep '^applier_applied:' <<< "$info" | cut -d: -f2)
    if [ -z "$first_time" ] && [ "${applied:-0}" -gt 0 ]; then first_time=$(date +%s.%N); first_applied=$applied; fi
    if [ "$parts" = 8 ] && [ "$lagging" = 0 ]; then echo "$applied ${first_time:-0} $first_applied"; return; fi
    sleep 0.05
  done
}

if [[ " $SECTIONS " == *" set "* ]]; then
echo "== SET throughput (redis-benchmark -c $CLIENTS -n $REQUESTS -r 100000 -d 3, median of $ROUNDS rounds)"
results="$work/set.csv"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime
broker_ticks=0
for round in $(seq "$ROUNDS"); do
  for pipeline in 1 16; do
    for target in direct twemproxy pylon; do
      case $target in direct) port=$direct ;; twemproxy) port=$nc_port ;; pylon) port=$rack_a ;; esac
      before=$(cpu_ticks "$broker_pid")
      line=$(redis-benchmark -p "$port" -c "$CLIENTS" -n "$REQUESTS" -P "$pipeline" -r 100000 -d 3 --csv -t set 2>/dev/null | tail -n 1 | tr -d '"')
      [ "$target" = pylon ] && [ "$pipeline" = 1 ] && broker_ticks=$((broker_ticks + $(cpu_ticks "$broker_pid") - before))
      IFS=, read -r name rps avg min p50 p95 p99 max <<< "$line"
      echo "$target,$pipeline,$rps,$p50,$p99" >> "$results"
    done
  done
done
# The broker's own CPU per write acknowledged through pylon (unpipelined rounds): the floor
# any Kafka-backed write pays on this machine, whatever the sidecar does.
python3 -c "print(f'broker (noida-db) CPU per pylon SET, unpipelined: {$broker_ticks / $(getconf CLK_TCK) * 1e6 / ($ROUNDS * $REQUESTS):.1f} µs (it also serves both racks\' consumers)')"
python3 - "$results" <<'PY'
import csv, statistics, sys
data = {}
for target, pipeline, rps, p50, p99 in csv.reader(open(sys.argv[1])):
    data.setdefault(int(pipeline), {}).setdefault(target, []).append((float(rps), float(p50), float(p99)))
print("| test | pipeline | target | req/s | p50 ms | p99 ms | vs direct | vs twemproxy |")
print("|---|---|---|---|---|---|---|---|")
for pipeline, targets in sorted(data.items()):
    med = {t: tuple(statistics.median(x[i] for x in v) for i in range(3)) for t, v in targets.items()}
    for t in ("direct", "twemproxy", "pylon"):
        rps, p50, p99 = med[t]
        print(f"| SET | {pipeline} | {t} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {rps/med['direct'][0]:.2f} | {rps/med['twemproxy'][0]:.2f} |")
PY

fi

if [[ " $SECTIONS " == *" lag "* ]]; then
echo; echo "== Replication lag: SET acknowledged through rack A -> visible through rack B, at $WRITE_RATE writes/s for 10 s"
# Steady state: both racks done with what the previous section wrote.
caught_up "$rack_a" > /dev/null
caught_up "$rack_b" > /dev/null
python3 - "$rack_a" "$rack_b" "$WRITE_RATE" <<'PY'
import multiprocessing, socket, sys, threading, time
a, b, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def cmd(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in (s.encode() for s in args))
def read_reply(f):
    line = f.readline()
    if line[:1] == b"$":
        n = int(line[1:])
        return None if n < 0 else f.read(n + 2)[:-2]
    return line
def connect(port):
    s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s, s.makefile("rb")
def reader(stop, results):  # its own process: no GIL shared with the writer
    s, f = connect(b); last = None; delays = []
    while not stop.is_set():
        s.sendall(cmd("GET", "lag:probe")); value = read_reply(f)
        if value and value != last:
            last = value; delays.append((time.time_ns() - int(value)) / 1e6)
    results.put(delays)
if __name__ == "__main__":
    stop, results = multiprocessing.Event(), multiprocessing.Queue()
    watcher = multiprocessing.Process(target=reader, args=(stop, results)); watcher.start()
    s, f = connect(a); acked = 0
    def drain():  # replies are read on their own thread, so sending keeps its schedule
        global acked
        while True:
            read_reply(f); acked += 1
    threading.Thread(target=drain, daemon=True).start()
    per_tick = rate // 1000   # one probe per millisecond among the writes
    start = time.perf_counter(); n = 0
    while time.perf_counter() - start < 10:
        batch = [cmd("SET", f"lag:{n + i}", "x") for i in range(per_tick - 1)]
        # The probe's value is the time it is sent; rack B's reader subtracts it from the time it sees it.
        batch.append(cmd("SET", "lag:probe", str(time.time_ns())))
        s.sendall(b"".join(batch)); n += per_tick
        pause = start + n / rate - time.perf_counter()
        if pause > 0: time.sleep(pause)
    elapsed = time.perf_counter() - start
    time.sleep(0.5); stop.set()
    delays = sorted(results.get()); watcher.join()
    q = lambda p: delays[min(len(delays) - 1, int(p * len(delays)))]
    print(f"{n / elapsed:,.0f} writes/s sent, {acked:,} acknowledged; {len(delays)} probes seen on rack B")
    print(f"| replication lag (ack at A -> visible at B) | p50 {q(0.5):.2f} ms | p99 {q(0.99):.2f} ms | max {delays[-1]:.2f} ms |")
PY

fi

if [[ " $SECTIONS " == *" catchup "* ]]; then
echo; echo "== Catch-up: an empty rack replaying $CATCHUP_OPS ops"
redis-benchmark -p "$rack_a" -c "$CLIENTS" -n "$CATCHUP_OPS" -P 16 -r 1000000 -d 3 -t set -q > /dev/null 2>&1
caught_up "$rack_a" > /dev/null
rack c; rack_c=$sidecar_port; rack_c_redis=$redis_port
read -r applied first_time first_applied < <(caught_up "$rack_c")
elapsed=$(python3 -c "print($(date +%s.%N) - $first_time)")
baseline=$(redis-benchmark -p "$rack_c_redis" -c "$CLIENTS" -n "$CATCHUP_OPS" -P 16 -r 1000000 -d 3 --csv -t set 2>/dev/null | tail -n 1 | tr -d '"' | cut -d, -f2)
python3 - "$applied" "$first_applied" "$elapsed" "$baseline" <<'PY'
import sys
applied, first, elapsed, baseline = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rate = (applied - first) / elapsed
print(f"| catch-up | {applied:,} ops replayed; {applied - first:,} timed over {elapsed:.1f} s | {rate:,.0f} ops/s | redis-benchmark -t set -P 16 on the same Redis: {baseline:,.0f} req/s | ratio {rate / baseline:.2f} |")
PY
fi
