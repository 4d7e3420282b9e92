#!/usr/bin/env bash
# Builds the control-plane binaries the tests and the demo run (kube-apiserver, kubectl, etcd, kwok, and on
# request kube-controller-manager, kube-scheduler, helm and the real node's kubelet and pause image) from the Go
# module proxy, using the wrapper modules
# beside this script. Each binary is cached under $TESTENV_CACHE/bin/<component>-<version>/ and rebuilt only
# when missing, so a warm machine pays nothing.
#
# usage: build.sh [core|kcm|helm|node|kube-score|all]...    (default: core = kube-apiserver kubectl etcd kwok)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
. "$here/versions.sh"

export GOTOOLCHAIN=local # a surprise `go 1.27` requirement must fail loudly, not download a toolchain
export CGO_ENABLED=0
export GOFLAGS=-mod=mod

log() { printf 'testenv-build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "go is not installed; install Go ${GO_MIN} or newer"

# ldflags that stamp the Kubernetes version, as upstream's hack/lib/version.sh does; without them /version
# says v0.0.0-master and kubectl/helm version checks misbehave.
k8s_ldflags() {
  local ld="-s -w" kv
  for kv in "gitVersion=$K8S_VERSION" gitMajor=1 "gitMinor=$K8S_MINOR" gitTreeState=clean \
    buildDate=1970-01-01T00:00:00Z; do
    ld="$ld -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
  done
  printf '%s' "$ld"
}

# build_one NAME DIR OUTDIR PKG LDFLAGS: builds PKG of the wrapper module DIR into OUTDIR/NAME unless present.
build_one() {
  local name=$1 dir=$2 out=$3 pkg=$4 ld=$5
  if [ -x "$out/$name" ]; then return 0; fi
  mkdir -p "$out"
  log "building $name into $out (cold builds take minutes; see tests/testenv/MEASUREMENTS.md)"
  local start=$SECONDS
  (cd "$here/$dir" && go build -trimpath -tags selinux,notest -ldflags "$ld" -o "$out/$name.tmp" "$pkg") ||
    die "go build of $name failed (module $here/$dir); see the output above"
  mv "$out/$name.tmp" "$out/$name"
  log "built $name in $((SECONDS - start)) s"
}

build_core() {
  local ld
  ld=$(k8s_ldflags)
  build_one kube-apiserver k8s "$K8S_BIN" k8s.io/kubernetes/cmd/kube-apiserver "$ld"
  build_one kubectl k8s "$K8S_BIN" k8s.io/kubernetes/cmd/kubectl "$ld"
  build_one etcd etcd "$ETCD_BIN" go.etcd.io/etcd/server/v3 \
    "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
  build_one kwok kwok "$KWOK_BIN" sigs.k8s.io/kwok/cmd/kwok "-s -w"
  kwok_stages
}

# kwok does nothing without stages; take the "fast" ones from the module kwok was built from, so the control
# plane does not depend on the module cache later.
kwok_stages() {
  [ -s "$KWOK_BIN/stages.yaml" ] && return 0
  local dir f
  dir=$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok) || die "cannot locate the kwok module"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    cat "$dir/kustomize/stage/$f"
    echo '---'
  done >"$KWOK_BIN/stages.yaml.tmp"
  mv "$KWOK_BIN/stages.yaml.tmp" "$KWOK_BIN/stages.yaml"
}

build_kcm() {
  local ld
  ld=$(k8s_ldflags)
  build_one kube-controller-manager k8s "$K8S_BIN" k8s.io/kubernetes/cmd/kube-controller-manager "$ld"
  build_one kube-scheduler k8s "$K8S_BIN" k8s.io/kubernetes/cmd/kube-scheduler "$ld"
}

build_helm() {
  build_one helm helm "$HELM_BIN" helm.sh/helm/v3/cmd/helm \
    "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
}

# kube-score, which tests/chart.rs runs on the rendered chart.
build_kube_score() {
  build_one kube-score kube-score "$KUBE_SCORE_BIN" github.com/zegl/kube-score/cmd/kube-score \
    "-s -w -X main.version=$KUBE_SCORE_VERSION"
}

# The real node (testenv.sh up --with-node): the kubelet of the API server's version, and the pod sandbox image
# containerd is told to use, compiled from node/pause.c because no registry can be pulled from here.
build_node() {
  build_one kubelet k8s "$K8S_BIN" k8s.io/kubernetes/cmd/kubelet "$(k8s_ldflags)"
  [ -s "$PAUSE_IMAGE" ] && return 0
  command -v gcc >/dev/null || die "gcc is needed for the pause image (apt-get install gcc libc6-dev)"
  local root
  root=$(mktemp -d)
  mkdir -p "$(dirname "$PAUSE_IMAGE")"
  gcc -static -Os -s -o "$root/pause" "$here/node/pause.c" || die "compiling node/pause.c failed"
  OCI_ENTRYPOINT='["/pause"]' OCI_CMD='[]' OCI_USER=65535:65535 OCI_CREATED_BY=tests/testenv/build.sh \
    python3 "$_testenv_repo/deploy/oci-image.py" "$root" "$PAUSE_REF" "$PAUSE_IMAGE.tmp" >/dev/null ||
    die "assembling the pause image failed"
  rm -rf "$root"
  mv "$PAUSE_IMAGE.tmp" "$PAUSE_IMAGE"
}

[ $# -gt 0 ] || set -- core
for what in "$@"; do
  case "$what" in
  core) build_core ;;
  kcm) build_kcm ;;
  helm) build_helm ;;
  node) build_node ;;
  kube-score) build_kube_score ;;
  all) build_core && build_kcm && build_helm && build_node && build_kube_score ;;
  *) die "unknown target '$what' (expected core, kcm, helm, node, kube-score or all)" ;;
  esac
done
