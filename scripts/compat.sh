#!/usr/bin/env bash
# Redis's own Tcl test suite (Debian's redis source package, external-server mode) against a
# plain redis-server and through a sidecar of a running world (a broker, two racks) at the
# default consistency level, unit by unit, side by side. Prints each unit's passed/failed counts
# and every failing test with its first error line; fails when a test fails through the sidecar
# that Tests/Compatibility/redis-suite-failures.txt does not list (the README says why each of
# those fails), or when a listed one passes (then the list and the README are out of date).
#   UNITS="unit/type/incr unit/keyspace" scripts/compat.sh    # a subset
#   BIN=.build/debug/pylon-sidecar scripts/compat.sh          # another build
set -euo pipefail
cd "$(dirname "$0")/.."
UNITS=${UNITS:-"unit/type/incr unit/type/string unit/type/hash unit/type/list unit/type/list-2 unit/type/list-3 unit/type/set unit/type/zset unit/type/stream unit/type/stream-cgroups unit/keyspace unit/expire unit/scan unit/dump unit/bitops unit/bitfield unit/geo unit/hyperloglog unit/protocol"}
BIN=${BIN:-.build/release/pylon-sidecar}
KNOWN=Tests/Compatibility/redis-suite-failures.txt
[ -x "$BIN" ] || swift build -c release
suite=$(scripts/install-redis-tests.sh)
source scripts/lib.sh

# Tests of what Pylon refuses by design are left out by their tags: DEBUG, replication, CONFIG
# SET of memory and statistics, SAVE, RESET… (the README's refused commands); encodings are a
# rack's internal detail (--ignore-encoding). --durable: a test's error fails that test only.
options=(--singledb --durable --ignore-encoding --timeout 300)
for tag in needs:debug needs:repl needs:config-maxmemory needs:config-resetstat needs:pfdebug needs:save needs:reset needs:latency needs:local-process; do
  options+=(--tags "-$tag")
done

run_units() {  # label, port (none: a new redis-server per unit): runs every unit, writes $WORK/<label>.results (unit|test|error)
  local label=$1 port=${2:-} unit log
  : > "$WORK/$label.results"
  for unit in $UNITS; do
    log="$WORK/$label-${unit//\//_}.log"
    # A unit may leave settings behind (bitops raises proto-max-bulk-len): each gets its own server.
    if [ -z "${2:-}" ]; then port=$(free_port); start_redis "$port"; fi
    # --baseport: the suite's own test server takes a port below it; a random one lets runs coexist.
    (cd "$suite" && timeout 1200 tclsh tests/test_helper.tcl --host 127.0.0.1 --port "$port" --baseport $((20000 + RANDOM % 20000)) \
      "${options[@]}" --single "$unit") 2>&1 \
      | sed 's/\x1b\[[0-9;]*m//g' > "$log" || true
    python3 - "$unit" "$log" >> "$WORK/$label.results" <<'PY'
import re, sys
unit, log = sys.argv[1], open(sys.argv[2], errors="replace").read().splitlines()
finished = any(re.match(r"\[\d+/\d+ done\]", line) for line in log)
for i, line in enumerate(log):
    m = re.match(r"\[(ok|err|exception)\]: (.*?)(?: \(\d+ ms\))?$", line)
    if not m:
        continue
    kind, name = m.groups()
    name = re.sub(r" in tests/\S+$", "", name)
    detail = log[i + 1].strip() if kind != "ok" and i + 1 < len(log) else ""
    if kind == "exception":
        name, detail = "(the rest of the unit: it stopped)", (log[i + 1].strip() if i + 1 < len(log) else name)
    print(f"{unit}|{'ok' if kind == 'ok' else 'fail'}|{name}|{detail[:200]}")
if not finished and not any(l.startswith("[exception]") for l in log):
    print(f"{unit}|fail|(the rest of the unit: it did not finish)|{log[-1][:200] if log else ''}")
PY
  done
}

# The baseline: plain redis-servers.
run_units redis

# The world: a broker and two racks; the suite talks to rack a's sidecar.
kafka=$(free_port)
start_broker "$kafka"
sidecars=()
for rack in a b; do
  redis=$(free_port) listen=$(free_port)
  start_redis "$redis"
  "$BIN" --listen "127.0.0.1:$listen" --admin "127.0.0.1:$(free_port)" --redis "redis://127.0.0.1:$redis" \
    --kafka-brokers "127.0.0.1:$kafka" --world compat --rack "$rack" > "$WORK/sidecar-$rack.log" 2>&1 &
  track $!
  wait_port "$listen"
  sidecars+=("$listen")
done
run_units pylon "${sidecars[0]}"

python3 - "$WORK/redis.results" "$WORK/pylon.results" "$KNOWN" "$UNITS" <<'PY'
import sys
def load(path):
    rows = [line.rstrip("\n").split("|", 3) for line in open(path) if line.strip()]
    return rows
redis, pylon = load(sys.argv[1]), load(sys.argv[2])
known = {tuple(line.rstrip("\n").split("|", 2)[:2]) for line in open(sys.argv[3]) if line.strip() and not line.startswith("#")}
print(f"\n{'unit':28} {'redis-server':>14} {'through pylon':>14}")
totals = [0, 0, 0, 0]
for unit in sys.argv[4].split():
    r = [row for row in redis if row[0] == unit]
    p = [row for row in pylon if row[0] == unit]
    ro, po = sum(row[1] == "ok" for row in r), sum(row[1] == "ok" for row in p)
    rf, pf = len(r) - ro, len(p) - po
    totals = [totals[0] + ro, totals[1] + rf, totals[2] + po, totals[3] + pf]
    print(f"{unit:28} {ro:>6} ok {rf:>3} ✗ {po:>6} ok {pf:>3} ✗")
print(f"{'all':28} {totals[0]:>6} ok {totals[1]:>3} ✗ {totals[2]:>6} ok {totals[3]:>3} ✗")
failing = [row for row in pylon if row[1] == "fail"]
print("\nfailing through pylon:")
for unit, _, name, detail in failing:
    print(f"  {unit}|{name}\n      {detail}")
unexpected = [row for row in failing if (row[0], row[2]) not in known]
# Some tests share a name (a loop whose variable the name does not expand): listed means every
# test of that name may fail, stale only when none of them failed.
failed = {(row[0], row[2]) for row in failing}
passing = {(row[0], row[2]) for row in pylon if row[1] == "ok"}
stale = sorted(k for k in known if k in passing and k not in failed)
if unexpected:
    print("\nnot in " + sys.argv[3] + ":")
    for unit, _, name, _ in unexpected: print(f"{unit}|{name}")
if stale:
    print("\nlisted in " + sys.argv[3] + " but passing now:")
    for unit, name in stale: print(f"{unit}|{name}")
sys.exit(1 if unexpected or stale else 0)
PY
