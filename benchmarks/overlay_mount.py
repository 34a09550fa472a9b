#!/usr/bin/env python3
"""overlay benchmark: mount latency by chain depth, and native against naive diffs.

1. Builds a chain of ``--depth`` layers (one small file each) and times ``driver.get`` +
   ``driver.put`` of the layers at depths 1, 10, 100, 200 and the deepest (median of
   ``--runs``). Depth <= ~70 fits absolute paths in one page; up to ~140 lowers use paths relative
   to the home (a thread with its own cwd); beyond that, descriptor numbers from /proc/self/fd.
   For reference it times the Go tool's ``mount`` + ``unmount`` of the same layer of a store it
   built itself (a whole process each, so mostly start-up cost), when containers-storage is installed.
2. On a base layer of ``--files`` files and a child that changes 10 of them, times
   ``changes`` and ``diff`` (read to the end) through the native path (upper dir only) and
   through the core's naive two-tree walk.

Needs root and kernel overlay. Not a test.

    .venv/bin/python benchmarks/overlay_mount.py [--depth 500] [--files 20000] [--runs 7]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from typing import Callable

from lamina.drivers import new_driver
from lamina.graphdriver import build_driver
from lamina.naive import CoreFallbacks
from lamina.types import ApplyDiffOpts, DriverConfig, IDMappings, MountOpts


def timed(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def one_file_tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def many_files_tar(count: int, prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in range(count // 100 + 1):
            info = tarfile.TarInfo(f"d{d}")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for i in range(count):
            data = f"{prefix}{i}\n".encode()
            info = tarfile.TarInfo(f"d{i // 100}/f{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=500)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="lamina-overlay-bench-")
    config = DriverConfig("overlay", os.path.join(work, "g", "overlay"), os.path.join(work, "r"))
    drv = build_driver(config, new_driver(config))
    try:
        t0 = time.perf_counter()
        parent = None
        for i in range(args.depth):
            drv.create(f"c{i}", parent)
            drv.apply_diff(f"c{i}", parent, ApplyDiffOpts(diff=io.BytesIO(one_file_tar(f"f{i}", b"x"))))
            parent = f"c{i}"
        print(f"create+apply of {args.depth} chained layers: {time.perf_counter() - t0:.2f} s")
        print("mount+unmount (driver.get + driver.put), median:")
        for depth in sorted({1, 10, 100, 200, args.depth} & set(range(1, args.depth + 1))):
            layer = f"c{depth - 1}"

            def cycle() -> None:
                drv.get(layer, MountOpts())
                drv.put(layer)

            print(f"  {depth:4d} layers: {timed(cycle, args.runs) * 1000:7.2f} ms")

        go = shutil.which("containers-storage")
        if go:
            g, r = os.path.join(work, "go-g"), os.path.join(work, "go-r")
            cs = [go, "--graph", g, "--run", r, "--storage-driver", "overlay"]
            top = None
            for i in range(min(args.depth, 100)):
                top = subprocess.run([*cs, "create-layer", *([top] if top else [])], check=True,
                                     capture_output=True, text=True).stdout.split()[0]

            def go_cycle() -> None:
                subprocess.run([*cs, "mount", top], check=True, capture_output=True)
                subprocess.run([*cs, "unmount", top], check=True, capture_output=True)

            print(f"  Go CLI mount+unmount, {min(args.depth, 100)} layers (two processes): "
                  f"{timed(go_cycle, args.runs) * 1000:7.2f} ms")
            subprocess.run([*cs, "shutdown", "-f"], check=False, capture_output=True)

        drv.create("base", None)
        drv.apply_diff("base", None, ApplyDiffOpts(diff=io.BytesIO(many_files_tar(args.files))))
        drv.create("child", "base")
        root = drv.get("child", MountOpts())
        try:
            for i in range(0, args.files, max(1, args.files // 10)):
                with open(os.path.join(root, f"d{i // 100}", f"f{i}"), "w") as f:
                    f.write("changed\n")
        finally:
            drv.put("child")
        naive = CoreFallbacks(drv)
        none = IDMappings()

        def read_all(stream: io.RawIOBase) -> None:
            try:
                while stream.read(1 << 20):
                    pass
            finally:
                stream.close()

        cases = {
            "changes native": lambda: drv.changes("child", "base"),
            "changes naive ": lambda: naive.driver_changes("child", none, "base", none, ""),
            "diff native   ": lambda: read_all(drv.diff("child", "base")),
            "diff naive    ": lambda: read_all(naive.driver_diff("child", none, "base", none, "")),
        }
        print(f"child changing 10 of {args.files} files, median:")
        for name, fn in cases.items():
            print(f"  {name}: {timed(fn, max(3, args.runs // 2)) * 1000:9.1f} ms")
    finally:
        drv.cleanup()
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
