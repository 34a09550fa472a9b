"""Tests for lamina.lockfile: token format, Modified() semantics, exclusion between threads,
between Python processes and against the Go containers-storage tool."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import shutil
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lamina
from lamina import lockfile as lockfile_mod
from lamina.errors import StoreIsReadOnly
from lamina.lockfile import TOKEN_SIZE, LockFile, LockModeMismatch, new_token

GO = shutil.which("containers-storage")
needs_go = pytest.mark.skipif(GO is None, reason="Go containers-storage (Debian package) not installed")

CORE_DIR = str(Path(lamina.__file__).resolve().parent.parent)

# A child process that speaks a tiny line protocol on stdin/stdout.
CHILD = r"""
import sys
from lamina.lockfile import LockFile
path, op = sys.argv[1], sys.argv[2]
lf = LockFile.get(path)
if op in ("w", "r"):
    (lf.lock if op == "w" else lf.rlock)()
    print("locked", flush=True)
    sys.stdin.readline()
    lf.unlock()
    print("released", flush=True)
elif op in ("try_w", "try_r"):
    got = (lf.try_lock if op == "try_w" else lf.try_rlock)()
    print("got" if got else "busy", flush=True)
    if got:
        lf.unlock()
elif op == "touch":
    with lf.locked():
        lf.touch()
    print("touched", flush=True)
elif op == "inc":
    n = int(sys.argv[3])
    for _ in range(n):
        with lf.locked():
            with open(path + ".count", "r+") as f:
                v = int(f.read() or "0")
                f.seek(0)
                f.write(str(v + 1))
                f.truncate()
    print("done", flush=True)
"""


class Child:
    """A Python child process running CHILD, with line reads that can time out."""

    def __init__(self, path: Path, op: str, *extra: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = CORE_DIR + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), op, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=env,
        )
        self._buf = b""

    def line(self, timeout: float) -> str | None:
        """Return the next stdout line, or None if none arrives within ``timeout`` seconds."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    return None
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    def finish(self) -> int:
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    f.close()


@pytest.fixture
def lockpath(tmp_path: Path) -> Path:
    return tmp_path / "sub" / "dir" / "test.lock"


def open_fds_for(path: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                n += 1
        except OSError:
            pass
    return n


# ------------------------------------------------------------------------- tokens


def test_token_layout() -> None:
    before = time.time_ns()
    a = new_token()
    b = new_token()
    after = time.time_ns()
    assert len(a) == len(b) == TOKEN_SIZE == 64
    ta, ca, pa = struct.unpack_from("<QQI", a)
    tb, cb, pb = struct.unpack_from("<QQI", b)
    assert before <= ta <= tb <= after
    assert cb == ca + 1 and ca >= 1
    assert pa == pb == os.getpid()
    assert a[20:] != b[20:]  # 44 random bytes


def test_registry_one_object_per_path(lockpath: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(lockpath.parent.parent.parent)
    a = LockFile.get(str(lockpath))
    b = LockFile.get(os.path.relpath(lockpath))
    c = LockFile.get(str(lockpath.parent) + "/../dir/test.lock")
    assert a is b is c
    assert a.path == str(lockpath)
    with pytest.raises(TypeError):
        LockFile(str(lockpath), False)


def test_creation_modes(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "a" / "b" / "x.lock"
        LockFile.get(str(path))
    finally:
        os.umask(old)
    assert path.exists() and path.stat().st_size == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_read_only(tmp_path: Path) -> None:
    path = tmp_path / "ro.lock"
    path.write_bytes(b"")
    lf = LockFile.get(str(path), read_only=True)
    assert not lf.is_read_write
    with pytest.raises(StoreIsReadOnly):
        lf.lock()
    with pytest.raises(StoreIsReadOnly):
        lf.try_lock()
    assert not lf.is_locked
    with lf.read_locked():
        assert lf.modified()  # empty file: short read
        with pytest.raises(RuntimeError):
            lf.touch()
    with pytest.raises(LockModeMismatch):
        LockFile.get(str(path))
    rw = LockFile.get(str(tmp_path / "rw.lock"))
    assert rw.is_read_write
    with pytest.raises(LockModeMismatch):
        LockFile.get(str(tmp_path / "rw.lock"), read_only=True)


# ------------------------------------------------------------------ single process


def test_fd_lifetime_and_counter(lockpath: Path) -> None:
    lf = LockFile.get(str(lockpath))
    assert open_fds_for(lockpath) == 0
    lf.rlock()
    lf.rlock()  # nested read lock in one thread: same fd
    assert open_fds_for(lockpath) == 1
    lf.unlock()
    assert lf.is_locked and open_fds_for(lockpath) == 1
    lf.unlock()
    assert not lf.is_locked and open_fds_for(lockpath) == 0
    with pytest.raises(RuntimeError):
        lf.unlock()
    with lf.locked():
        assert open_fds_for(lockpath) == 1
        assert lf.locked_for_write
    assert open_fds_for(lockpath) == 0 and not lf.locked_for_write


def test_posix_record_lock_not_flock(lockpath: Path) -> None:
    lf = LockFile.get(str(lockpath))
    ino = os.stat(lockpath).st_ino

    def entries() -> list[list[str]]:
        with open("/proc/locks") as f:
            rows = [line.split() for line in f]
        return [r for r in rows if r[5].rsplit(":", 1)[-1] == str(ino) and r[4] == str(os.getpid())]

    with lf.locked():
        (row,) = entries()
        assert row[1:4] == ["POSIX", "ADVISORY", "WRITE"]
        assert row[6:8] == ["0", "EOF"]  # whole file
    assert entries() == []
    with lf.read_locked():
        (row,) = entries()
        assert row[1:4] == ["POSIX", "ADVISORY", "READ"]
    assert entries() == []


def test_reentrancy_errors(lockpath: Path) -> None:
    lf = LockFile.get(str(lockpath))
    with lf.locked():
        with pytest.raises(RuntimeError):
            lf.lock()
        with pytest.raises(RuntimeError):
            lf.rlock()
        lf.assert_locked()
        lf.assert_locked_for_write()
    with lf.read_locked():
        with pytest.raises(RuntimeError):
            lf.lock()
        lf.assert_locked()
        with pytest.raises(RuntimeError):
            lf.assert_locked_for_write()
    with pytest.raises(RuntimeError):
        lf.assert_locked()
    assert not lf.is_locked and open_fds_for(lockpath) == 0


def test_requires_lock(lockpath: Path) -> None:
    lf = LockFile.get(str(lockpath))
    for call in (lf.touch, lf.modified, lambda: lf.touched_since(0)):
        with pytest.raises(RuntimeError):
            call()
    with lf.read_locked():
        with pytest.raises(RuntimeError):
            lf.touch()


def test_touch_writes_token(lockpath: Path) -> None:
    lf = LockFile.get(str(lockpath))
    t0 = time.time_ns()
    with lf.locked():
        lf.touch()
        lf.record_write()
    data = lockpath.read_bytes()
    assert len(data) == 64
    t, ctr, pid = struct.unpack_from("<QQI", data)
    assert t0 <= t <= time.time_ns()
    assert pid == os.getpid() and ctr >= 2


def test_touch_never_shrinks(lockpath: Path) -> None:
    lf = LockFile.get(str(lockpath))
    lockpath.write_bytes(b"x" * 100)
    with lf.locked():
        lf.touch()
    data = lockpath.read_bytes()
    assert len(data) == 100 and data[64:] == b"x" * 36 and data[:64] != b"x" * 64


def test_modified_semantics(lockpath: Path) -> None:
    lf = LockFile.get(str(lockpath))
    with lf.read_locked():
        # never touched, 0 bytes: a short read is always "modified" and is not remembered
        assert lf.modified()
        assert lf.modified()
    with lf.locked():
        lf.touch()
        assert not lf.modified()  # own write
        assert not lf.modified()
    # another process writes
    child = Child(lockpath, "touch")
    assert child.line(10) == "touched"
    assert child.finish() == 0
    with lf.read_locked():
        assert lf.modified()
        assert not lf.modified()


def test_fresh_object_sees_existing_token_as_modified(tmp_path: Path) -> None:
    path = tmp_path / "fresh.lock"
    path.write_bytes(new_token())
    lf = LockFile.get(str(path))
    with lf.read_locked():
        assert lf.modified()
        assert not lf.modified()


def test_touched_since(lockpath: Path) -> None:
    lf = LockFile.get(str(lockpath))
    with lf.locked():
        lf.touch()
        mtime = os.fstat(lf._fd).st_mtime_ns
        assert lf.touched_since(mtime - 1)
        assert not lf.touched_since(mtime)
        assert not lf.touched_since(time.time_ns() + 10**9)


def test_retries_on_edeadlk(lockpath: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fcntl.lockf
    calls: list[int] = []

    def flaky(fd: int, op: int, *args: int) -> None:
        calls.append(op)
        if len(calls) <= 2:
            raise OSError(errno.EDEADLK, "Resource deadlock avoided")
        real(fd, op, *args)

    monkeypatch.setattr(lockfile_mod.fcntl, "lockf", flaky)
    lf = LockFile.get(str(lockpath))
    t = time.monotonic()
    with lf.locked():
        pass
    assert len(calls) == 3 and calls[0] == fcntl.LOCK_EX
    assert time.monotonic() - t >= 0.015


def test_open_failure_releases_mutex(tmp_path: Path) -> None:
    d = tmp_path / "gone"
    lf = LockFile.get(str(d / "x.lock"))
    shutil.rmtree(d)
    d.write_bytes(b"")  # parent is now a file: open fails with ENOTDIR
    with pytest.raises(OSError):
        lf.lock()
    assert not lf.is_locked
    d.unlink()
    with lf.locked():  # recreates the parent dir, and the RW mutex was not leaked
        pass


# ------------------------------------------------------------------------- threads


def test_threads_counter(tmp_path: Path) -> None:
    lf = LockFile.get(str(tmp_path / "t.lock"))
    counter = tmp_path / "counter"
    counter.write_text("0")
    n_threads, n_iter = 12, 40

    def work() -> None:
        for _ in range(n_iter):
            with lf.locked():
                v = int(counter.read_text())
                time.sleep(0)  # invite a switch in the critical section
                counter.write_text(str(v + 1))
            with lf.read_locked():
                int(counter.read_text())

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(counter.read_text()) == n_threads * n_iter
    assert not lf.is_locked


def test_threads_share_read_lock_and_writer_waits(lockpath: Path) -> None:
    lf = LockFile.get(str(lockpath))
    both = threading.Barrier(2, timeout=5)
    release = threading.Event()
    writer_in = threading.Event()

    def reader() -> None:
        with lf.read_locked():
            both.wait()  # both readers inside at once
            release.wait(5)

    def writer() -> None:
        with lf.locked():
            writer_in.set()

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    time.sleep(0.05)
    w = threading.Thread(target=writer)
    w.start()
    assert not writer_in.wait(0.2)
    release.set()
    assert writer_in.wait(5)
    for t in [*readers, w]:
        t.join(5)
    assert not lf.is_locked and open_fds_for(lockpath) == 0


def test_try_lock_between_threads(lockpath: Path) -> None:
    lf = LockFile.get(str(lockpath))
    out: list[bool] = []
    with lf.locked():
        t = threading.Thread(target=lambda: out.extend([lf.try_lock(), lf.try_rlock()]))
        t.start()
        t.join()
    assert out == [False, False]
    assert lf.try_rlock()
    t = threading.Thread(target=lambda: out.append(lf.try_rlock()) or lf.unlock())
    t.start()
    t.join()
    assert out[-1] is True
    lf.unlock()
    assert not lf.is_locked


# ----------------------------------------------------------------------- processes


@pytest.mark.parametrize("child_op", ["w", "r"])
def test_write_lock_blocks_other_process(lockpath: Path, child_op: str) -> None:
    lf = LockFile.get(str(lockpath))
    lf.lock()
    child = Child(lockpath, child_op)
    try:
        assert child.line(0.5) is None  # blocked
    finally:
        lf.unlock()
    assert child.line(10) == "locked"
    child.release()
    assert child.line(10) == "released"
    assert child.finish() == 0


def test_other_process_write_lock_excludes_us(lockpath: Path) -> None:
    lf = LockFile.get(str(lockpath))
    child = Child(lockpath, "w")
    assert child.line(10) == "locked"
    try:
        assert not lf.try_lock()
        assert not lf.try_rlock()
        assert not lf.is_locked and open_fds_for(lockpath) == 0
        got = threading.Event()

        def blocker() -> None:
            with lf.read_locked():
                got.set()

        t = threading.Thread(target=blocker)
        t.start()
        assert not got.wait(0.3)
    finally:
        child.release()
    assert got.wait(10)
    t.join(5)
    assert child.line(10) == "released"
    assert child.finish() == 0
    assert lf.try_lock()
    lf.unlock()


def test_readers_share_across_processes(lockpath: Path) -> None:
    lf = LockFile.get(str(lockpath))
    with lf.read_locked():
        child = Child(lockpath, "r")
        assert child.line(10) == "locked"
        probe = Child(lockpath, "try_w")
        assert probe.line(10) == "busy"
        assert probe.finish() == 0
        child.release()
        assert child.line(10) == "released"
        assert child.finish() == 0
    probe = Child(lockpath, "try_w")
    assert probe.line(10) == "got"
    assert probe.finish() == 0


def test_processes_and_threads_counter(tmp_path: Path) -> None:
    path = tmp_path / "c.lock"
    lf = LockFile.get(str(path))
    count = Path(str(path) + ".count")
    count.write_text("0")
    children = [Child(path, "inc", "60") for _ in range(2)]

    def work() -> None:
        for _ in range(30):
            with lf.locked():
                v = int(count.read_text())
                count.write_text(str(v + 1))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in children:
        assert c.line(20) == "done"
        assert c.finish() == 0
    assert int(count.read_text()) == 2 * 60 + 4 * 30


def test_fork_child_does_not_hold_locks(lockpath: Path) -> None:
    lf = LockFile.get(str(lockpath))
    with lf.locked():
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.close(r)
                ok = (
                    not lf.is_locked
                    and LockFile.get(str(lockpath)) is lf
                    and not lf.try_lock()  # the parent still holds the fcntl lock
                    and not lf.is_locked
                )
                os.write(w, b"1" if ok else b"0")
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            verdict = f.read()
        os.waitpid(pid, 0)
        assert lf.locked_for_write  # parent state untouched
    assert verdict == b"1"


# ------------------------------------------------------------------------- Go tool


def go(graph: Path, run: Path, *args: str) -> list[str]:
    assert GO is not None
    return [GO, "--graph", str(graph), "--run", str(run), "--storage-driver", "vfs", *args]


@needs_go
def test_lamina_write_lock_blocks_go(tmp_path: Path) -> None:
    graph, run = tmp_path / "g", tmp_path / "r"
    lf = LockFile.get(str(graph / "vfs-layers" / "layers.lock"))
    lf.lock()
    lf.touch()
    proc = subprocess.Popen(go(graph, run, "create-layer"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert proc.poll() is None, "Go create-layer did not wait for lamina's write lock"
        assert not lf.modified()  # nothing was written behind our back
    finally:
        lf.unlock()
    try:
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert len(out.strip()) == 64
    with lf.read_locked():
        assert lf.modified()  # Go touched layers.lock after saving


@needs_go
def test_lamina_read_lock_blocks_go_writer(tmp_path: Path) -> None:
    graph, run = tmp_path / "g", tmp_path / "r"
    lf = LockFile.get(str(graph / "vfs-layers" / "layers.lock"))
    with lf.read_locked():
        proc = subprocess.Popen(go(graph, run, "create-layer"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        still_running = proc.poll() is None
    try:
        assert still_running, "Go create-layer did not wait for lamina's read lock"
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@needs_go
def test_go_token_is_seen(tmp_path: Path) -> None:
    graph, run = tmp_path / "g", tmp_path / "r"
    path = graph / "vfs-layers" / "layers.lock"
    t0 = time.time_ns()
    gop = subprocess.Popen(go(graph, run, "create-layer"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = gop.communicate(timeout=20)
    t1 = time.time_ns()
    assert gop.returncode == 0, err
    lf = LockFile.get(str(path))
    with lf.read_locked():
        assert lf.modified()
        assert not lf.modified()
        token = os.pread(lf._fd, 64, 0)
    assert len(path.read_bytes()) == 64
    t, ctr, pid = struct.unpack_from("<QQI", token)
    assert t0 <= t <= t1
    assert ctr > 0
    assert pid == gop.pid  # the Go process itself wrote the token
    # Our own touch then makes the token ours; Go keeps working on top of it.
    with lf.locked():
        lf.touch()
    proc = subprocess.run(go(graph, run, "create-layer"), capture_output=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    with lf.read_locked():
        assert lf.modified()
        assert struct.unpack_from("<I", os.pread(lf._fd, 64, 0), 16)[0] != os.getpid()


@needs_go
def test_go_reader_waits_for_lamina_writer_in_other_process(tmp_path: Path) -> None:
    """On a Go-created store, a lamina writer in another process makes Go's `layers` wait."""
    graph, run = tmp_path / "g", tmp_path / "r"
    proc = subprocess.run(go(graph, run, "create-layer"), capture_output=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    path = graph / "vfs-layers" / "layers.lock"
    # Both sides create lock files 0644 and parent dirs 0700.
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    child = Child(path, "w")
    assert child.line(10) == "locked"
    try:
        blocked = subprocess.Popen(go(graph, run, "layers"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        assert blocked.poll() is None  # Go reader waits for a lamina writer in another process
    finally:
        child.release()
    try:
        assert blocked.wait(timeout=10) == 0
    finally:
        if blocked.poll() is None:
            blocked.kill()
            blocked.wait()
    assert child.line(10) == "released"
    assert child.finish() == 0


@pytest.fixture(autouse=True)
def _no_leaked_locks() -> Iterator[None]:
    yield
    for lf in list(lockfile_mod._registry.values()):
        assert not lf.is_locked, f"test leaked a held lock: {lf!r}"
