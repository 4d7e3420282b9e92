#!/usr/bin/env bash
# Builds the clb-operator image without Docker: the release binary, the C libraries it links (it is a glibc
# binary here; the Dockerfile's musl build is static), CA certificates for the CLB API, and /etc/passwd with
# nonroot (65532) - nothing else, no shell. Writes an OCI tarball that `docker load`, `ctr images import` and
# `crane push` accept:
#
#   bash deploy/image.sh                  # -> target/image/clb-operator-<version>.oci.tar
#   docker load -i target/image/clb-operator-0.1.0.oci.tar
#   ctr -n k8s.io images import target/image/clb-operator-0.1.0.oci.tar
#   crane push target/image/clb-operator-0.1.0.oci.tar REGISTRY/clb-operator:0.1.0
#
# IMAGE (default clb-operator:<version of Cargo.toml>) names it; CARGO_TARGET_DIR is honoured.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image=${IMAGE:-clb-operator:$version}
target=${CARGO_TARGET_DIR:-$repo/target}
cargo build --release --locked -q --bin clb-operator
bin=$target/release/clb-operator

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
install -m 0755 "$bin" "$rootfs/clb-operator"
# The libraries the binary links, at the paths its loader looks for them (ldd prints "name => path" and the
# loader's own path).
ldd "$bin" | awk '/=> \//{print $3} /^[ \t]*\/.*ld-linux/{print $1}' | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/home/nonroot" "$rootfs/tmp"
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"

mkdir -p "$repo/target/image"
out=$repo/target/image/${image//[:\/]/-}.oci.tar
python3 deploy/oci-image.py "$rootfs" "$image" "$out"
