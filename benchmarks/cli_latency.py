#!/usr/bin/env python3
"""Per-command latency of the lamina CLI next to containers-storage (Go), vfs and overlay.

Each tool gets its own store (under a temporary directory) filled with the same contents:
a base layer from a small tar, a child layer, an image and a container. Then each command
runs N times as a fresh process and the median wall time is printed, with lamina/Go:

  layers · images -j · create-layer · mount+unmount (two processes) · diff -u of the small
  layer · exists · status

Bytecode is cached outside the source tree (PYTHONPYCACHEPREFIX), as in the CLI tests.
Overlay needs root; it is skipped otherwise. Every store gets "shutdown -f" at the end.

Usage: .venv/bin/python benchmarks/cli_latency.py [-n RUNS] [--drivers vfs,overlay]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def lamina_command() -> list[str]:
    exe = Path(sys.executable).parent / "lamina"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lamina"]


def small_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (("etc/hello.txt", b"hello\n"), ("etc/motd", b"motd\n" * 50), ("bin/tool", b"\x7fELF" * 500)):
            for d in ("etc", "bin"):
                if name.startswith(d + "/") and d not in tar.getnames():
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Tool:
    def __init__(self, label: str, argv0: list[str], root: Path, driver: str, env: dict[str, str]) -> None:
        self.label, self.argv0, self.env = label, argv0, env
        self.base = ["--graph", str(root / "graph"), "--run", str(root / "run"), "--storage-driver", driver]

    def argv(self, *args: str) -> list[str]:
        return [*self.argv0, *self.base, *args]

    def run(self, *args: str, stdin: bytes = b"") -> str:
        proc = subprocess.run(self.argv(*args), input=stdin, capture_output=True, env=self.env, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.label}: {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode()

    def fill(self, tar: bytes) -> dict[str, str]:
        base = self.run("create-layer", "-n", "base").split()[0]
        self.run("applydiff", base, stdin=tar)
        child = self.run("create-layer", "-n", "child", base).split()[0]
        self.run("create-image", "-n", "img", child)
        ctr = self.run("create-container", "--name", "ctr", "img").split()[0]
        return {"base": base, "child": child, "ctr": ctr}


def timed(fn, runs: int) -> float:
    fn()  # warm-up (page cache, bytecode cache)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(tool: Tool, ids: dict[str, str], runs: int) -> dict[str, float]:
    def cmd(*args: str):
        return lambda: tool.run(*args)

    def mount_unmount():
        tool.run("mount", ids["base"])
        tool.run("unmount", ids["base"])

    return {
        "layers": timed(cmd("layers"), runs),
        "images -j": timed(cmd("images", "-j"), runs),
        "create-layer": timed(cmd("create-layer", ids["child"]), runs),
        "mount+unmount": timed(mount_unmount, runs),
        "diff -u (small layer)": timed(cmd("diff", "-u", ids["base"]), runs),
        "exists": timed(cmd("exists", "img"), runs),
        "status": timed(cmd("status"), runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=11, help="runs per command (default 11)")
    parser.add_argument("--drivers", default="vfs,overlay", help="comma-separated drivers (default vfs,overlay)")
    args = parser.parse_args()
    go = shutil.which("containers-storage")
    if go is None:
        print("containers-storage (Go) is not installed", file=sys.stderr)
        return 1
    tar = small_tar()
    print(f"median of {args.runs} runs per command, ms (lamina: {' '.join(lamina_command())}; Go: {go})")
    with tempfile.TemporaryDirectory(prefix="lamina-latency-") as tmp:
        env = dict(os.environ, LC_ALL="C.UTF-8", PYTHONPYCACHEPREFIX=os.path.join(tmp, "pycache"))
        for var in ("STORAGE_DRIVER", "STORAGE_OPTS", "PYTHONDONTWRITEBYTECODE"):
            env.pop(var, None)
        for driver in args.drivers.split(","):
            if driver == "overlay" and os.geteuid() != 0:
                print(f"\n[{driver}] skipped: needs root")
                continue
            tools = [Tool("go", [go], Path(tmp, driver, "go"), driver, env),
                     Tool("lamina", lamina_command(), Path(tmp, driver, "lamina"), driver, env)]
            try:
                results = [measure(t, t.fill(tar), args.runs) for t in tools]
            finally:
                for t in tools:
                    subprocess.run(t.argv("shutdown", "-f"), capture_output=True, env=env, timeout=60)
            print(f"\n[{driver}]")
            print(f"{'command':<24}{'go ms':>10}{'lamina ms':>12}{'ratio':>8}")
            for name in results[0]:
                g, l = results[0][name], results[1][name]
                print(f"{name:<24}{g:>10.1f}{l:>12.1f}{l / g:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
