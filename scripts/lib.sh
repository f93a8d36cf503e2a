# Helpers the scripts share: ports, and processes stopped when the script ends.
# Usage: source "$(dirname "$0")/lib.sh"

PIDS=()
WORK=$(mktemp -d /tmp/pylon.XXXXXX)

# Stops every process started with `track`, and removes the scratch directory.
stop_tracked() {
  trap - INT TERM EXIT
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap stop_tracked INT TERM EXIT

track() { PIDS+=("$1"); }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

port_open() { (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 200); do port_open "$1" && return 0; sleep 0.05; done
  echo "nothing listens on port $1" >&2
  exit 1
}

# The Kafka-protocol broker binary inside PyPI's noida-db (started directly, so stopping it
# stops the broker itself, not only a Python wrapper).
noida_db_binary() {
  python3 -c 'import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), "noida-db"))' 2>/dev/null \
    || { echo "noida-db is not installed; run make deps" >&2; exit 1; }
}
