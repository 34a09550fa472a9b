"""Shared pieces of the fault campaigns: deterministic test data, loop-mounted filesystems, the Go
tool, and an expected-state model of a store that a ledger of completed operations updates.

Everything here is importable without a store; the campaigns and tests/test_faults.py use it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any

GO = shutil.which("containers-storage")
HERE = os.path.dirname(os.path.abspath(__file__))
EPOCH = 1704067200


# ---------------------------------------------------------------- deterministic data


def gen_bytes(seed: int, size: int) -> bytes:
    """*size* pseudo-random bytes from *seed* (the same on every run)."""
    return random.Random(seed).randbytes(size)


def gen_tar(seed: int, files: int, size: int, gzip_it: bool = False) -> tuple[bytes, str]:
    """A layer tar of *files* regular files (about *size* bytes in all, in a few dirs) and the
    sha256 digest of its uncompressed bytes; gzip-compressed if *gzip_it*."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = [f"d{seed % 97}", f"d{seed % 97}/sub{rng.randrange(5)}"]
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for i in range(files):
            data = rng.randbytes(rng.randrange(0, max(1, 2 * size // max(1, files))))
            info = tarfile.TarInfo(f"{rng.choice(dirs)}/f{seed}-{i}")
            info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if gzip_it:
        raw = gzip.compress(raw, compresslevel=1, mtime=0)
    return raw, digest


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- hosts, filesystems, Go


def run(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def mounts_under(path: str) -> list[str]:
    """Mount points at or below *path* (from /proc/self/mountinfo), deepest last."""
    real = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = line.split(" ")[4].replace("\\040", " ")
            if point == real or point.startswith(real + "/"):
                found.append(point)
    return found


def unmount_all(path: str) -> None:
    """Unmount everything at or below *path*, deepest first (lazily if busy)."""
    for point in sorted(set(mounts_under(path)), key=len, reverse=True):
        if run("umount", point, check=False).returncode != 0:
            run("umount", "-l", point, check=False)


class LoopFS:
    """A sparse image file formatted *fstype* (btrfs, ext4), on a loop device, mounted at :attr:`mount`.

    Use as a context manager; leaving unmounts everything below the mount and detaches the device.
    """

    def __init__(self, workdir: str, fstype: str, size_mb: int) -> None:
        self.workdir = workdir
        self.fstype = fstype
        self.size_mb = size_mb
        self.image = os.path.join(workdir, f"{fstype}.img")
        self.mount = os.path.join(workdir, f"{fstype}-mnt")
        self.device = ""

    def __enter__(self) -> "LoopFS":
        os.makedirs(self.mount, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size_mb << 20)
        mkfs = ["mkfs.btrfs", "-q", self.image] if self.fstype == "btrfs" else \
            ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", self.image]
        run(*mkfs)
        self.device = run("losetup", "--find", "--show", self.image).stdout.strip()
        try:
            run("mount", "-t", self.fstype, self.device, self.mount)
        except BaseException:
            run("losetup", "-d", self.device, check=False)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            unmount_all(self.mount)
        finally:
            if self.device:
                run("losetup", "-d", self.device, check=False)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.image)


def loop_fs_available(fstype: str) -> str | None:
    """Why a loop-mounted *fstype* cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    tool = "mkfs.btrfs" if fstype == "btrfs" else "mkfs.ext4"
    for t in (tool, "losetup", "mount", "umount"):
        if shutil.which(t) is None:
            return f"{t} is not installed"
    with open("/proc/filesystems") as f:
        if fstype not in {line.split()[-1] for line in f if line.strip()}:
            return f"the kernel has no {fstype}"
    return None


def driver_available(driver: str, graph_root: str) -> str | None:
    """Why lamina's *driver* cannot run on *graph_root*, or None."""
    from lamina import drivers

    try:
        return drivers.support_reason(driver, graph_root)
    except Exception as exc:  # a broken or missing plugin: say why, the campaign skips the driver
        return f"{type(exc).__name__}: {exc}"


def go_lists(graph: str, run_root: str, driver: str) -> dict[str, list[dict[str, Any]]]:
    """``containers-storage layers/images/containers -j`` on the store; RuntimeError if any fails."""
    out: dict[str, list[dict[str, Any]]] = {}
    for what in ("layers", "images", "containers"):
        proc = run(GO or "containers-storage", "-g", graph, "-R", run_root, "-s", driver, what, "-j", check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"containers-storage {what} failed ({proc.returncode}): {proc.stderr.strip()}")
        out[what] = json.loads(proc.stdout or "null") or []
    return out


def go_shutdown(graph: str, run_root: str, driver: str) -> None:
    if GO:
        run(GO, "-g", graph, "-R", run_root, "-s", driver, "shutdown", "-f", check=False)


def rmtree(path: str) -> None:
    """Remove a store tree (read-only dirs included); unmounts what is mounted below first."""
    unmount_all(path)
    if not os.path.lexists(path):
        return
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    os.chmod(full, 0o700)
    shutil.rmtree(path)


# ---------------------------------------------------------------- the expected-state model


@dataclass
class LayerM:
    id: str
    names: list[str]
    parent: str
    digest: str = ""  # diff-digest; "" for an empty layer
    container: str = ""  # the container whose layer this is


@dataclass
class ImageM:
    id: str
    names: list[str]
    top: str
    data: dict[str, str] = field(default_factory=dict)  # key -> sha256 of the bytes


@dataclass
class ContainerM:
    id: str
    names: list[str]
    image: str
    layer: str = ""


@dataclass
class Model:
    """What the store must hold given the operations known to be complete."""

    layers: dict[str, LayerM] = field(default_factory=dict)
    images: dict[str, ImageM] = field(default_factory=dict)
    containers: dict[str, ContainerM] = field(default_factory=dict)

    def copy(self) -> "Model":
        return Model({k: LayerM(v.id, list(v.names), v.parent, v.digest, v.container) for k, v in self.layers.items()},
                     {k: ImageM(v.id, list(v.names), v.top, dict(v.data)) for k, v in self.images.items()},
                     {k: ContainerM(v.id, list(v.names), v.image, v.layer) for k, v in self.containers.items()})

    # -- effects of operations (the same rules as lamina's Store)

    def delete_image_layers(self, image_id: str) -> list[str]:
        """The layers Store.delete_image removes with the image (those only it uses)."""
        image = self.images[image_id]
        other_tops = {i.top for i in self.images.values() if i.id != image_id}
        container_layers = {c.layer for c in self.containers.values()} | {
            l.id for l in self.layers.values() if l.container}
        children: dict[str, list[str]] = {}
        for l in self.layers.values():
            if l.parent:
                children.setdefault(l.parent, []).append(l.id)
        out: list[str] = []
        layer = image.top
        while layer:
            if layer in container_layers or layer in other_tops or layer not in self.layers:
                break
            if any(c not in out for c in children.get(layer, [])):
                break
            out.append(layer)
            layer = self.layers[layer].parent
        return out

    def apply(self, op: dict[str, Any], result: dict[str, Any] | None = None) -> "Model":
        """A new model with *op* applied (*result*: what the worker reported, e.g. a container's layer)."""
        m = self.copy()
        kind = op["op"]
        if kind == "create-layer":
            m.layers[op["id"]] = LayerM(op["id"], list(dict.fromkeys(op["names"])), op.get("parent") or "",
                                        op["diff"]["digest"] if op.get("diff") else "")
        elif kind == "applydiff":
            m.layers[op["layer"]].digest = op["diff"]["digest"]
        elif kind == "create-image":
            m.images[op["id"]] = ImageM(op["id"], list(dict.fromkeys(op["names"])), op["top"])
        elif kind == "set-names":
            table = m.images if op["kind"] == "image" else m.layers
            table[op["target"]].names = list(dict.fromkeys(op["names"]))
        elif kind == "set-image-data":
            m.images[op["image"]].data[op["key"]] = op["data"]["sha256"]
        elif kind == "create-container":
            layer = (result or {}).get("layer", "")
            m.containers[op["id"]] = ContainerM(op["id"], list(dict.fromkeys(op["names"])), op["image"], layer)
            if layer:
                m.layers[layer] = LayerM(layer, [], m.images[op["image"]].top, "", op["id"])
        elif kind == "delete-image":
            for layer in m.delete_image_layers(op["image"]):
                del m.layers[layer]
            del m.images[op["image"]]
        elif kind == "delete-container":
            ctr = m.containers.pop(op["container"])
            m.layers.pop(ctr.layer, None)
        else:
            raise ValueError(f"unknown op {kind}")
        return m


def snapshot(store: Any) -> Model:
    """The store's actual state as a Model (big data hashed)."""
    m = Model()
    ctr_of_layer = {}
    for c in store.containers():
        m.containers[c.id] = ContainerM(c.id, list(c.names), c.image, c.layer)
        ctr_of_layer[c.layer] = c.id
    for l in store.layers():
        m.layers[l.id] = LayerM(l.id, list(l.names), l.parent, l.uncompressed_digest, ctr_of_layer.get(l.id, ""))
    for i in store.images():
        data = {k: sha256(store.big_data("image", i.id, k)) for k in i.big_data_names}
        m.images[i.id] = ImageM(i.id, list(i.names), i.top_layer, data)
    return m


def differences(expected: Model, actual: Model, pending_container: str = "") -> list[str]:
    """How *actual* differs from *expected*. A container's layer is matched by the container;
    *pending_container* is a container whose creation may or may not have happened."""
    out: list[str] = []
    for id, e in expected.layers.items():
        a = actual.layers.get(id)
        if a is None:
            out.append(f"layer {id[:12]} missing")
            continue
        if a.names != e.names:
            out.append(f"layer {id[:12]} names {a.names} != {e.names}")
        if a.parent != e.parent:
            out.append(f"layer {id[:12]} parent {a.parent[:12]} != {e.parent[:12]}")
        if a.digest != e.digest:
            out.append(f"layer {id[:12]} diff-digest {a.digest[:19]} != {e.digest[:19]}")
    for id, a in actual.layers.items():
        if id in expected.layers:
            continue
        ctr = actual.containers.get(a.container) if a.container else None
        if ctr is not None and (ctr.id not in expected.containers or not expected.containers[ctr.id].layer):
            continue  # the layer of a container whose layer ID the model did not know yet
        out.append(f"layer {id[:12]} not expected (leaked)")
    for id, e in expected.images.items():
        a = actual.images.get(id)
        if a is None:
            out.append(f"image {id[:12]} missing")
            continue
        if a.names != e.names:
            out.append(f"image {id[:12]} names {a.names} != {e.names}")
        if a.top != e.top:
            out.append(f"image {id[:12]} top layer differs")
        if a.data != e.data:
            keys = sorted(set(a.data) ^ set(e.data)) or sorted(k for k in a.data if a.data[k] != e.data.get(k))
            out.append(f"image {id[:12]} big data differs ({', '.join(keys)})")
    out.extend(f"image {id[:12]} not expected" for id in actual.images if id not in expected.images)
    for id, e in expected.containers.items():
        a = actual.containers.get(id)
        if a is None:
            out.append(f"container {id[:12]} missing")
            continue
        if a.names != e.names or a.image != e.image:
            out.append(f"container {id[:12]} differs")
        if e.layer and a.layer != e.layer:
            out.append(f"container {id[:12]} layer differs")
        if a.layer not in actual.layers:
            out.append(f"container {id[:12]} has no layer")
    out.extend(f"container {id[:12]} not expected" for id in actual.containers
               if id not in expected.containers and id != pending_container)
    return out


def adopt_container_layers(model: Model, actual: Model) -> None:
    """Learn the layer IDs of containers the model knows only by container ID."""
    for id, c in model.containers.items():
        if not c.layer and id in actual.containers:
            c.layer = actual.containers[id].layer
            a = actual.layers.get(c.layer)
            if a is not None:
                model.layers[c.layer] = LayerM(c.layer, list(a.names), a.parent, a.digest, id)


# ---------------------------------------------------------------- output


def table(rows: list[list[Any]], header: list[str]) -> str:
    cols = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cols]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def now() -> float:
    return time.monotonic()


def python() -> str:
    return sys.executable
