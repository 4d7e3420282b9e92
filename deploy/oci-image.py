#!/usr/bin/env python3
"""Assembles the clb-operator OCI image from a root filesystem folder, without Docker: one layer, the image
config (entrypoint, command, user 65532), an OCI image layout (oci-layout, index.json, blobs/) and Docker's
manifest.json beside it, all in one tarball that `docker load`, `ctr images import` and `crane push` accept.

usage: oci-image.py ROOTFS NAME:TAG OUT.tar

OCI_ENTRYPOINT, OCI_CMD (JSON lists) and OCI_USER override the operator's entrypoint, command and user, so that
the test node's pause image (tests/testenv/node/pause.c) is assembled the same way.

Deterministic: files sorted, owned by root (except /home/nonroot), mtime 0, gzip without a timestamp, so the
same inputs give the same digests.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

rootfs, ref, out = sys.argv[1], sys.argv[2], sys.argv[3]
name, tag = ref.rsplit(":", 1)


def layer_tar(root):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for n in sorted(dirnames + filenames):
                paths.append(os.path.join(dirpath, n))
        for path in sorted(paths):
            rel = os.path.relpath(path, root)
            info = tar.gettarinfo(path, arcname=rel)
            info.mtime = 0
            owner = 65532 if rel.startswith("home/nonroot") else 0
            info.uid = info.gid = owner
            info.uname = info.gname = ""
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


raw = layer_tar(rootfs)
diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
gz = io.BytesIO()
with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
    g.write(raw)
layer_digest, layer = blob(gz.getvalue())
config = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "User": os.environ.get("OCI_USER", "65532:65532"),
        "Entrypoint": json.loads(os.environ.get("OCI_ENTRYPOINT", '["/clb-operator"]')),
        "Cmd": json.loads(os.environ.get("OCI_CMD", '["run"]')),
        "Env": ["PATH=/", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
        "WorkingDir": "/",
        "Labels": {"org.opencontainers.image.title": name, "org.opencontainers.image.version": tag},
    },
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    "history": [{"created_by": os.environ.get("OCI_CREATED_BY", "deploy/image.sh")}],
}
config_digest, config_bytes = blob(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config_bytes)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": len(layer)}],
}
manifest_digest, manifest_bytes = blob(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": len(manifest_bytes),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": f"docker.io/library/{ref}" if "/" not in name else ref,
                        "org.opencontainers.image.ref.name": tag},
    }],
}
docker_manifest = [{
    "Config": "blobs/sha256/" + config_digest.split(":")[1],
    "RepoTags": [ref],
    "Layers": ["blobs/sha256/" + layer_digest.split(":")[1]],
}]

files = [
    ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
    ("index.json", json.dumps(index, sort_keys=True).encode()),
    ("manifest.json", json.dumps(docker_manifest).encode()),
]
for digest, data in [(config_digest, config_bytes), (layer_digest, layer), (manifest_digest, manifest_bytes)]:
    files.append(("blobs/sha256/" + digest.split(":")[1], data))
with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
    for d in ["blobs", "blobs/sha256"]:
        info = tarfile.TarInfo(d)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(info)
    for path, data in files:
        info = tarfile.TarInfo(path)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))
print(json.dumps({"image": ref, "manifest": manifest_digest, "layer_bytes": len(layer),
                  "uncompressed_bytes": len(raw), "tarball": out, "tarball_bytes": os.path.getsize(out)}))
