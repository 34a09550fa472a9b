"""lamina's demo: build a tiny OCI image, import it into a store under a local folder on the
default driver, create a container, mount it, show its files, and list the store with the
`lamina` CLI (and with the Go `containers-storage` tool when it is installed).

Usage: python scripts/demo.py [STORE_DIR]   (default: ./demo-store)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

from lamina.store import Store
from lamina.transfer import import_image

EPOCH = 1704067200  # fixed timestamps: the image is the same on every run


def layer_tar(files: dict[str, bytes], whiteouts: tuple[str, ...] = ()) -> bytes:
    """An uncompressed layer tar holding *files* (with their parent dirs) and AUFS whiteouts."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = sorted({os.path.dirname(p) for p in (*files, *whiteouts) if os.path.dirname(p)})
        for d in entries:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        members = dict(files)
        for path in whiteouts:
            members[os.path.join(os.path.dirname(path), ".wh." + os.path.basename(path))] = b""
        for path in sorted(members):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(members[path]), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(members[path]))
    return buf.getvalue()


def write_oci_layout(root: str) -> None:
    """A two-layer OCI image layout: the second layer modifies, adds and (by whiteout) deletes a file."""
    blobs = os.path.join(root, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    layers = [
        layer_tar({"etc/motd": b"layer 1 motd\n", "etc/deleteme": b"going away\n",
                   "usr/bin/hello": b"#!/bin/sh\necho hello from lamina\n"}),
        layer_tar({"etc/motd": b"layer 2 motd\n", "etc/added": b"added in layer 2\n"}, whiteouts=("etc/deleteme",)),
    ]
    config = json.dumps({
        "created": "2024-01-01T00:00:00Z", "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(l).hexdigest() for l in layers]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    **put(gzip.compress(l, mtime=0))} for l in layers],
    }).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **put(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


def main() -> int:
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "demo-store")
    graph, run = os.path.join(root, "graph"), os.path.join(root, "run")
    if os.path.exists(root):  # start over: remove the previous run's store the proper way
        old = Store(graph, run)
        old.shutdown(force=True)
        old.wipe()
        old.shutdown(force=True)
        shutil.rmtree(root)
    store = Store(graph, run)
    print(f"store at {root}, driver {store.driver_name!r}")
    try:
        with tempfile.TemporaryDirectory() as layout:
            write_oci_layout(layout)
            image = import_image(store, f"oci:{layout}:latest", "demo:latest")
        print(f"imported image {image.id[:12]} as {image.names}")
        for layer in store.layers():
            print(f"  layer {layer.id[:12]} diff {layer.uncompressed_digest[:19]}… "
                  f"{layer.uncompressed_size} bytes, parent {layer.parent[:12] or '-'}")
        container = store.create_container(names=["demo-ctr"], image=image.id)
        print(f"container {container.id[:12]} {container.names} on layer {container.layer[:12]}")
        with store.mounted_layer("demo-ctr") as path:
            print(f"mounted at {path}:")
            for dirpath, _, filenames in sorted(os.walk(path)):
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    with open(full, "rb") as f:
                        print(f"  /{os.path.relpath(full, path)}: {f.read().decode().strip()}")
            print("  /etc/deleteme exists:", os.path.exists(os.path.join(path, "etc", "deleteme")))
        lamina = os.path.join(os.path.dirname(sys.executable), "lamina")
        for tool in (lamina, shutil.which("containers-storage")):
            if tool and os.path.exists(tool):
                for what in ("images", "containers"):
                    print(f"$ {os.path.basename(tool)} --graph … --storage-driver {store.driver_name} {what}")
                    proc = subprocess.run([tool, "--graph", graph, "--run", run, "--storage-driver",
                                           store.driver_name, what], capture_output=True, text=True)
                    print(proc.stdout + proc.stderr, end="")
    finally:
        store.shutdown(force=True)  # release the driver's mounts (overlay's home bind mount)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
