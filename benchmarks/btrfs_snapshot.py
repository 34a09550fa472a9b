#!/usr/bin/env python3
"""btrfs snapshot benchmark: creating a child layer costs the same whatever the parent holds.

On a fresh loop-mounted btrfs, builds one layer holding ``--data-mib`` MiB (default 1024) in
``--files`` files and one empty layer, then times ``driver.create(child, parent)`` for both parents
followed by sync(2) (median of ``--runs``) and prints the ratio, which should be about 1: a child is a snapshot, not a
copy. For contrast it times the vfs driver creating a child of the same data on a loop-mounted ext4
(a full copy) and on the btrfs (lamina's copy uses copy_file_range, which btrfs turns into reflinks,
so only the per-file work remains). Needs root (loop devices, mounts). Not a test.

    .venv/bin/python benchmarks/btrfs_snapshot.py [--data-mib 1024] [--files 256] [--runs 9]
        [--image-dir /var/tmp] [--skip-vfs]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterator

from lamina.drivers import new_driver
from lamina.graphdriver import DriverProxy, build_driver
from lamina.types import DriverConfig, MountOpts

MiB = 1 << 20


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def loop_fs(image_dir: str, fstype: str, size: int) -> Iterator[str]:
    """A sparse image of *size* bytes formatted *fstype*, loop-mounted; everything removed afterwards."""
    work = tempfile.mkdtemp(prefix=f"lamina-{fstype}-bench-", dir=image_dir)
    image, mount = os.path.join(work, "fs.img"), os.path.join(work, "mnt")
    os.mkdir(mount)
    with open(image, "wb") as f:
        f.truncate(size)
    sh("mkfs.btrfs", "-q", image) if fstype == "btrfs" else sh("mkfs.ext4", "-q", "-F", image)
    device = sh("losetup", "--find", "--show", image).strip()
    try:
        sh("mount", "-t", fstype, device, mount)
        try:
            yield mount
        finally:
            sh("umount", mount)
    finally:
        sh("losetup", "-d", device)
        shutil.rmtree(work)


def open_driver(name: str, graph_root: str) -> DriverProxy:
    config = DriverConfig(name, os.path.join(graph_root, name), os.path.join(graph_root, "run"))
    return build_driver(config, new_driver(config))


def fill(drv: DriverProxy, layer: str, total: int, files: int) -> None:
    """Write *total* bytes of incompressible data into *files* files of *layer*, then sync."""
    root = drv.get(layer, MountOpts())
    try:
        block = os.urandom(4 * MiB)
        per_file = total // files
        for i in range(files):
            with open(os.path.join(root, f"data-{i:05d}"), "wb") as f:
                left = per_file
                while left > 0:
                    left -= f.write(block[: min(left, len(block))])
    finally:
        drv.put(layer)
    os.sync()  # a snapshot flushes its source's dirty data first: keep that out of the timings


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def child_times(drv: DriverProxy, parent: str, runs: int, tag: str) -> list[float]:
    """Seconds to create a child of *parent* and sync(2), *runs* times (each child removed, untimed, after).

    The sync makes the cost "until durable" for both drivers: a vfs copy otherwise ends in the page cache.
    """
    times = []
    for i in range(runs):
        child = f"{tag}-child-{i}"

        def create() -> None:
            drv.create(child, parent)
            os.sync()

        times.append(timed(create))
        drv.remove(child)
        os.sync()
    return times


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:10.2f} ms"


def line(label: str, value: str, extra: str = "") -> None:
    print(f"{label:<48}{value}{'   ' + extra if extra else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-mib", type=int, default=1024, help="MiB of data in the big parent layer")
    parser.add_argument("--files", type=int, default=256, help="number of files holding that data")
    parser.add_argument("--runs", type=int, default=9, help="timed child creations per parent")
    parser.add_argument("--image-dir", default="/var/tmp", help="where the sparse filesystem images live")
    parser.add_argument("--skip-vfs", action="store_true", help="do not time the vfs copies")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop devices and mounts)", file=sys.stderr)
        return 2
    data = args.data_mib * MiB
    fs_size = 2 * data + (1 << 30)
    print(f"data: {args.data_mib} MiB in {args.files} files; {args.runs} runs; images in {args.image_dir}")

    with loop_fs(args.image_dir, "btrfs", fs_size) as mount:
        drv = open_driver("btrfs", os.path.join(mount, "graph"))
        try:
            drv.create("empty", None)
            drv.create("big", None)
            fill_s = timed(lambda: fill(drv, "big", data, args.files))
            child_times(drv, "empty", 1, "warm-up")
            empty: list[float] = []
            big: list[float] = []
            for i in range(args.runs):  # interleaved, so drift hits both alike
                empty += child_times(drv, "empty", 1, f"empty{i}")
                big += child_times(drv, "big", 1, f"big{i}")
            ratio = statistics.median(big) / statistics.median(empty)
            line(f"btrfs  fill parent ({args.data_mib} MiB, synced)", fmt(fill_s))
            line("btrfs  child of empty parent (median)", fmt(statistics.median(empty)),
                 f"runs ms: {', '.join(f'{t * 1000:.2f}' for t in empty)}")
            line(f"btrfs  child of {args.data_mib} MiB parent (median)", fmt(statistics.median(big)),
                 f"runs ms: {', '.join(f'{t * 1000:.2f}' for t in big)}")
            line("btrfs  ratio big/empty", f"{ratio:10.2f}")
            if not args.skip_vfs:
                vfs = open_driver("vfs", os.path.join(mount, "vfs-graph"))
                vfs.create("big", None)
                fill(vfs, "big", data, args.files)
                reflinked = statistics.median(child_times(vfs, "big", min(args.runs, 3), "vfs"))
                line("vfs    child on btrfs (reflinked copy, median)", fmt(reflinked),
                     f"x{reflinked / statistics.median(big):.1f} the btrfs snapshot")
                vfs.cleanup()
        finally:
            drv.cleanup()

    if not args.skip_vfs:
        with loop_fs(args.image_dir, "ext4", fs_size) as mount:
            vfs = open_driver("vfs", os.path.join(mount, "graph"))
            vfs.create("big", None)
            fill(vfs, "big", data, args.files)
            copies = child_times(vfs, "big", min(args.runs, 3), "vfs")
            line("vfs    child on ext4 (full copy, median)", fmt(statistics.median(copies)),
                 f"x{statistics.median(copies) / statistics.median(big):.0f} the btrfs snapshot")
            vfs.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
