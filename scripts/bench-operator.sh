#!/usr/bin/env bash
# The operator's benchmark: a real etcd + kube-apiserver, a broker, and pylon-operator (release).
#   1. time from creating a PylonRack to its StatefulSet existing, p50/p99 over RACKS racks
#      (created one after another);
#   2. the operator's CPU and memory with those racks, idle for 30 s (it reconciles every rack and
#      re-reads its lag from Kafka every 15 s), and the API requests each of those reconciles
#      costs, by verb (from its /metrics).
# Usage: scripts/bench-operator.sh   env: RACKS=100
set -euo pipefail
cd "$(dirname "$0")/.."
RACKS=${RACKS:-100}
[ -x .build/release/pylon-operator ] || swift build -c release
source scripts/lib.sh
start_kube
kafka=$(free_port)
start_broker "$kafka"
admin=$(free_port)
.build/release/pylon-operator --kubeconfig "$KUBECONFIG_FILE" --namespace default --admin "127.0.0.1:$admin" --log-level warning \
  > "$WORK/operator.log" 2>&1 &
track $!; operator=$!
python3 - "$KUBE_PORT" "$KUBE_TOKEN" "$KUBE_CA" "$kafka" "$RACKS" "$operator" "$admin" <<'PY'
import json, re, ssl, sys, time, urllib.request, urllib.error
port, token, ca, kafka, racks, operator, admin = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
context = ssl.create_default_context(cafile=ca)
base = f"https://127.0.0.1:{port}"
def call(method, path, body=None, content="application/json"):
    data = body.encode() if isinstance(body, str) else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(base + path, method=method, data=data, headers={"Authorization": f"Bearer {token}", "Content-Type": content})
    try:
        with urllib.request.urlopen(request, context=context) as response: return response.status
    except urllib.error.HTTPError as error: return error.code
# The CRDs, applied as the YAML they are (server-side apply reads YAML).
for name in ("pylonworlds", "pylonracks"):
    text = open(f"manifests/crds/{name}.yaml").read()
    assert call("PATCH", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}.pylon.io?fieldManager=bench&force=true", text, "application/apply-patch+yaml") < 300
while call("GET", "/apis/pylon.io/v1alpha1/namespaces/default/pylonracks") != 200: time.sleep(0.1)
assert call("POST", "/apis/pylon.io/v1alpha1/namespaces/default/pylonworlds",
            {"apiVersion": "pylon.io/v1alpha1", "kind": "PylonWorld", "metadata": {"name": "bench"}, "spec": {"kafka": {"bootstrapServers": f"127.0.0.1:{kafka}"}}}) == 201
latencies = []
for i in range(racks):
    name = f"rack-{i}"
    started = time.perf_counter()
    assert call("POST", "/apis/pylon.io/v1alpha1/namespaces/default/pylonracks",
                {"apiVersion": "pylon.io/v1alpha1", "kind": "PylonRack", "metadata": {"name": name}, "spec": {"world": "bench", "redis": {"topology": "standalone"}}}) == 201
    while call("GET", f"/apis/apps/v1/namespaces/default/statefulsets/{name}") != 200: time.sleep(0.002)
    latencies.append((time.perf_counter() - started) * 1000)
latencies.sort(); q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))]
print(f"| PylonRack created -> its StatefulSet exists ({racks} racks, one after another) | p50 {q(0.5):.1f} ms | p99 {q(0.99):.1f} ms | max {latencies[-1]:.1f} ms |")
def sample():
    fields = open(f"/proc/{operator}/stat").read().rsplit(")", 1)[1].split()
    rss = [l for l in open(f"/proc/{operator}/status") if l.startswith("VmRSS:")][0].split()[1]
    return int(fields[11]) + int(fields[12]), int(rss)
import os
def metrics():
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
    reconciles = sum(float(v) for v in re.findall(r'^pylon_operator_reconciles_total\{kind="PylonRack"\} (\S+)', text, re.M))
    return reconciles, {verb: float(v) for verb, v in re.findall(r'^pylon_operator_api_requests_total\{verb="(\w+)"\} (\S+)', text, re.M)}
time.sleep(15)
ticks0, _ = sample(); reconciles0, requests0 = metrics(); time.sleep(30); ticks1, rss = sample(); reconciles1, requests1 = metrics()
hz = os.sysconf("SC_CLK_TCK")
print(f"| operator idle with {racks} racks (30 s; every rack reconciled every 15 s) | CPU {(ticks1 - ticks0) / hz / 30 * 100:.1f} % of a core | RSS {rss / 1024:.0f} MiB |")
done = reconciles1 - reconciles0
per = {verb: (requests1.get(verb, 0) - requests0.get(verb, 0)) / max(done, 1) for verb in sorted(set(requests0) | set(requests1))}
print(f"| API requests per idle rack reconcile ({done:.0f} reconciles) | " + ", ".join(f"{verb} {n:.2f}" for verb, n in per.items()) + " |")
PY
