#!/usr/bin/env python3
"""Layer-content benchmark: lamina's ApplyDiff/Diff against containers-storage 1.43 and GNU tar,
on vfs (default), overlay or btrfs (``--driver``).

Corpus (tars cached under /var/tmp/lamina-bench, so re-runs are fast):

* ``debian``: a Debian minbase rootfs (``debootstrap --variant=minbase``; falls back to a tar of /usr
  when debootstrap or the network is unavailable);
* ``python``: this interpreter's standard library tree (without site-packages);
* ``big``: incompressible files, ``--big-mib`` MiB in all (default 64; ``--full`` for 512);
* ``child``: a layer on top of ``python`` with whiteouts, an opaque directory and new files;

each as an uncompressed and a gzip variant. Everything is written to a loop-mounted ext4 (btrfs for
the btrfs driver) whose image lives in /dev/shm (RAM), or to a tmpfs if loop devices are not
available, so the disk's noise stays out. Every timing is the median of ``--runs`` runs (three
times as many for entries under 16 MiB) measured in this same run, and ratios compare lamina (the
Python API, and the ``lamina`` CLI when installed) with ``containers-storage applydiff``/``diff``
and with ``tar -x``/``tar -c``. Needs root (mounts, chown).

    .venv/bin/python benchmarks/layer_content.py [--driver overlay] [--full] [--runs 3] [--corpus python,big]
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from lamina.store import Store

CACHE = "/var/tmp/lamina-bench"
_SMALL_CASE = 16 << 20  # bytes: entries below this get more timed rounds
GO = shutil.which("containers-storage")
HERE = os.path.dirname(os.path.abspath(__file__))
LAMINA_CLI = os.path.join(os.path.dirname(sys.executable), "lamina")


# ---------------------------------------------------------------- workspace


class Workspace:
    """A scratch filesystem: a loop-mounted *fs* (ext4, or btrfs for that driver) on a RAM-backed
    image, else tmpfs, else a plain dir."""

    def __init__(self, size_mib: int, fs: str = "ext4") -> None:
        self.root = tempfile.mkdtemp(prefix="lamina-bench-")
        self.image = ""
        self.kind = "plain directory"
        image_dir = "/dev/shm" if shutil.disk_usage("/dev/shm").free > size_mib * 2 << 20 else CACHE
        image = os.path.join(image_dir, f"lamina-bench-{os.getpid()}.img")
        try:
            with open(image, "wb") as f:
                f.truncate(size_mib << 20)
            # (inode tables and journal initialised now: no ext4lazyinit thread writing them
            # in the background while tools are being timed)
            mkfs = ["mkfs.btrfs", "-q", "-f", image] if fs == "btrfs" else [
                "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image]
            subprocess.run(mkfs, check=True, capture_output=True)
            subprocess.run(["mount", "-o", "loop", image, self.root], check=True, capture_output=True)
            self.image, self.kind = image, f"{fs} on a loop device ({image_dir} image)"
        except (OSError, subprocess.CalledProcessError):
            if os.path.exists(image):
                os.unlink(image)
            if fs == "btrfs":
                raise SystemExit("the btrfs driver needs a loop-mounted btrfs (root, btrfs-progs, a kernel with btrfs)")
            try:
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", self.root],
                               check=True, capture_output=True)
                self.kind = "tmpfs"
            except (OSError, subprocess.CalledProcessError):
                print("warning: neither a loop mount nor tmpfs worked; using a plain directory", file=sys.stderr)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def close(self) -> None:
        if self.kind != "plain directory":
            # recursive: a driver's own mounts below the root (overlay's and btrfs's private
            # bind mount of their home) go too, even after a failed round
            subprocess.run(["umount", "-R", self.root], check=False)
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        if self.image:
            os.unlink(self.image)
        with _suppress_oserror():
            os.rmdir(self.root)


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, OSError)


def remove_tree(path: str) -> None:
    """rm -rf that copes with vfs's read-only (0555) layer roots."""
    subprocess.run(["rm", "-rf", path], check=True)


# ---------------------------------------------------------------- corpus


def _tar_dir(src: str, out: str, *extra: str) -> None:
    tmp = out + ".tmp"
    subprocess.run(["tar", "-C", src, "--numeric-owner", "--sort=name", *extra, "-cf", tmp, "."], check=True)
    os.replace(tmp, out)


def corpus_debian() -> str:
    out = os.path.join(CACHE, "debian-minbase.tar")
    if os.path.exists(out):
        return out
    rootfs = os.path.join(CACHE, "rootfs")
    try:
        if shutil.which("debootstrap") is None:
            subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], check=True, capture_output=True)
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", rootfs, "http://deb.debian.org/debian"],
                       check=True, capture_output=True, timeout=1200)
        _tar_dir(rootfs, out)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"note: debootstrap failed ({exc}); using a tar of /usr instead", file=sys.stderr)
        out = os.path.join(CACHE, "usr-tree.tar")
        if not os.path.exists(out):
            subprocess.run(["tar", "-C", "/", "--numeric-owner", "--sort=name", "-cf", out + ".tmp", "usr"],
                           check=False)
            os.replace(out + ".tmp", out)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return out


def corpus_python() -> str:
    out = os.path.join(CACHE, "python-stdlib.tar")
    if not os.path.exists(out):
        stdlib = sysconfig.get_paths()["stdlib"]
        _tar_dir(stdlib, out, "--exclude=./site-packages", "--exclude=__pycache__")
    return out


def corpus_big(mib: int) -> str:
    out = os.path.join(CACHE, f"big-{mib}MiB.tar")
    if not os.path.exists(out):
        src = tempfile.mkdtemp(dir=CACHE)
        try:
            left, i = mib << 20, 0
            sizes = [256 << 20, 64 << 20, 16 << 20, 1 << 20]
            while left > 0:
                size = next((s for s in sizes if s <= left), left)
                with open(os.path.join(src, f"blob-{i:03d}.bin"), "wb") as f:
                    for _ in range(0, size, 1 << 20):
                        f.write(os.urandom(min(1 << 20, size)))
                left -= size
                i += 1
            _tar_dir(src, out)
        finally:
            shutil.rmtree(src)
    return out


def corpus_child(base_tar: str) -> str:
    """Whiteouts of some base files, an opaque directory and new files, over the python corpus."""
    out = os.path.join(CACHE, "python-child.tar")
    if os.path.exists(out):
        return out
    with tarfile.open(base_tar) as base:
        names = [m.name for m in base if m.isfile()]
        dirs = [m.name for m in base if m.isdir() and m.name.count("/") == 1]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add(name: str, data: bytes | None = b"") -> None:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

        for name in names[::50]:
            parent, leaf = os.path.split(name)
            add(os.path.join(parent, ".wh." + leaf))
        opaque = dirs[len(dirs) // 2]
        add(opaque, None)
        add(os.path.join(opaque, ".wh..wh..opq"))
        for i in range(500):
            add(os.path.join(opaque, f"new-{i}.py"), (f"# new file {i}\n" * (i % 40 + 1)).encode())
        for i in range(50):
            add(f"./added/file-{i}.bin", os.urandom(64 << 10))
    with open(out + ".tmp", "wb") as f:
        f.write(buf.getvalue())
    os.replace(out + ".tmp", out)
    return out


def gzipped(path: str) -> str:
    out = path + ".gz"
    if not os.path.exists(out):
        gz = shutil.which("pigz") or shutil.which("gzip")
        with open(out + ".tmp", "wb") as f:
            if gz:
                subprocess.run([gz, "-6", "-c", path], stdout=f, check=True)
            else:
                with open(path, "rb") as src, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as z:
                    shutil.copyfileobj(src, z, 1 << 20)
        os.replace(out + ".tmp", out)
    return out


# ---------------------------------------------------------------- runners


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and of the children it waited for) of fn().

    Dirty data left by the setup (e.g. the parent layer just applied) is synced first, outside
    the measurement, so that neither tool pays for the other's or the setup's writeback."""
    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    os.sync()
    start, start_cpu = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - start, cpu() - start_cpu


def drain_command(argv: list[str]) -> None:
    """Run *argv* reading all of its stdout through a pipe (so nothing can skip the work)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    while proc.stdout.read(1 << 20):
        pass
    stderr = proc.stderr.read() if proc.stderr else b""
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {stderr.decode(errors='replace')[-400:]}")


def run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr[-400:]}")
    return proc.stdout


@dataclass
class Case:
    name: str
    tar: str
    parent_tar: str | None
    gz: bool
    size: int = 0
    entries: int = 0
    times: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def add(self, key: str, seconds: tuple[float, float]) -> None:
        self.times.setdefault(key, []).append(seconds)

    def median(self, key: str) -> float | None:
        """Median wall-clock seconds."""
        values = self.times.get(key)
        return statistics.median(v[0] for v in values) if values else None

    def cpu(self, key: str) -> float | None:
        """Median CPU seconds (user + system, children included)."""
        values = self.times.get(key)
        return statistics.median(v[1] for v in values) if values else None


class Tools:
    def __init__(self, ws: Workspace, cli: bool, inline_too: bool = False, driver: str = "vfs") -> None:
        self.ws = ws
        self.cli = cli
        self.inline_too = inline_too
        self.driver = driver

    def cs(self, kind: str, tool: str = "") -> list[str]:
        """The argv prefix of a CLI (*tool*: "go" or "cli", default after *kind*) on *kind*'s store."""
        base = [GO or "containers-storage"] if (tool or kind) == "go" else [LAMINA_CLI]
        return base + ["--graph", self.ws.path(kind, "g"), "--run", self.ws.path(kind, "r"),
                       "--storage-driver", self.driver]

    def fresh(self, kind: str) -> None:
        """Remove *kind*'s store; for overlay and btrfs first through the CLI that wrote it (their
        layers are subvolumes, or the driver keeps a private mount of its home)."""
        if self.driver != "vfs" and os.path.isdir(self.ws.path(kind, "g")):
            cs = self.cs(kind, "go" if kind == "go" else "cli")
            for cmd in (["wipe"], ["shutdown", "-f"]):
                subprocess.run(cs + cmd, capture_output=True, timeout=120, check=False)
        remove_tree(self.ws.path(kind))
        if self.driver == "btrfs":  # removed subvolumes are freed in the background: wait for it
            subprocess.run(["btrfs", "subvolume", "sync", self.ws.root], capture_output=True, check=False)

    # -- GNU tar

    def tar_x(self, case: Case) -> None:
        dest = self.ws.path("tar-x")
        remove_tree(dest)
        os.makedirs(dest)
        if case.parent_tar:
            subprocess.run(["tar", "-C", dest, "-xf", case.parent_tar], check=True)
        case.add("tar -x", timed(lambda: subprocess.run(
            ["tar", "-C", dest, "-xzf" if case.gz else "-xf", case.tar], check=True)))
        if case.parent_tar:  # tar -c of what the layer alone holds
            remove_tree(dest)
            os.makedirs(dest)
            subprocess.run(["tar", "-C", dest, "-xf", case.tar], check=True)
        case.add("tar -c", timed(lambda: drain_command(["tar", "-C", dest, "-czf" if case.gz else "-cf", "-", "."])))
        remove_tree(dest)

    # -- a containers-storage CLI (Go or lamina's)

    def cli_round(self, case: Case, kind: str, label: str) -> None:
        self.fresh(kind)
        cs = self.cs(kind)
        try:
            parent: list[str] = []
            if case.parent_tar:
                parent = [run(cs + ["create-layer"]).split()[0]]
                run(cs + ["applydiff", "-f", case.parent_tar, parent[0]])
            layer = run(cs + ["create-layer", *parent]).split()[0]
            case.add(f"{label} apply", timed(lambda: run(cs + ["applydiff", "-f", case.tar, layer])))
            # no flag: the recorded compression (gzip for the .gz variant)
            case.add(f"{label} diff", timed(lambda: drain_command(cs + ["diff", layer])))
        finally:
            self.fresh(kind)

    # -- the Python API

    def api_round(self, case: Case) -> None:
        from lamina.store import Store

        self.fresh("api")
        store = Store(self.ws.path("api", "g"), self.ws.path("api", "r"), driver_name=self.driver)
        try:
            self._api_timings(store, case)
        finally:
            store.wipe()
            store.shutdown(force=True)
            self.fresh("api")

    def _api_timings(self, store: Store, case: Case) -> None:
        parent = None
        if case.parent_tar:
            with open(case.parent_tar, "rb") as f:
                parent = store.create_layer(diff=f).id
        layer = store.create_layer(parent=parent).id

        def apply() -> None:
            with open(case.tar, "rb") as f:
                store.apply_diff(layer, f)

        def diff() -> None:
            with store.diff(None, layer) as stream:
                while stream.read(1 << 20):
                    pass

        case.add("lamina apply", timed(apply))
        case.add("lamina diff", timed(diff))
        if self.inline_too:  # the same apply without the decompressing producer thread
            from lamina import layercontent

            layer2 = store.create_layer(parent=parent).id
            saved, layercontent.PREFETCH_THREAD = layercontent.PREFETCH_THREAD, False
            try:
                with open(case.tar, "rb") as f:
                    case.add("inline apply", timed(lambda: store.apply_diff(layer2, f)))
            finally:
                layercontent.PREFETCH_THREAD = saved


def cli_usable(ws: Workspace) -> bool:
    if not os.path.exists(LAMINA_CLI):
        return False
    probe = [LAMINA_CLI, "--graph", ws.path("probe", "g"), "--run", ws.path("probe", "r"), "--storage-driver", "vfs"]
    # (the probe stays on vfs: it only asks whether the installed CLI works at all)
    try:
        layer = run(probe + ["create-layer"]).split()[0]
        empty = io.BytesIO()
        tarfile.open(fileobj=empty, mode="w").close()
        ok = subprocess.run(probe + ["applydiff", layer], input=empty.getvalue(), capture_output=True).returncode == 0
        ok = ok and subprocess.run(probe + ["diff", "-u", layer], capture_output=True).stdout == empty.getvalue()
    except (RuntimeError, IndexError, OSError):
        ok = False
    remove_tree(ws.path("probe"))
    return ok


# ---------------------------------------------------------------- main


def describe(path: str) -> tuple[int, int]:
    count = 0
    with tarfile.open(path) as tar:
        for _ in tar:
            count += 1
    return os.path.getsize(path), count


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:7.2f}s" if seconds >= 1 else f"{seconds * 1e3:6.1f}ms"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:5.2f}x"


def report(case: Case) -> None:
    m, c = case.median, case.cpu
    print(f"{case.name} ({case.size / 2**20:.1f} MiB, {case.entries} entries)")
    for op, tar_key in (("apply", "tar -x"), ("diff", "tar -c")):
        mine, go, cli, tar = f"lamina {op}", f"go {op}", f"cli {op}", tar_key
        print(f"  {op:5s} wall: {tar} {fmt(m(tar))}  go {fmt(m(go))}  lamina {fmt(m(mine))}  cli {fmt(m(cli))}"
              f"  | lamina/go {ratio(m(mine), m(go))}  lamina/tar {ratio(m(mine), m(tar))}"
              f"  cli/go {ratio(m(cli), m(go))}")
        print(f"  {op:5s}  cpu: {tar} {fmt(c(tar))}  go {fmt(c(go))}  lamina {fmt(c(mine))}  cli {fmt(c(cli))}"
              f"  | lamina/go {ratio(c(mine), c(go))}  lamina/tar {ratio(c(mine), c(tar))}"
              f"  cli/go {ratio(c(cli), c(go))}", flush=True)
    if m("inline apply") is not None:
        print(f"  apply (single-threaded, PREFETCH_THREAD=False): {fmt(m('inline apply'))}"
              f"  | inline/go {ratio(m('inline apply'), m('go apply'))}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big-mib", type=int, default=64, help="size of the incompressible corpus (MiB)")
    parser.add_argument("--full", action="store_true", help="use 512 MiB of incompressible files")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds per tool and corpus entry (the median is reported)")
    parser.add_argument("--corpus", default="debian,python,big,child", help="comma list")
    parser.add_argument("--no-gzip", action="store_true", help="skip the gzip variants")
    parser.add_argument("--only-gzip", action="store_true", help="skip the uncompressed variants")
    parser.add_argument("--driver", choices=("vfs", "overlay", "btrfs"), default="vfs",
                        help="graph driver for both tools (btrfs: the workspace is a loop-mounted btrfs)")
    parser.add_argument("--inline-too", action="store_true",
                        help="also time the API apply with layercontent.PREFETCH_THREAD=False")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("this benchmark needs root (loop mounts, vfs layer ownership)", file=sys.stderr)
        return 2
    if GO is None:
        print("note: containers-storage not installed; Go columns stay empty", file=sys.stderr)
    big_mib = 512 if args.full else args.big_mib
    os.makedirs(CACHE, exist_ok=True)

    wanted = args.corpus.split(",")
    sources: list[tuple[str, str, str | None]] = []
    if "debian" in wanted:
        sources.append(("debian", corpus_debian(), None))
    python_tar = corpus_python() if {"python", "child"} & set(wanted) else ""
    if "python" in wanted:
        sources.append(("python", python_tar, None))
    if "big" in wanted:
        sources.append((f"big {big_mib}MiB", corpus_big(big_mib), None))
    if "child" in wanted:
        sources.append(("child", corpus_child(python_tar), python_tar))
    cases: list[Case] = []
    for name, path, parent in sources:
        if not args.only_gzip:
            cases.append(Case(name, path, parent, False))
        if not args.no_gzip:
            cases.append(Case(name + " .gz", gzipped(path), parent, True))
    biggest = max(os.path.getsize(c.tar) for c in cases) + max(
        (os.path.getsize(c.parent_tar) for c in cases if c.parent_tar), default=0)
    size_mib = max(1024, (biggest * 4 >> 20) + 512)
    if args.driver == "btrfs":  # metadata chunks and not yet freed subvolumes take their share
        size_mib *= 3
    ws = Workspace(size_mib, "btrfs" if args.driver == "btrfs" else "ext4")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unmount on kill too
    try:
        tools = Tools(ws, cli_usable(ws), args.inline_too, args.driver)
        print(f"driver: {args.driver}; workspace: {ws.kind}; runs: {args.runs}; lamina CLI: {'yes' if tools.cli else 'no'}; "
              f"Go: {'yes' if GO else 'no'}", flush=True)
        for case in cases:
            case.size, case.entries = describe(case.tar)
            # interleaved, so that machine noise hits every tool alike; small entries (tens of ms,
            # where a stall of the VM weighs most) get three times the rounds
            for _ in range(args.runs * (3 if case.size < _SMALL_CASE else 1)):
                tools.tar_x(case)
                if GO:
                    tools.cli_round(case, "go", "go")
                tools.api_round(case)
                if tools.cli:
                    tools.cli_round(case, "cli", "cli")
            report(case)
    finally:
        ws.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
