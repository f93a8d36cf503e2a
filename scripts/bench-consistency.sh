#!/usr/bin/env bash
# Writes at Pylon's default consistency level (applied: the real reply, once a rack applied the
# write) beside the log level (acknowledged once Kafka has it), twemproxy and direct Redis, in one
# run: SET and INCR, -c 1 and -c 50, unpipelined and -P 16 — req/s, p50, p99 (the median of ROUNDS
# interleaved rounds) — and CPU per acknowledged write: the writing sidecar (gateway + its applier,
# from /proc) beside twemproxy's per SET. The broker is librdkafka's mock cluster
# (scripts/mock-kafka), which honours a fetch's max wait: noida-db spins on idle fetches and
# would be what is measured. For the throughput target's case (SET, -c 50, unpipelined) it also
# gives the CPU of every process a write needs: what this machine can give a write at all.
# Usage: scripts/bench-consistency.sh [ROUNDS]     env: REQUESTS=50000 FETCH_WAIT_MS=1
#   KAFKA_PROPERTIES="linger.ms=1 …" (more librdkafka properties for both racks' sidecars)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
REQUESTS=${REQUESTS:-50000}
BIN=${BIN:-.build/release/pylon-sidecar}
# The mock cluster answers a fetch only when its max wait is over, not when a write arrives (a
# real broker answers at once): with the applier's default 100 ms every applied write would wait
# that long. 1 ms bounds the wait, at the cost of an idle consumer polling each millisecond.
FETCH_WAIT_MS=${FETCH_WAIT_MS:-1}
[ -x "$BIN" ] || swift build -c release
source scripts/lib.sh

gcc -O2 -o "$WORK/mock-kafka" scripts/mock-kafka/mock-kafka.c -lrdkafka -ldl

direct=$(free_port); nc_port=$(free_port); nc_stats=$(free_port)
start_redis "$direct"
direct_pid=$LAST_PID
start_twemproxy "$nc_port" "$nc_stats" "$direct"
nc_pid=$LAST_PID
rack() {  # name, consistency → sets sidecar_port, sidecar_pid
  local redis_port
  redis_port=$(free_port); sidecar_port=$(free_port)
  start_redis "$redis_port"
  redis_pid=$LAST_PID
  WORLD_PIDS+=("$LAST_PID")
  "$BIN" --listen "127.0.0.1:$sidecar_port" --admin "127.0.0.1:$(free_port)" --redis "redis://127.0.0.1:$redis_port" \
    --kafka-brokers "$bootstrap" --world bench --rack "$1" --consistency "$2" --log-level warning \
    --kafka-property "fetch.wait.max.ms=$FETCH_WAIT_MS" ${KAFKA_PROPERTIES:+$(printf -- '--kafka-property %s ' $KAFKA_PROPERTIES)} \
    2>> "$WORK/sidecar-$1.log" &
  track $!
  sidecar_pid=$LAST_PID
  WORLD_PIDS+=("$LAST_PID")
  wait_port "$sidecar_port"
}
# A fresh world for each case: the mock cluster keeps its log in memory and its fetches slow
# down as the log grows (measured: a sidecar at the log level fell from 32,000 to 15,000 SET/s
# between a first 50,000 writes and a next 100,000), so every case starts on an empty log. Two
# racks apply every write either way: rack a's sidecar acknowledges at the default level, rack
# b's at the log level.
WORLD_PIDS=()
start_world() {
  "$WORK/mock-kafka" pylon.bench.ops 8 > "$WORK/mock-kafka.out" 2>> "$WORK/mock-kafka.log" &
  track $!
  WORLD_PIDS=("$LAST_PID")
  for _ in $(seq 100); do [ -s "$WORK/mock-kafka.out" ] && break; sleep 0.05; done
  bootstrap=$(head -n 1 "$WORK/mock-kafka.out")
  broker_pid=$LAST_PID
  rack a applied; applied_port=$sidecar_port; applied_pid=$sidecar_pid; applied_redis_pid=$redis_pid
  rack b log; log_port=$sidecar_port; log_pid=$sidecar_pid; log_redis_pid=$redis_pid
  # Both appliers have joined their groups once a write through rack a is applied on both.
  until [ "$(redis-cli -p "$applied_port" INCR warm-up)" -ge 1 ] 2>/dev/null; do sleep 0.1; done
  until [ "$(redis-cli -p "$log_port" GET warm-up)" -ge 1 ] 2>/dev/null; do sleep 0.1; done
}
stop_world() {
  kill "${WORLD_PIDS[@]}" 2>/dev/null || true
  wait "${WORLD_PIDS[@]}" 2>/dev/null || true
  : > "$WORK/mock-kafka.out"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
idle_ticks() { awk '/^cpu / {print $5 + $6}' /proc/stat; }  # both cores, idle + iowait
# A process's threads by name, user and system ticks (librdkafka's broker threads share a name).
thread_ticks() {
  # A thread that ends while listed is left out.
  for t in /proc/"$1"/task/*; do echo "$(tr ' ' _ 2>/dev/null < "$t/comm") $(awk '{print $14, $15}' "$t/stat" 2>/dev/null)"; done \
    | awk 'NF == 3 {u[$1] += $2; s[$1] += $3} END {for (n in u) print n, u[n], s[n]}' | sort
}
results="$WORK/results.csv"
budget="$WORK/budget.csv"
threads="$WORK/threads.csv"
for round in $(seq "$ROUNDS"); do
  for test in set incr; do
    for clients in 1 50; do
      for pipeline in 1 16; do
        start_world
        for target in direct twemproxy applied log; do
          # Every process of the target, by name: the first is the one the table's CPU column is of.
          case $target in
            direct) port=$direct procs=(redis:$direct_pid) ;;
            twemproxy) port=$nc_port procs=(twemproxy:$nc_pid redis:$direct_pid) ;;
            applied) port=$applied_port procs=(sidecar-a:$applied_pid sidecar-b:$log_pid redis-a:$applied_redis_pid redis-b:$log_redis_pid broker:$broker_pid) ;;
            log) port=$log_port procs=(sidecar-b:$log_pid sidecar-a:$applied_pid redis-b:$log_redis_pid redis-a:$applied_redis_pid broker:$broker_pid) ;;
          esac
          n=$REQUESTS; [ "$clients" = 1 ] && [ "$pipeline" = 1 ] && n=$((REQUESTS / 5))
          before=(); for proc in "${procs[@]}"; do before+=("$(cpu_ticks "${proc#*:}")"); done
          threads_before=$(thread_ticks "${procs[0]#*:}")
          idle=$(idle_ticks)
          # `times` after the client: its CPU (the second line: this subshell's children).
          out=$(redis-benchmark -p "$port" -c "$clients" -n "$n" -P "$pipeline" -r 100000 -d 3 --csv -t "$test" 2>/dev/null | tail -n 1 | tr -d '"'; times)
          idle=$(( $(idle_ticks) - idle ))
          ticks=(); for i in "${!procs[@]}"; do ticks+=("$(( $(cpu_ticks "${procs[i]#*:}") - before[i] ))"); done
          IFS=, read -r _ rps _ _ p50 _ p99 _ <<< "$(head -n 1 <<< "$out")"
          cpu=0; [ "$target" = direct ] || cpu=${ticks[0]}
          echo "$test,$clients,$pipeline,$target,$rps,$p50,$p99,$cpu,$n" >> "$results"
          if [ "$test $clients $pipeline" = "set 50 1" ]; then
            read -r user system <<< "$(tail -n 1 <<< "$out" | sed 's/[ms]/ /g' | awk '{print $1 * 60 + $2, $3 * 60 + $4}')"
            for i in "${!procs[@]}"; do echo "$target,${procs[i]%%:*},${ticks[i]},$n" >> "$budget"; done
            echo "$target,client,$(python3 -c "print(round(($user + $system) * $(getconf CLK_TCK)))"),$n" >> "$budget"
            echo "$target,idle,$idle,$n" >> "$budget"
            if [ "$target" = applied ]; then
              join <(echo "$threads_before") <(thread_ticks "$applied_pid") | awk -v n="$n" '{print $1 "," $4 - $2 "," $5 - $3 "," n}' >> "$threads"
            fi
          fi
        done
        stop_world
      done
    done
  done
done

python3 - "$results" "$budget" "$threads" "$(getconf CLK_TCK)" <<'PY'
import csv, statistics, sys
rows, hz = list(csv.reader(open(sys.argv[1]))), int(sys.argv[4])
data = {}
for test, clients, pipeline, target, rps, p50, p99, ticks, n in rows:
    data.setdefault((test, int(clients), int(pipeline)), {}).setdefault(target, []).append(
        (float(rps), float(p50), float(p99), int(ticks) / hz * 1e6 / int(n)))
print("| test | clients | pipeline | target | req/s | p50 ms | p99 ms | CPU µs/write | vs twemproxy |")
print("|---|---|---|---|---|---|---|---|---|")
for key in sorted(data):
    med = {t: [statistics.median(x[i] for x in v) for i in range(4)] for t, v in data[key].items()}
    for t in ("direct", "twemproxy", "applied", "log"):
        rps, p50, p99, cpu = med[t]
        cpu_text = "" if t == "direct" else f"{cpu:.1f}"
        print(f"| {key[0].upper()} | {key[1]} | {key[2]} | {t} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {cpu_text} | {rps / med['twemproxy'][0]:.2f} |")
one = {t: [statistics.median(x[i] for x in v) for i in range(4)] for t, v in data[("set", 1, 1)].items()}
fifty = {t: [statistics.median(x[i] for x in v) for i in range(4)] for t, v in data[("set", 50, 1)].items()}
print(f"\ntargets: SET p50 at the default level / log level, one client: {one['applied'][1] / one['log'][1]:.2f} (target <= 1.5)")
print(f"         SET req/s at the default level / twemproxy, -c 50: {fifty['applied'][0] / fifty['twemproxy'][0]:.2f} (target >= 0.6)")
print(f"         CPU per SET, sidecar at the default level / twemproxy, -c 50: {fifty['applied'][3] / max(fifty['twemproxy'][3], 1e-9):.2f} (target <= 3)")

# Where the throughput target's writes spend the machine: CPU per write of each process (median
# of the rounds), and the machine's idle time. Without the sidecars, a Pylon write still needs
# the client, the racks' Redis and the broker: two cores over that sum bound its throughput.
spent = {}
for target, proc, ticks, n in csv.reader(open(sys.argv[2])):
    spent.setdefault(target, {}).setdefault(proc, []).append(int(ticks) / hz * 1e6 / int(n))
print("\nCPU per write, SET -c 50 (µs; idle: both cores' idle time per write):")
for target in ("twemproxy", "applied"):
    cells = {proc: statistics.median(v) for proc, v in spent[target].items()}
    print(f"  {target:9}: " + ", ".join(f"{proc} {v:.1f}" for proc, v in cells.items()))
    if target == "applied":
        rest = sum(v for proc, v in cells.items() if not proc.startswith("sidecar") and proc != "idle")
        goal = 0.6 * fifty["twemproxy"][0]
        print(f"  0.6x twemproxy is {goal:,.0f} SET/s: two cores give {2e6 / goal:.1f} µs of CPU per write; the client, "
              f"the racks' Redis and the broker take {rest:.1f} (one rack: {rest - cells['redis-b']:.1f}), which leaves "
              f"{2e6 / goal - rest:.1f} for both sidecars; twemproxy alone spends {statistics.median(spent['twemproxy']['twemproxy']):.1f}")
# The writing sidecar's threads, user and system time per write (threads busy at all).
per_thread = {}
for name, user, system, n in csv.reader(open(sys.argv[3])):
    per_thread.setdefault(name, []).append((int(user) / hz * 1e6 / int(n), int(system) / hz * 1e6 / int(n)))
print("  sidecar-a by thread, user + system µs per write: " + ", ".join(
    f"{name} {statistics.median(u for u, _ in v):.1f} + {statistics.median(s for _, s in v):.1f}"
    for name, v in sorted(per_thread.items()) if statistics.median(u + s for u, s in v) >= 0.5))
PY
