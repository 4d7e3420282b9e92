# The real node of the test control plane (`testenv.sh up --with-node`), sourced by testenv.sh: a private
# containerd (its own root, state and socket under $TESTENV_DIR/node) with runc and the Debian CNI plugins, and a
# kubelet of the API server's version that registers as $NODE_NAME.
#
# Networking, and why there is no kube-proxy: every server here binds 127.0.0.1 only, and the API server's
# `kubernetes` Endpoints may not name a loopback address (the API server refuses them), so kube-proxy would have
# nothing to forward to. Instead the pods sit on a bridge of our own ($NODE_BRIDGE, $NODE_GW/24), and one nftables
# table of our own DNATs what pods send to the `kubernetes` Service (10.0.0.1:443) to the API server on
# 127.0.0.1, and what they send to the bridge's own address ($NODE_GW, any TCP port) to the same port on
# 127.0.0.1 - that is how a pod reaches a CLB emulator started on loopback. route_localnet on the bridge lets the
# kernel deliver those packets to loopback. KUBERNETES_SERVICE_HOST/PORT in the pods stay 10.0.0.1/443, as in
# any cluster. `down` removes containers, mounts, cgroups, the bridge and the table it made, and nothing else.

NODE_NAME=clb-testenv-node
NODE_BRIDGE=clbnode0
NODE_GW=10.89.0.1
NODE_SUBNET=10.89.0.0/24
NODE_NFT_TABLE=clb_testenv
NODE=$TESTENV_DIR/node
NODE_SOCK=$NODE/containerd/containerd.sock

node_ctr() { ctr --address "$NODE_SOCK" --namespace k8s.io "$@"; }

node_kubectl() { "$K8S_BIN/kubectl" --kubeconfig="$KUBECONFIG_FILE" "$@"; }

node_preflight_tools() {
  [ "$(id -u)" = 0 ] || die "--with-node runs containerd and a kubelet, which need root"
  local tool
  for tool in containerd ctr runc nft ip; do
    command -v "$tool" >/dev/null || die "--with-node needs $tool (apt-get install containerd runc nftables iproute2)"
  done
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] ||
    die "--with-node needs the CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)"
  return 0
}

node_network() {
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
    ip addr add "$NODE_GW/24" dev "$NODE_BRIDGE"
  fi
  ip link set "$NODE_BRIDGE" up
  echo 1 >"/proc/sys/net/ipv4/conf/$NODE_BRIDGE/route_localnet"
  nft delete table ip "$NODE_NFT_TABLE" 2>/dev/null || true
  nft -f - <<EOF
table ip $NODE_NFT_TABLE {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "$NODE_BRIDGE" ip daddr 10.0.0.1 tcp dport 443 dnat to 127.0.0.1:$(cat "$TESTENV_DIR/api.port")
    iifname "$NODE_BRIDGE" ip daddr $NODE_GW meta l4proto tcp dnat to 127.0.0.1
  }
}
EOF
}

node_containerd() {
  pid_alive containerd && return 0
  mkdir -p "$NODE/containerd" "$NODE/cni/net.d" "$NODE/cni/ipam"
  cat >"$NODE/cni/net.d/10-clb-testenv.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "clb-testenv", "plugins": [
  {"type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$NODE/cni/ipam", "ranges": [[{"subnet": "$NODE_SUBNET",
            "rangeStart": "10.89.0.10", "gateway": "$NODE_GW"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}
EOF
  cat >"$NODE/containerd/config.toml" <<EOF
version = 2
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"
[grpc]
  address = "$NODE_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_REF"
  enable_selinux = false
  # This machine's root lacks CAP_SYS_RESOURCE, so a pod's oom_score_adj cannot go below containerd's own (the
  # kubelet asks -998 for sandboxes); clamp it instead of failing every pod.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE/cni/net.d"
EOF
  containerd --config "$NODE/containerd/config.toml" >"$LOGS/containerd.log" 2>&1 &
  echo $! >"$TESTENV_DIR/containerd.pid"
  wait_for 30 containerd "$LOGS/containerd.log" containerd node_ctr version
  node_ctr images import "$PAUSE_IMAGE" >/dev/null || die "importing the pause image into containerd failed"
}

node_kubelet() {
  pid_alive kubelet && return 0
  mkdir -p "$NODE/kubelet" "$NODE/pod-logs"
  cat >"$NODE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The kubelet's own server and healthz bind loopback only, like everything here.
address: 127.0.0.1
port: $(free_port)
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(free_port)
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: "$PKI/ca.crt"}}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: "unix://$NODE_SOCK"
cgroupDriver: cgroupfs
# This machine has the cgroup v1 hierarchy; Kubernetes 1.34 still runs on it when told not to refuse.
failCgroupV1: false
failSwapOn: false
podCIDR: "$NODE_SUBNET"
podLogsDir: "$NODE/pod-logs"
maxPods: 30
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# A test machine's disk may be nearly full; evict on memory only.
evictionHard: {memory.available: 100Mi}
# No iptables chains of the kubelet's on this machine's firewall: nothing here reads them.
makeIPTablesUtilChains: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  "$K8S_BIN/kubelet" --config="$NODE/kubelet/config.yaml" --kubeconfig="$KUBECONFIG_FILE" \
    --root-dir="$NODE/kubelet/root" --cert-dir="$NODE/kubelet/pki" --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_GW" >"$LOGS/kubelet.log" 2>&1 &
  echo $! >"$TESTENV_DIR/kubelet.pid"
  wait_for 120 "the kubelet's node" "$LOGS/kubelet.log" kubelet node_ready
}

node_ready() {
  [ "$(node_kubectl get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

start_node() {
  [ -x "$K8S_BIN/kubelet" ] && [ -s "$PAUSE_IMAGE" ] || die "kubelet or the pause image missing; run build.sh node"
  node_network
  node_containerd
  node_kubelet
}

# Everything under $NODE that is mounted (pod volumes, overlay snapshots, netns bind mounts), deepest first.
node_mounts() {
  awk -v root="$NODE" '$5 == root || index($5, root "/") == 1 {print $5}' /proc/self/mountinfo | sort -r
}

stop_node() {
  stop_process kubelet
  if pid_alive containerd; then
    local netns id
    # The pods' network namespaces (containerd bind-mounts them under /var/run/netns) die with their last process;
    # note them before the containers go.
    netns=$(node_ctr containers ls -q 2>/dev/null | while read -r id; do
      node_ctr containers info "$id" 2>/dev/null |
        python3 -c 'import json,sys
for ns in json.load(sys.stdin).get("Spec", {}).get("linux", {}).get("namespaces", []):
    if ns.get("type") == "network" and ns.get("path"): print(ns["path"])' 2>/dev/null
    done | sort -u)
    for id in $(node_ctr tasks ls -q 2>/dev/null); do node_ctr tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    sleep 0.5
    for id in $(node_ctr tasks ls -q 2>/dev/null); do node_ctr tasks delete -f "$id" >/dev/null 2>&1 || true; done
    stop_process containerd
    for id in $netns; do umount "$id" 2>/dev/null || true; rm -f "$id"; done
  fi
  # Shims outlive containerd by design; ours carry our socket in their arguments.
  pkill -9 -f "containerd-shim.* -address $NODE_SOCK" 2>/dev/null || true
  local m c
  for m in $(node_mounts); do umount -l "$m" 2>/dev/null || true; done
  # The kubelet's pod cgroups (cgroupfs driver), deepest first.
  for c in /sys/fs/cgroup/*/kubepods; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # The containers' logs outlive the node, for a failed test to be read.
  if [ -d "$NODE/pod-logs" ]; then rm -rf "$LOGS/pod-logs" && cp -rL "$NODE/pod-logs" "$LOGS/pod-logs" 2>/dev/null || true; fi
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  nft delete table ip "$NODE_NFT_TABLE" 2>/dev/null || true
  [ -d "$NODE" ] && [ -z "$(node_mounts)" ] && rm -rf "$NODE"
  return 0
}
