#!/usr/bin/env bash
# The clustering-layer benchmark, in one run on one machine (a broker and two racks, peers of
# each other):
#   1. failover: rack A's Redis SIGKILLed -> first GET through rack A's sidecar answered (by rack B),
#      p50/p99 over TRIALS kills (each followed by a restart and a return to local reads);
#   2. applied vs log: SET latency through rack A when acknowledged by Kafka (log) and when
#      acknowledged after rack A applied it (applied, via a contentious key pattern), -c 1 and -c 50;
#   3. idle probing: CPU and bytes/s a sidecar spends probing one peer, against the same sidecar
#      without peers.
# Usage: scripts/bench-world.sh   env: TRIALS=20 REQUESTS=20000 SECTIONS="failover applied idle"
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${TRIALS:-20}
REQUESTS=${REQUESTS:-20000}
SECTIONS=${SECTIONS:-failover applied idle}
BIN=.build/release/pylon-sidecar
[ -x "$BIN" ] || swift build -c release
source scripts/lib.sh
work=$WORK

kafka=$(free_port)
start_broker "$kafka"
a_port=$(free_port); b_port=$(free_port); a_redis=$(free_port); b_redis=$(free_port)
# Rack A's Redis is killed and restarted by the failover section: started outside `track`'s job
# list so the shell does not report each kill.
redis-server --port "$a_redis" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --logfile "$work/redis-a.log" --daemonize yes
wait_port "$a_redis"
trap 'redis-cli -p "$a_redis" SHUTDOWN NOSAVE > /dev/null 2>&1 || true; stop_tracked' EXIT INT TERM
start_redis "$b_redis"

sidecar() {  # rack, port, redis port, extra flags…; sets sidecar_pid
  local rack=$1 port=$2 redis=$3; shift 3
  "$BIN" --listen "127.0.0.1:$port" --admin "127.0.0.1:$(free_port)" --redis "redis://127.0.0.1:$redis" \
    --kafka-brokers "127.0.0.1:$kafka" --world bench --rack "$rack" --log-level warning "$@" 2>> "$work/sidecar-$rack.log" &
  track $!; sidecar_pid=$!
  wait_port "$port"
}
sidecar a "$a_port" "$a_redis" --peers "127.0.0.1:$b_port" --peer-probe-interval-ms 100 --contentious-keys 'applied:*'
sidecar b "$b_port" "$b_redis" --peers "127.0.0.1:$a_port" --peer-probe-interval-ms 100
redis-cli -p "$a_port" SET bench:key v > /dev/null
until [ "$(redis-cli -p "$b_port" GET bench:key)" = v ]; do sleep 0.05; done
until redis-cli -p "$a_port" PYLON PEERS | grep -q 'reads=yes'; do sleep 0.05; done

if [[ " $SECTIONS " == *" failover "* ]]; then
echo "== Failover: rack A's Redis killed -> first GET through rack A answered by a peer ($TRIALS kills)"
python3 - "$a_port" "$a_redis" "$TRIALS" "$work" <<'PY'
import os, signal, socket, subprocess, sys, time
port, redis_port, trials, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def connect():
    s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s, s.makefile("rb")
def get(conn):
    s, f = conn
    s.sendall(b"*2\r\n$3\r\nGET\r\n$9\r\nbench:key\r\n")
    line = f.readline()
    if line.startswith(b"$"):
        n = int(line[1:]); return f.read(n + 2)[:-2] if n >= 0 else None
    return line
def info(conn):
    s, f = conn
    s.sendall(b"*2\r\n$5\r\nPYLON\r\n$4\r\nINFO\r\n")
    n = int(f.readline()[1:]); return f.read(n + 2).decode()
def redis_pid():
    out = subprocess.run(["redis-cli", "-p", str(redis_port), "INFO", "server"], capture_output=True, text=True).stdout
    return int([l for l in out.splitlines() if l.startswith("process_id:")][0].split(":")[1])
conn = connect(); times = []; errors = 0
for trial in range(trials):
    pid = redis_pid()
    os.kill(pid, signal.SIGKILL); killed = time.perf_counter()
    while True:
        reply = get(conn)
        if reply == b"v": break
        errors += 1
    times.append((time.perf_counter() - killed) * 1000)
    # Back to normal: a fresh Redis (empty: the applier replays the log into it), reads local again.
    subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--dir", work, "--logfile", f"{work}/redis-restarted.log", "--daemonize", "yes"]).wait()
    while "reads_from:local" not in info(conn) or subprocess.run(["redis-cli", "-p", str(redis_port), "GET", "bench:key"], capture_output=True, text=True).stdout.strip() != "v":
        time.sleep(0.02)
print("trials (ms):", " ".join(f"{t:.1f}" for t in times), file=sys.stderr)
times.sort(); q = lambda p: times[min(len(times) - 1, int(p * len(times)))]
print(f"| failover (kill -> first read answered by the peer) | p50 {q(0.5):.2f} ms | p99 {q(0.99):.2f} ms | max {times[-1]:.2f} ms | {errors} error replies in {trials} kills |")
PY
until redis-cli -p "$a_port" PYLON INFO | grep -q 'reads_from:local'; do sleep 0.05; done
until [ "$(redis-cli -p "$a_redis" GET bench:key)" = v ]; do sleep 0.05; done
fi
if [[ " $SECTIONS " == *" applied "* ]]; then
echo; echo "== SET latency through rack A: log vs applied (redis-benchmark -n $REQUESTS -r 100000)"
echo "| clients | level | req/s | p50 ms | p99 ms |"
echo "|---|---|---|---|---|"
for clients in 1 50; do
  for level in log applied; do
    line=$(redis-benchmark -p "$a_port" -c "$clients" -n "$REQUESTS" -r 100000 --csv SET "$level:__rand_int__" x 2>/dev/null | tail -n 1 | tr -d '"')
    IFS=, read -r name rps avg min p50 p95 p99 max <<< "$line"
    echo "| $clients | $level | $rps | $p50 | $p99 |"
  done
done
fi

if [[ " $SECTIONS " == *" idle "* ]]; then
echo; echo "== Idle probing: one sidecar probing one peer every 500 ms vs the same sidecar without peers, 20 s idle"
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime, clock ticks
ticks=$(getconf CLK_TCK)
c_port=$(free_port); d_port=$(free_port)
sidecar c "$c_port" "$a_redis" --peers "127.0.0.1:$b_port"; with_peers=$sidecar_pid
sidecar d "$d_port" "$a_redis"; without_peers=$sidecar_pid
sleep 3
w0=$(cpu "$with_peers"); n0=$(cpu "$without_peers")
sleep 20
w1=$(cpu "$with_peers"); n1=$(cpu "$without_peers")
# Bytes: a PYLON PING request and its reply, as sent on the wire, twice a second.
request=$(printf '*2\r\n$5\r\nPYLON\r\n$4\r\nPING\r\n' | wc -c)
reply=$(redis-cli -p "$b_port" --no-raw PYLON PING > /dev/null; python3 -c "
import socket; s = socket.create_connection(('127.0.0.1', $b_port)); s.sendall(b'*2\r\n\$5\r\nPYLON\r\n\$4\r\nPING\r\n')
import time; time.sleep(0.2); print(len(s.recv(65536)))")
python3 - "$w0" "$w1" "$n0" "$n1" "$ticks" "$request" "$reply" <<'PY'
import sys
w0, w1, n0, n1, ticks, request, reply = map(int, sys.argv[1:])
with_peers, without = (w1 - w0) / ticks / 20 * 100, (n1 - n0) / ticks / 20 * 100
print(f"| idle CPU, sidecar with one peer | {with_peers:.1f} % of a core | without peers {without:.1f} % | difference {with_peers - without:+.1f} % |")
print(f"| probe traffic per peer | {(request + reply) * 2} bytes/s ({request} B request + {reply} B reply, twice a second) |")
PY
fi
