# Versions of the test control plane and where their binaries are cached; sourced by build.sh and testenv.sh.
# The wrapper modules (k8s/, etcd/, kwok/, helm/, kube-score/) pin the same versions in their go.mod files.

K8S_VERSION=v1.34.4
K8S_MINOR=34
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
KUBE_SCORE_VERSION=v1.20.0
GO_MIN=1.26

_testenv_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# TESTENV_CACHE: where built binaries live, keyed by version. The default is git-ignored inside the repo; CI points
# it at a folder outside the clone so that a fresh clone on a warm machine skips the Go builds.
TESTENV_CACHE=${TESTENV_CACHE:-$_testenv_repo/.testenv/cache}
K8S_BIN=$TESTENV_CACHE/bin/kubernetes-$K8S_VERSION
ETCD_BIN=$TESTENV_CACHE/bin/etcd-$ETCD_VERSION
KWOK_BIN=$TESTENV_CACHE/bin/kwok-$KWOK_VERSION
HELM_BIN=$TESTENV_CACHE/bin/helm-$HELM_VERSION
KUBE_SCORE_BIN=$TESTENV_CACHE/bin/kube-score-$KUBE_SCORE_VERSION
# The pod sandbox image of the real node, built from tests/testenv/node/pause.c (keyed by its version here).
PAUSE_REF=registry.k8s.io/pause:3.10-clb-testenv.1
PAUSE_IMAGE=$TESTENV_CACHE/bin/pause-3.10-clb-testenv.1/pause.oci.tar
