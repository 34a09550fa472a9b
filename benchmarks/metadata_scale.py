"""Metadata at scale: creating one more layer and listing all layers with N layers present.

Prints, for N in 100, 1000 and 5000 (or --sizes), the median time of
  * lamina's Python API on an open Store (create_layer, layers()),
  * one Go `containers-storage` call doing the same (create-layer, layers -j),
  * one `lamina` CLI call doing the same,
and the ratios, all measured in this run on the same machine. Stores live on a loop-mounted ext4
image when possible (the root disk is slow after mass deletions), else under a temp dir.

Usage: .venv/bin/python benchmarks/metadata_scale.py [--sizes 100,1000,5000] [--repeat 5]
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

from lamina.atomicio import write_json_atomic
from lamina.records import Layer, go_time_now
from lamina.store import Store

GO = shutil.which("containers-storage")
LAMINA = os.path.join(os.path.dirname(sys.executable), "lamina")


@contextlib.contextmanager
def scratch() -> Iterator[str]:
    """A scratch directory on a fresh loop-mounted ext4 (root only), else a temp dir."""
    base = tempfile.mkdtemp(prefix="lamina-bench-")
    image, mnt = os.path.join(base, "fs.img"), os.path.join(base, "mnt")
    os.mkdir(mnt)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mkfs.ext4"):
        with open(image, "wb") as f:
            f.truncate(2 << 30)
        if subprocess.run(["mkfs.ext4", "-q", "-F", image], capture_output=True).returncode == 0:
            mounted = subprocess.run(["mount", "-o", "loop", image, mnt], capture_output=True).returncode == 0
    try:
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", mnt], check=True)
        shutil.rmtree(base)


def seed(graph: str, run: str, n: int) -> None:
    """A vfs store with *n* layers in a chain of 10-layer stacks, written directly (fast setup)."""
    Store(graph, run, driver_name="vfs")  # lay out the directories and lock files
    records = []
    for i in range(n):
        layer_id = f"{i:064x}"
        parent = f"{i - 1:064x}" if i % 10 else ""
        records.append(Layer(id=layer_id, names=[f"layer-{i}"], parent=parent, created=go_time_now()).to_json())
        path = os.path.join(graph, "vfs", "dir", layer_id)
        os.mkdir(path)
        os.chmod(path, 0o555)
    write_json_atomic(os.path.join(graph, "vfs-layers", "layers.json"), records)
    # Another process wrote: make every open Store reload.
    from lamina.lockfile import LockFile

    lock = LockFile.get(os.path.join(graph, "vfs-layers", "layers.lock"))
    with lock.locked():
        lock.touch()


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_cli(tool: str, graph: str, run: str, *args: str) -> None:
    proc = subprocess.run([tool, "--graph", graph, "--run", run, "--storage-driver", "vfs", *args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(args)}: {proc.stderr.decode().strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if GO is None:
        print("containers-storage (Debian package) is not installed: nothing to compare with", file=sys.stderr)
        return 1
    have_cli = os.path.exists(LAMINA)
    print(f"{'N':>6} {'op':<7} {'lamina API':>11} {'Go CLI':>9} {'API/Go':>7} {'lamina CLI':>11} {'CLI/Go':>7}")
    with scratch() as base:
        for n in [int(x) for x in args.sizes.split(",")]:
            roots = {}
            for who in ("api", "go", "cli"):
                graph, run = os.path.join(base, f"{who}-{n}", "g"), os.path.join(base, f"{who}-{n}", "r")
                seed(graph, run, n)
                roots[who] = (graph, run)
            store = Store(*roots["api"], driver_name="vfs")
            store.layers()  # the store is open and loaded, as in a long-lived program
            api_create = median_time(lambda: store.create_layer(), args.repeat)
            api_list = median_time(store.layers, args.repeat)
            go_create = median_time(lambda: run_cli(GO, *roots["go"], "create-layer"), args.repeat)
            go_list = median_time(lambda: run_cli(GO, *roots["go"], "layers", "-j"), args.repeat)
            cli_create = cli_list = float("nan")
            if have_cli:
                cli_create = median_time(lambda: run_cli(LAMINA, *roots["cli"], "create-layer"), args.repeat)
                cli_list = median_time(lambda: run_cli(LAMINA, *roots["cli"], "layers", "-j"), args.repeat)
            for op, api, go_t, cli in (("create", api_create, go_create, cli_create),
                                       ("list", api_list, go_list, cli_list)):
                print(f"{n:>6} {op:<7} {api * 1000:>9.1f}ms {go_t * 1000:>7.1f}ms {api / go_t:>7.2f}"
                      f" {cli * 1000:>9.1f}ms {cli / go_t:>7.2f}")
    # What any Python CLI built on the mandated libraries pays before it does anything: the
    # interpreter, then pluggy (the driver contract) and stevedore (driver discovery).
    print("\nstart-up floor of a Python CLI (median, this run):")
    for label, code in (("interpreter (python -c pass)", "pass"),
                        ("+ import pluggy, stevedore", "import pluggy, stevedore"),
                        ("+ import lamina.store, lamina_vfs", "import pluggy, stevedore, lamina.store, lamina_vfs")):
        t = median_time(lambda: subprocess.run([sys.executable, "-c", code], check=True), args.repeat)
        print(f"  {label:<36} {t * 1000:7.1f}ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
