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

# Stops the process with the others when the script ends; LAST_PID is its pid.
track() { PIDS+=("$1"); LAST_PID=$1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

port_open() { (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 200); do port_open "$1" && return 0; sleep 0.05; done
  echo "nothing listens on port $1" >&2
  exit 1
}

# A throwaway redis-server on 127.0.0.1:PORT (no persistence), its log in $WORK; waits for it.
start_redis() {  # port
  redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" --logfile "$WORK/redis-$1.log" &
  track $!
  wait_port "$1"
}

# twemproxy (nutcracker) on 127.0.0.1:PORT in front of one Redis; waits for it.
start_twemproxy() {  # port, stats port, redis port
  cat > "$WORK/nutcracker-$1.yml" <<YML
pylon:
  listen: 127.0.0.1:$1
  redis: true
  servers:
    - 127.0.0.1:$3:1
YML
  nutcracker -c "$WORK/nutcracker-$1.yml" -s "$2" -a 127.0.0.1 -o "$WORK/nutcracker-$1.log" &
  track $!
  wait_port "$1"
}

# A Kafka-protocol broker on 127.0.0.1:PORT, its data in $WORK/kafka: the binary inside PyPI's
# noida-db, started directly so that stopping it stops the broker, not only a Python wrapper.
start_broker() {  # port
  local bin
  bin=$(python3 -c 'import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), "noida-db"))' 2>/dev/null) \
    || { echo "noida-db is not installed; run make deps" >&2; exit 1; }
  "$bin" start --only kafka --kafka-port "$1" --data-dir "$WORK/kafka" > "$WORK/kafka.log" 2>&1 &
  track $!
  wait_port "$1"
}

# A Kubernetes control plane on loopback: etcd and the kube-apiserver that install-kube.sh built.
# Sets KUBE_PORT, KUBE_TOKEN, KUBE_CA (the serving certificate) and KUBECONFIG_FILE; waits for it.
start_kube() {
  local cache etcd_port peer_port
  cache=$(scripts/install-kube.sh)
  etcd_port=$(free_port); peer_port=$(free_port); KUBE_PORT=$(free_port); KUBE_TOKEN=pylon-admin-token
  etcd --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port" > "$WORK/etcd.log" 2>&1 &
  track $!
  wait_port "$etcd_port"
  echo "$KUBE_TOKEN,admin,1,system:masters" > "$WORK/tokens.csv"
  openssl genrsa -out "$WORK/sa.key" 2048 2>/dev/null
  "$cache/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --secure-port "$KUBE_PORT" --insecure-port 0 --cert-dir "$WORK/kube-certs" --token-auth-file "$WORK/tokens.csv" \
    --authorization-mode RBAC --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$WORK/sa.key" \
    --service-account-signing-key-file "$WORK/sa.key" --service-cluster-ip-range 10.96.0.0/16 > "$WORK/kube-apiserver.log" 2>&1 &
  track $!
  KUBE_CA=$WORK/kube-certs/apiserver.crt
  for _ in $(seq 300); do
    [ -f "$KUBE_CA" ] && curl -sf --cacert "$KUBE_CA" -H "Authorization: Bearer $KUBE_TOKEN" "https://127.0.0.1:$KUBE_PORT/api/v1/namespaces/default" > /dev/null && break
    sleep 0.2
  done
  KUBECONFIG_FILE=$WORK/kubeconfig
  cat > "$KUBECONFIG_FILE" <<KC
apiVersion: v1
kind: Config
current-context: local
contexts: [{name: local, context: {cluster: local, user: admin, namespace: default}}]
clusters: [{name: local, cluster: {server: "https://127.0.0.1:$KUBE_PORT", certificate-authority-data: $(base64 -w0 "$KUBE_CA")}}]
users: [{name: admin, user: {token: $KUBE_TOKEN}}]
KC
}
