#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the tests and the demo: etcd (tmpfs, no fsync) and
# kube-apiserver (RBAC on), optionally kwok (fake nodes and pods), kube-controller-manager + kube-scheduler, and a
# real node (containerd, runc, CNI, kubelet: node.sh) where pods really run.
#
# usage: testenv.sh up [--with-kwok] [--with-kcm] [--with-node]
#                                                   start (or reuse) it; prints `export KUBECONFIG=...`;
#                                                   --with-node implies --with-kcm and needs root
#        testenv.sh down                            stop exactly the processes `up` started
#        testenv.sh status                          say what runs
#        testenv.sh stop-apiserver                  stop kube-apiserver alone (etcd and the rest keep running)
#        testenv.sh start-apiserver                 start it again, on the same port, with the same kubeconfig
#
# TESTENV_DIR (default: .testenv/run in the repo) holds the kubeconfig, PKI, PID files and logs/.
# TESTENV_API_PORT / TESTENV_ETCD_PORT pin ports (default: free ones). Binaries come from build.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
. "$here/versions.sh"
TESTENV_DIR=${TESTENV_DIR:-$_testenv_repo/.testenv/run}
mkdir -p "$TESTENV_DIR"
TESTENV_DIR=$(cd "$TESTENV_DIR" && pwd)
PKI=$TESTENV_DIR/pki
LOGS=$TESTENV_DIR/logs
KUBECONFIG_FILE=$TESTENV_DIR/kubeconfig
# Present when this control plane serves a real node: the API server then runs the ServiceAccount admission
# plugin (pods get their token) and the garbage collector (a deleted Deployment takes its pods along).
NODE_MODE=$TESTENV_DIR/node.mode

log() { printf 'testenv: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# A process counts as alive only if it exists and is not a zombie: a stopped process whose parent never reaps it
# still answers `kill -0`.
pid_running() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}
pid_alive() { [ -f "$TESTENV_DIR/$1.pid" ] && pid_running "$(cat "$TESTENV_DIR/$1.pid")"; }

# stop_process NAME: SIGTERM, up to 10 s to exit (kube-apiserver drains its connections), then SIGKILL; waits until
# it is really gone.
stop_process() {
  local name=$1 pid n
  [ -f "$TESTENV_DIR/$name.pid" ] || return 0
  pid=$(cat "$TESTENV_DIR/$name.pid")
  if kill "$pid" 2>/dev/null; then
    for n in $(seq 1 100); do pid_running "$pid" || break; sleep 0.1; done
    if pid_running "$pid"; then
      kill -9 "$pid" 2>/dev/null || true
      for n in $(seq 1 50); do pid_running "$pid" || break; sleep 0.1; done
    fi
  fi
  rm -f "$TESTENV_DIR/$name.pid"
}

# shellcheck source=node.sh
. "$here/node.sh"

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }

port_free() { python3 -c 'import socket,sys;s=socket.socket();s.bind(("127.0.0.1",int(sys.argv[1])))' "$1" 2>/dev/null; }

# Whether a server that sets SO_REUSEADDR, as Go's listeners do, can bind the port: connections of a stopped server
# linger in TIME_WAIT for a minute and fail a plain bind, but not that one.
port_reusable() {
  python3 -c 'import socket,sys
s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(("127.0.0.1",int(sys.argv[1])));s.listen()' "$1" 2>/dev/null
}

pick_port() { # pick_port VAR_VALUE NAME: the pinned port if free, else a free one
  local pinned=$1 name=$2
  if [ -n "$pinned" ]; then
    port_free "$pinned" || die "port $pinned for $name is taken on 127.0.0.1; free it or unset the variable pinning it"
    echo "$pinned"
  else
    free_port
  fi
}

# wait_for SECONDS DESCRIPTION LOGFILE PIDNAME COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local secs=$1 what=$2 logfile=$3 pidname=$4
  shift 4
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    pid_alive "$pidname" || die "$what exited during start; see $logfile"
    [ $SECONDS -lt $deadline ] || die "$what not ready after ${secs}s; see $logfile"
    sleep 0.2
  done
}

make_pki() {
  [ -f "$PKI/token" ] && return 0
  mkdir -p "$PKI"
  (
    cd "$PKI"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=clb-operator-testenv-ca" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' >san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 \
      -extfile san.ext 2>/dev/null
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >token.tmp
    printf '%s,testenv-admin,uid-admin,"system:masters"\n' "$(cat token.tmp)" >tokens.csv
    mv token.tmp token
  ) || die "creating the test PKI with openssl failed"
}

write_kubeconfig() {
  local port=$1
  cat >"$KUBECONFIG_FILE.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster: {server: "https://127.0.0.1:$port", certificate-authority: "$PKI/ca.crt"}
users:
- name: admin
  user: {token: "$(cat "$PKI/token")"}
contexts:
- name: testenv
  context: {cluster: testenv, user: admin}
current-context: testenv
EOF
  mv "$KUBECONFIG_FILE.tmp" "$KUBECONFIG_FILE"
}

api_ready() {
  curl -sf --max-time 2 --cacert "$PKI/ca.crt" -H "Authorization: Bearer $(cat "$PKI/token")" \
    "https://127.0.0.1:$(cat "$TESTENV_DIR/api.port")/readyz"
}

start_etcd() {
  pid_alive etcd && return 0
  local port peer data
  port=$(pick_port "${TESTENV_ETCD_PORT:-}" etcd)
  peer=$(free_port)
  # tmpfs + no fsync: the control plane is throw-away, and disk syncs dominate etcd latency on small machines.
  data=$(mktemp -d /dev/shm/clb-testenv-etcd.XXXXXX)
  echo "$data" >"$TESTENV_DIR/etcd.data"
  echo "$port" >"$TESTENV_DIR/etcd.port"
  "$ETCD_BIN/etcd" --name testenv --data-dir "$data" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "testenv=http://127.0.0.1:$peer" --unsafe-no-fsync --log-level warn \
    --quota-backend-bytes $((2 << 30)) >"$LOGS/etcd.log" 2>&1 &
  echo $! >"$TESTENV_DIR/etcd.pid"
  wait_for 30 etcd "$LOGS/etcd.log" etcd curl -sf "http://127.0.0.1:$port/health"
}

start_apiserver() {
  pid_alive apiserver && return 0
  local port=${1:-}
  if [ -n "$port" ]; then
    # A restart on the port of the last run: the old process is gone (stop_process waits for that), and its
    # connections in TIME_WAIT do not keep kube-apiserver from binding; another listener would.
    local n
    for n in $(seq 1 50); do port_reusable "$port" && break; sleep 0.1; done
    port_reusable "$port" || die "port $port of the stopped kube-apiserver is taken by another process"
  else
    port=$(pick_port "${TESTENV_API_PORT:-}" kube-apiserver)
  fi
  echo "$port" >"$TESTENV_DIR/api.port"
  # ServiceAccount admission and the GC finalizers need kube-controller-manager; they are off so that pods can be
  # created and objects deleted with or without it, unless a real node is wanted. Priority and fairness is off so
  # test bursts are not throttled.
  local cluster_flags=(--disable-admission-plugins=ServiceAccount --enable-garbage-collector=false)
  [ -f "$NODE_MODE" ] && cluster_flags=()
  "$K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$(cat "$TESTENV_DIR/etcd.port")" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$port" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --authorization-mode=RBAC --allow-privileged=true \
    --enable-priority-and-fairness=false --profiling=false \
    "${cluster_flags[@]}" >"$LOGS/apiserver.log" 2>&1 &
  echo $! >"$TESTENV_DIR/apiserver.pid"
  write_kubeconfig "$port"
  wait_for 120 kube-apiserver "$LOGS/apiserver.log" apiserver api_ready
}

start_kwok() {
  pid_alive kwok && return 0
  # kwok manages only nodes annotated kwok.x-k8s.io/node=fake, and the pods bound to them.
  "$KWOK_BIN/kwok" --kubeconfig="$KUBECONFIG_FILE" --config="$KWOK_BIN/stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 --cidr=10.244.0.0/16 --node-ip=10.0.0.2 \
    >"$LOGS/kwok.log" 2>&1 &
  echo $! >"$TESTENV_DIR/kwok.pid"
  sleep 0.5
  pid_alive kwok || die "kwok exited during start; see $LOGS/kwok.log"
}

start_kcm() {
  if ! pid_alive kcm; then
    "$K8S_BIN/kube-controller-manager" --kubeconfig="$KUBECONFIG_FILE" --leader-elect=false --secure-port=0 \
      --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
      --use-service-account-credentials=false --controllers='*,-serviceaccount-token' \
      >"$LOGS/kcm.log" 2>&1 &
    echo $! >"$TESTENV_DIR/kcm.pid"
  fi
  if ! pid_alive scheduler; then
    "$K8S_BIN/kube-scheduler" --kubeconfig="$KUBECONFIG_FILE" --authentication-kubeconfig="$KUBECONFIG_FILE" \
      --authorization-kubeconfig="$KUBECONFIG_FILE" --leader-elect=false \
      --bind-address=127.0.0.1 --secure-port="$(free_port)" >"$LOGS/scheduler.log" 2>&1 &
    echo $! >"$TESTENV_DIR/scheduler.pid"
  fi
  sleep 0.5
  pid_alive kcm || die "kube-controller-manager exited during start; see $LOGS/kcm.log"
  pid_alive scheduler || die "kube-scheduler exited during start; see $LOGS/scheduler.log"
}

up() {
  local with_kwok=0 with_kcm=0 with_node=0 arg
  for arg in "$@"; do
    case "$arg" in
    --with-kwok) with_kwok=1 ;;
    --with-kcm) with_kcm=1 ;;
    --with-node) with_node=1 with_kcm=1 ;;
    *) die "unknown option '$arg' (expected --with-kwok, --with-kcm or --with-node)" ;;
    esac
  done
  command -v openssl >/dev/null || die "openssl is needed (apt-get install openssl)"
  command -v curl >/dev/null || die "curl is needed (apt-get install curl)"
  local targets=(core)
  [ $with_kcm = 1 ] && targets+=(kcm)
  [ $with_node = 1 ] && targets+=(node) && node_preflight_tools
  "$here/build.sh" "${targets[@]}"
  mkdir -p "$LOGS"
  local start=$SECONDS
  if pid_alive apiserver && ! pid_alive etcd; then die "kube-apiserver runs without its etcd; run '$0 down' first"; fi
  if [ $with_node = 1 ] && pid_alive apiserver && [ ! -f "$NODE_MODE" ]; then
    die "this control plane was started without --with-node; run '$0 down' first"
  fi
  [ $with_node = 1 ] && touch "$NODE_MODE"
  make_pki
  start_etcd
  start_apiserver
  [ $with_kwok = 1 ] && start_kwok
  [ $with_kcm = 1 ] && start_kcm
  [ $with_node = 1 ] && start_node
  log "ready in $((SECONDS - start)) s (logs: $LOGS)"
  echo "export KUBECONFIG=$KUBECONFIG_FILE"
}

down() {
  local c
  stop_node
  for c in scheduler kcm kwok apiserver etcd; do
    stop_process "$c"
  done
  rm -f "$NODE_MODE"
  if [ -f "$TESTENV_DIR/etcd.data" ]; then
    rm -rf "$(cat "$TESTENV_DIR/etcd.data")"
    rm -f "$TESTENV_DIR/etcd.data"
  fi
  log "stopped"
}

status() {
  local c
  for c in etcd apiserver kwok kcm scheduler containerd kubelet; do
    if pid_alive $c; then echo "$c: running (pid $(cat "$TESTENV_DIR/$c.pid"))"; else echo "$c: stopped"; fi
  done
  [ -f "$KUBECONFIG_FILE" ] && echo "kubeconfig: $KUBECONFIG_FILE"
}

stop_apiserver_alone() {
  pid_alive etcd || die "no test control plane runs in $TESTENV_DIR"
  stop_process apiserver
  log "kube-apiserver stopped (port $(cat "$TESTENV_DIR/api.port"))"
}

start_apiserver_again() {
  pid_alive etcd || die "no test control plane runs in $TESTENV_DIR; use 'up'"
  [ -f "$TESTENV_DIR/api.port" ] || die "no port of an earlier kube-apiserver in $TESTENV_DIR"
  local start=$SECONDS
  start_apiserver "$(cat "$TESTENV_DIR/api.port")"
  log "kube-apiserver ready again in $((SECONDS - start)) s"
}

case "${1:-}" in
up)
  shift
  up "$@"
  ;;
down) down ;;
status) status ;;
stop-apiserver) stop_apiserver_alone ;;
start-apiserver) start_apiserver_again ;;
*) die "usage: $0 up [--with-kwok] [--with-kcm] [--with-node] | down | status | stop-apiserver | start-apiserver" ;;
esac
