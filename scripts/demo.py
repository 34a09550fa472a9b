"""lamina's demo: a store under a local folder on the default driver, with two layers, an image,
a container, a mount, and the same store listed by the `lamina` CLI (and by the Go tool if present).

Usage: python scripts/demo.py [STORE_DIR]   (default: ./demo-store)
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile

from lamina.store import Store


def tar_of(files: dict[str, bytes], whiteouts: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({os.path.dirname(p) for p in [*files, *whiteouts] if os.path.dirname(p)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, data in [*files.items(), *((os.path.join(os.path.dirname(w), ".wh." + os.path.basename(w)), b"")
                                              for w in whiteouts)]:
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main() -> int:
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "demo-store")
    graph, run = os.path.join(root, "graph"), os.path.join(root, "run")
    if os.path.exists(root):
        Store(graph, run).wipe()
        shutil.rmtree(root)
    store = Store(graph, run)
    print(f"store at {root} on driver {store.driver_name!r}")

    base = store.create_layer(names=["demo-base"], diff=io.BytesIO(tar_of({
        "etc/motd": b"layer 1 motd\n", "etc/deleteme": b"going away\n", "bin/hello": b"#!/bin/sh\necho hi\n"})))
    top = store.create_layer(parent=base.id, diff=io.BytesIO(tar_of(
        {"etc/motd": b"layer 2 motd\n", "etc/added": b"added in layer 2\n"}, whiteouts=("etc/deleteme",))))
    print(f"layer {base.id[:12]} diff {base.uncompressed_digest[:19]}… size {base.uncompressed_size}")
    print(f"layer {top.id[:12]} diff {top.uncompressed_digest[:19]}… size {top.uncompressed_size}")
    image = store.create_image(top_layer=top.id, names=["localhost/demo:latest"], metadata='{"demo":true}')
    store.set_big_data("image", image.id, "manifest", b'{"schemaVersion":2,"layers":[]}')
    container = store.create_container(names=["demo-ctr"], image=image.id)
    print(f"image {image.id[:12]} {image.names}, container {container.id[:12]} {container.names}")

    with store.mounted_layer("demo-ctr") as path:
        print(f"container mounted at {path}:")
        for dirpath, _, filenames in sorted(os.walk(path)):
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                with open(full, "rb") as f:
                    print(f"  /{os.path.relpath(full, path)}: {f.read().decode().strip()}")

    lamina = shutil.which("lamina") or os.path.join(os.path.dirname(sys.executable), "lamina")
    for tool in (lamina, shutil.which("containers-storage")):
        if tool and os.path.exists(tool):
            cmd = [tool, "--graph", graph, "--run", run, "--storage-driver", store.driver_name, "layers"]
            print(f"$ {os.path.basename(tool)} --graph … layers")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            print(proc.stdout + proc.stderr, end="")
    store.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
