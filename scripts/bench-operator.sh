#!/usr/bin/env bash
# The operator's benchmark: a real etcd + kube-apiserver, a broker, and pylon-operator (release).
#   1. time from creating a PylonRack to its StatefulSet existing, p50/p99 over RACKS racks
#      (created one after another);
#   2. the operator's CPU and memory with those racks, idle for 30 s (it reconciles every rack and
#      re-reads its lag from Kafka every 15 s), and the API requests each of those reconciles
#      costs, by verb (from its /metrics);
#   3. pod creation through the API server with the sidecar-injection webhook (opted-in pods) and
#      without it (pods that did not opt in), side by side, PODS of each.
# Usage: scripts/bench-operator.sh   env: RACKS=100 PODS=100
set -euo pipefail
cd "$(dirname "$0")/.."
RACKS=${RACKS:-100}
[ -x .build/release/pylon-operator ] || swift build -c release
source scripts/lib.sh
start_kube
kafka=$(free_port)
start_broker "$kafka"
admin=$(free_port)
webhook=$(free_port)
# The webhook's configuration first (pointing at the operator on loopback): the operator puts its
# CA into it when it starts.
python3 - "$KUBE_PORT" "$KUBE_TOKEN" "$KUBE_CA" "$webhook" <<'PY'
import json, ssl, sys, urllib.request, yaml
port, token, ca, webhook = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
configuration = next(d for d in yaml.safe_load_all(open("manifests/webhook/webhook.yaml")) if d and d["kind"] == "MutatingWebhookConfiguration")
for hook in configuration["webhooks"]: hook["clientConfig"] = {"url": f"https://127.0.0.1:{webhook}/mutate-pods"}
request = urllib.request.Request(f"https://127.0.0.1:{port}/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", method="POST",
                                 data=json.dumps(configuration).encode(), headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
urllib.request.urlopen(request, context=ssl.create_default_context(cafile=ca))
PY
.build/release/pylon-operator --kubeconfig "$KUBECONFIG_FILE" --namespace default --admin "127.0.0.1:$admin" --log-level warning \
  --webhook "127.0.0.1:$webhook" --webhook-hosts 127.0.0.1 > "$WORK/operator.log" 2>&1 &
track $!; operator=$!
python3 - "$KUBE_PORT" "$KUBE_TOKEN" "$KUBE_CA" "$kafka" "$RACKS" "$operator" "$admin" "${PODS:-100}" <<'PY'
import json, re, ssl, sys, time, urllib.request, urllib.error
port, token, ca, kafka, racks, operator, admin, pods = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
context = ssl.create_default_context(cafile=ca)
base = f"https://127.0.0.1:{port}"
def call(method, path, body=None, content="application/json"):
    data = body.encode() if isinstance(body, str) else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(base + path, method=method, data=data, headers={"Authorization": f"Bearer {token}", "Content-Type": content})
    try:
        with urllib.request.urlopen(request, context=context) as response:
            call.body = response.read()
            return response.status
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

# 3. Pods through the webhook: opted in (injected) and not (never sent to it), interleaved.
while True:  # the operator has put its CA into the configuration
    with urllib.request.urlopen(urllib.request.Request(base + "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/pylon-sidecar-injector",
                                headers={"Authorization": f"Bearer {token}"}), context=context) as response:
        if all(h["clientConfig"].get("caBundle") for h in json.load(response)["webhooks"]): break
    time.sleep(0.2)
assert call("POST", "/api/v1/namespaces/default/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}) in (201, 409)
assert call("POST", "/apis/pylon.io/v1alpha1/namespaces/default/pylonracks",
            {"apiVersion": "pylon.io/v1alpha1", "kind": "PylonRack", "metadata": {"name": "app"}, "spec": {"world": "bench", "redis": {"topology": "injected"}}}) == 201
timings = {"plain": [], "injected": []}
for i in range(pods):
    for kind in ("plain", "injected"):
        labels = {"pylon.io/inject": "true", "pylon.io/rack": "app"} if kind == "injected" else {"app": "plain"}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{kind}-{i}", "labels": labels},
               "spec": {"automountServiceAccountToken": False, "containers": [{"name": "redis", "image": "redis:7.0"}]}}
        started = time.perf_counter()
        assert call("POST", "/api/v1/namespaces/default/pods", pod) == 201
        timings[kind].append((time.perf_counter() - started) * 1000)
        containers = [c["name"] for c in json.loads(call.body)["spec"]["containers"]]
        assert containers == (["redis", "pylon-sidecar"] if kind == "injected" else ["redis"]), containers
for kind in ("plain", "injected"): timings[kind].sort()
p = lambda kind, q: timings[kind][min(pods - 1, int(q * pods))]
print(f"| pod created, not opted in (never sent to the webhook), {pods} pods | p50 {p('plain', 0.5):.1f} ms | p99 {p('plain', 0.99):.1f} ms |")
print(f"| pod created with the sidecar injected (API server -> webhook over HTTPS -> patch), {pods} pods | p50 {p('injected', 0.5):.1f} ms | p99 {p('injected', 0.99):.1f} ms |")
print(f"| ratio injected / plain | p50 {p('injected', 0.5) / p('plain', 0.5):.2f}x | p99 {p('injected', 0.99) / p('plain', 0.99):.2f}x |")
PY
