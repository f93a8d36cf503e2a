#!/usr/bin/env bash
# The read-path benchmark: redis-benchmark against direct Redis, twemproxy (nutcracker) and
# pylon-sidecar, all in front of the same redis-server, interleaved in one run.
# Usage: scripts/bench.sh [ROUNDS]   (env: REQUESTS=200000 CLIENTS=50 THREADS=<sidecar threads>)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
BIN=.build/release/pylon-sidecar
[ -x "$BIN" ] || swift build -c release
source scripts/lib.sh
work=$WORK

redis_port=$(free_port); nc_port=$(free_port); nc_stats=$(free_port); pylon_port=$(free_port); admin_port=$(free_port)
start_redis "$redis_port"
start_twemproxy "$nc_port" "$nc_stats" "$redis_port"; nc_pid=$LAST_PID
"$BIN" --listen "127.0.0.1:$pylon_port" --admin "127.0.0.1:$admin_port" --redis "redis://127.0.0.1:$redis_port" \
  --log-level warning ${THREADS:+--threads $THREADS} 2> "$work/pylon.log" &
track $!; pylon_pid=$!
wait_port "$pylon_port"

# Keys redis-benchmark reads (-r 100000: key:000000000000 … key:000000099999), 3-byte values.
redis-benchmark -p "$redis_port" -t set -n 100000 -r 100000 -d 3 -q > /dev/null 2>&1

# CPU time a process has used, in clock ticks (utime + stime from /proc): the proxies' cost per request.
cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
tick_us=$((1000000 / $(getconf CLK_TCK)))

results="$work/results.csv"
for round in $(seq "$ROUNDS"); do
  for pipeline in 1 16; do
    for target in direct twemproxy pylon; do
      case $target in
        direct) port=$redis_port; pid="" ;;
        twemproxy) port=$nc_port; pid=$nc_pid ;;
        pylon) port=$pylon_port; pid=$pylon_pid ;;
      esac
      # redis-benchmark has no built-in MGET test: MGET of 10 random keys is a custom command.
      for test in "-t get" "MGET $(printf 'key:__rand_int__ %.0s' $(seq 10))"; do
        before=$(cpu_ticks "$pid")
        line=$(redis-benchmark -p "$port" -c "$CLIENTS" -n "$REQUESTS" -P "$pipeline" -r 100000 --csv $test 2>/dev/null | tail -n 1 | tr -d '"')
        cpu_us=$(python3 -c "print(($(cpu_ticks "$pid") - $before) * $tick_us / $REQUESTS)")
        IFS=, read -r name rps avg min p50 p95 p99 max <<< "$line"
        echo "$round,$target,${name%% *},$pipeline,$rps,$p50,$p99,$cpu_us" >> "$results"
      done
    done
  done
done

python3 - "$results" "$ROUNDS" "$REQUESTS" "$CLIENTS" <<'PY'
import csv, statistics, sys
path, rounds, requests, clients = sys.argv[1:]
rows = list(csv.reader(open(path)))
data = {}
for r, target, test, pipeline, rps, p50, p99, cpu in rows:
    data.setdefault((test.split()[0], int(pipeline)), {}).setdefault(target, []).append((float(rps), float(p50), float(p99), float(cpu)))
print(f"redis-benchmark -c {clients} -n {requests}, median of {rounds} interleaved rounds")
print(f"| test | pipeline | target | req/s | p50 ms | p99 ms | vs direct | vs twemproxy | proxy CPU µs/req |")
print(f"|---|---|---|---|---|---|---|---|---|")
for (test, pipeline), targets in sorted(data.items()):
    med = {t: tuple(statistics.median(x[i] for x in v) for i in range(4)) for t, v in targets.items()}
    for t in ("direct", "twemproxy", "pylon"):
        rps, p50, p99, cpu = med[t]
        cpu_text = "—" if t == "direct" else f"{cpu:.2f}"
        print(f"| {test} | {pipeline} | {t} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {rps/med['direct'][0]:.2f} | {rps/med['twemproxy'][0]:.2f} | {cpu_text} |")
PY
