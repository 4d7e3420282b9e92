#!/usr/bin/env bash
# The quick-start demo: a local control plane with kwok nodes, the CLB emulator and the operator, then a short
# scenario - three nodes are bound, one is drained for removal, its CVM is deregistered - left running to play
# with. `tests/demo.sh down` stops everything it started.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export TESTENV_DIR=${TESTENV_DIR:-$repo/.testenv/demo}
demo=$TESTENV_DIR/demo
LB=lb-demo0001
TCP=lbl-tcp00001
HTTP=lbl-http0001

stop_pid() { [ -f "$demo/$1.pid" ] && kill "$(cat "$demo/$1.pid")" 2>/dev/null; rm -f "$demo/$1.pid"; }

if [ "${1:-}" = down ]; then
  stop_pid operator || true
  stop_pid emulator || true
  bash tests/testenv/testenv.sh down
  exit 0
fi

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
mkdir -p "$demo"

say "Building the operator and the control plane (the first run builds Kubernetes from source: ~10 min)"
cargo build --locked -q
bin=$repo/target/debug/clb-operator
[ -n "${CARGO_TARGET_DIR:-}" ] && bin=$CARGO_TARGET_DIR/debug/clb-operator
eval "$(bash tests/testenv/testenv.sh up --with-kwok)"
# shellcheck source=testenv/versions.sh
. tests/testenv/versions.sh
kubectl() { "$K8S_BIN/kubectl" "$@"; }

say "Starting the CLB emulator (an application CLB with a TCP listener and an HTTP rule; tasks take 5 s) and the operator (CLB API 3.0)"
stop_pid operator || true
stop_pid emulator || true
export TENCENTCLOUD_SECRET_ID=AKIDdemo000000000000000000000000000 TENCENTCLOUD_SECRET_KEY=demo-secret-key-not-for-production
emu_port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$bin" emulator --listen "127.0.0.1:$emu_port" --task-duration 5s \
  --listener "$LB/$TCP=TCP:80" --listener "$LB/$HTTP=HTTP:80,loc-web00001=shop.example.com/" \
  >"$demo/emulator.log" 2>&1 &
echo $! >"$demo/emulator.pid"
endpoint=http://127.0.0.1:$emu_port/
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$emu_port/emulator/state" >/dev/null && break; sleep 0.1; done
"$bin" crd | kubectl apply -f - >/dev/null
kubectl wait --for condition=established crd/clbbackendbindings.clb.tke.dev >/dev/null
"$bin" run --clb-endpoint "$endpoint" --http-addr 127.0.0.1:0 >"$demo/operator.log" 2>&1 &
echo $! >"$demo/operator.pid"

say "Three kwok nodes appear, each with a TKE provider ID naming its CVM"
for i in 1 2 3; do
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: demo-node-$i
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/hostname: demo-node-$i, role: web}
spec: {providerID: "qcloud:///100003/ins-demo000$i"}
status:
  allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
EOF
done
kubectl get nodes -o custom-columns=NAME:.metadata.name,PROVIDER-ID:.spec.providerID

say "A ClbBackendBinding binds the role=web nodes to both listeners of $LB (NodePorts 30080 and 30081)"
kubectl create namespace shop --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f - <<EOF
apiVersion: clb.tke.dev/v1alpha1
kind: ClbBackendBinding
metadata: {name: web, namespace: shop}
spec:
  loadBalancerId: $LB
  region: gz
  targets: {nodeSelector: {matchLabels: {role: web}}}
  listeners:
    - {listenerId: $TCP, port: 30080}
    - {listenerId: $HTTP, domain: shop.example.com, url: /, port: 30081}
EOF
kubectl -n shop wait --for=condition=Ready cbb/web --timeout=60s >/dev/null
kubectl -n shop get cbb web

say "demo-node-3 is drained for removal, as cluster-autoscaler does it: taint, then drain"
kubectl taint node demo-node-3 ToBeDeletedByClusterAutoscaler="$(date +%s)":NoSchedule >/dev/null
kubectl drain demo-node-3 --ignore-daemonsets --force --delete-emptydir-data >/dev/null 2>&1
for _ in $(seq 100); do
  kubectl -n shop get cbb web -o jsonpath='{.status.tasks[0].state}' | grep -q Running && break
  sleep 0.1
done
echo "status while the Deregister task runs:"
kubectl -n shop get cbb web -o jsonpath='{range .status.backends[*]}  {.instanceId} {.listenerId}:{.port} {.state} {.requestId} {.reason}{"\n"}{end}'
kubectl -n shop get cbb web -o jsonpath='{range .status.tasks[*]}  task {.requestId}: {.action} {.instanceIds} {.state}{"\n"}{end}'
kubectl -n shop wait --for=condition=Ready cbb/web --timeout=60s >/dev/null
echo "after the task finished:"
kubectl -n shop get cbb web -o jsonpath='{range .status.tasks[*]}  task {.requestId}: {.action} {.instanceIds} {.state}{"\n"}{end}'
kubectl -n shop get cbb web

say "The emulator's view of $LB"
curl -s "http://127.0.0.1:$emu_port/emulator/state" | python3 -c '
import json, sys
s = json.load(sys.stdin)
for lb, targets in s.get("targets", {}).items():
    for t in targets:
        print("  %s %s %s:%s weight %s" % (lb, t["listenerId"], t["instanceId"], t["port"], t["weight"]))
for c in s["calls"]:
    if "egister" in c["action"]:
        print("  call %s %s -> %s" % (c["action"], ",".join(c["instanceIds"]), c.get("error") or "ok"))'

cat <<EOF

Everything keeps running. Try:
  export KUBECONFIG=$TESTENV_DIR/kubeconfig
  $K8S_BIN/kubectl get cbb -A
  $K8S_BIN/kubectl explain cbb.spec.drain
  curl -s http://127.0.0.1:$emu_port/emulator/state
  logs: $demo/operator.log, $demo/emulator.log
Stop it all with: bash tests/demo.sh down
EOF
