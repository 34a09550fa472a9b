"""Inter-process lock files compatible with containers/storage 1.43 ``pkg/lockfile``.

Lamina and the Go tools (podman, buildah, containers-storage) exclude each other on the same store
because both use the same protocol:

* POSIX record locks (``fcntl(F_SETLKW)``, whole file, ``F_WRLCK``/``F_RDLCK``), never ``flock(2)``.
* One :class:`LockFile` object per absolute path per process. Inside the process a readers-writer
  mutex orders threads and a counter tracks holders; the file is opened and fcntl-locked when the
  counter goes 0→1 and closed (which releases the fcntl lock) when it returns to 0.
* The first 64 bytes of the file are the "last writer" token, rewritten by :meth:`LockFile.touch`
  after every change to the protected data and compared by :meth:`LockFile.modified` to find out
  whether another process (or another object) changed it.

Because POSIX locks belong to the process and are dropped when *any* descriptor of the file is
closed, nothing else in lamina may open and close a lock file while it is locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
import time
from collections.abc import Iterator
from typing import Final

from lamina.errors import LaminaError, StoreIsReadOnly

__all__ = [
    "TOKEN_SIZE",
    "LockFile",
    "LockModeMismatch",
    "new_token",
]

TOKEN_SIZE: Final = 64
"""Size of the last-writer token at the start of every lock file."""

_RETRY_DELAY: Final = 0.010  # Go sleeps 10 ms between failed F_SETLKW attempts
_RETRY_ERRNOS: Final = frozenset({errno.EINTR, errno.EDEADLK})
_BUSY_ERRNOS: Final = frozenset({errno.EAGAIN, errno.EACCES})

_WRITE: Final = "w"
_READ: Final = "r"


class LockModeMismatch(LaminaError, ValueError):
    """The path is already registered in this process with the other read-only/read-write mode."""


# ----------------------------------------------------------------------------- tokens

_token_counter = 0
_token_lock = threading.Lock()


def new_token() -> bytes:
    """Return a fresh 64-byte last-writer token, laid out exactly like Go's ``newLastWriterID``.

    ``[0:8]`` LE uint64 ``time.time_ns()``, ``[8:16]`` LE uint64 process-wide counter (incremented
    before use, so the first token of a process has 1), ``[16:20]`` LE uint32 PID, ``[20:64]`` 44
    bytes from ``os.urandom``.
    """
    global _token_counter
    with _token_lock:
        _token_counter += 1
        counter = _token_counter
    head = struct.pack(
        "<QQI",
        time.time_ns() & 0xFFFFFFFFFFFFFFFF,
        counter & 0xFFFFFFFFFFFFFFFF,
        os.getpid() & 0xFFFFFFFF,
    )
    return head + os.urandom(TOKEN_SIZE - len(head))


# ---------------------------------------------------------------- in-process RW mutex


class _RWMutex:
    """Writer-preferring readers-writer mutex (like Go's ``sync.RWMutex``) with owner tracking.

    A waiting writer blocks new readers, except threads that already hold a read lock (so nested
    read locks in one thread cannot deadlock). Re-entrant write locking and read/write upgrades from
    the same thread would deadlock in Go; here they raise RuntimeError instead.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers: dict[int, int] = {}  # thread ident -> nested read count
        self._writer: int | None = None
        self._waiting_writers = 0

    def acquire_read(self, blocking: bool = True) -> bool:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                raise RuntimeError("read lock requested by the thread holding the write lock")
            if me not in self._readers:
                while self._writer is not None or self._waiting_writers:
                    if not blocking:
                        return False
                    self._cond.wait()
            self._readers[me] = self._readers.get(me, 0) + 1
            return True

    def acquire_write(self, blocking: bool = True) -> bool:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                raise RuntimeError("write lock requested again by the thread holding it")
            if me in self._readers:
                raise RuntimeError("write lock requested by a thread holding a read lock")
            if self._writer is not None or self._readers:
                if not blocking:
                    return False
                self._waiting_writers += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._waiting_writers -= 1
            self._writer = me
            return True

    def release(self) -> None:
        """Release the write lock, or one read lock (preferably the calling thread's)."""
        me = threading.get_ident()
        with self._cond:
            if self._writer is not None:
                self._writer = None
            elif self._readers:
                owner = me if me in self._readers else next(iter(self._readers))
                left = self._readers[owner] - 1
                if left:
                    self._readers[owner] = left
                else:
                    del self._readers[owner]
            else:
                raise RuntimeError("release of an unlocked RW mutex")
            self._cond.notify_all()

    def held_for_write_by_me(self) -> bool:
        return self._writer == threading.get_ident()

    def held_by_me(self) -> bool:
        me = threading.get_ident()
        return self._writer == me or me in self._readers


# ----------------------------------------------------------------------------- helpers


class _Busy(Exception):
    """Internal: a non-blocking fcntl lock attempt found the file locked by another process."""


def _mkdir_all(path: str, mode: int) -> None:
    """Create ``path`` and missing parents, each with ``mode`` (like Go's os.MkdirAll)."""
    if not path or os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _mkdir_all(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def _open_lock(path: str, read_only: bool) -> int:
    """Open the lock file as Go's ``openLock`` does; create the parent dirs (0700) when missing."""
    flags = os.O_CREAT | os.O_CLOEXEC | (os.O_RDONLY if read_only else os.O_RDWR)
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        _mkdir_all(os.path.dirname(path), 0o700)
        return os.open(path, flags, 0o644)


def _fcntl_lock(fd: int, kind: str, blocking: bool) -> bool:
    """Take the whole-file POSIX record lock; return False if non-blocking and busy."""
    op = fcntl.LOCK_EX if kind == _WRITE else fcntl.LOCK_SH
    if not blocking:
        op |= fcntl.LOCK_NB
    while True:
        try:
            # fcntl.lockf is F_SETLK(W) with l_whence=SEEK_SET, l_start=0, l_len=0 (whole file).
            fcntl.lockf(fd, op)
            return True
        except OSError as e:
            if not blocking and e.errno in _BUSY_ERRNOS:
                return False
            if e.errno in _RETRY_ERRNOS:
                time.sleep(_RETRY_DELAY)
                continue
            raise


# ---------------------------------------------------------------------------- LockFile

_registry: dict[str, LockFile] = {}
_registry_lock = threading.Lock()
_create_key = object()


class LockFile:
    """A containers/storage-compatible lock file; obtain instances with :meth:`LockFile.get`.

    Contract: ``lock``/``rlock`` block until held (thread-level and process-level), ``unlock``
    releases one acquisition. Read locks are shared between threads and processes; the write lock
    is exclusive. Locks are not re-entrant for writing. ``touch`` needs the write lock,
    ``modified``/``touched_since`` need any lock.
    """

    def __init__(self, path: str, read_only: bool, _key: object = None) -> None:
        if _key is not _create_key:
            raise TypeError("use LockFile.get(path) to obtain a LockFile")
        self._path = path
        self._ro = read_only
        self._reset_state()
        self._lw = new_token()  # random "remembered" token: the first modified() is True

    def _reset_state(self) -> None:
        self._rw = _RWMutex()
        self._state = threading.Lock()
        self._counter = 0
        self._fd = -1
        self._locktype = _READ if self._ro else _WRITE
        self._locked = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def get(cls, path: str, *, read_only: bool = False) -> LockFile:
        """Return the process-wide LockFile for ``path`` (made absolute), creating it if needed.

        Creating it opens and closes the file once (creating it 0644, parents 0700), so errors show
        up here rather than at lock time. Raises :class:`LockModeMismatch` if the path is already
        registered with the other ``read_only`` mode.
        """
        abspath = os.path.abspath(path)
        with _registry_lock:
            existing = _registry.get(abspath)
            if existing is not None:
                if existing._ro != read_only:
                    what = "is a read-only lock" if existing._ro else "is not a read-only lock"
                    raise LockModeMismatch(f"lock {abspath!r} {what}")
                return existing
            os.close(_open_lock(abspath, read_only))
            lf = cls(abspath, read_only, _create_key)
            _registry[abspath] = lf
            return lf

    # ------------------------------------------------------------------ properties

    @property
    def path(self) -> str:
        """Absolute path of the lock file."""
        return self._path

    @property
    def is_read_write(self) -> bool:
        """True unless the lock was obtained with ``read_only=True``."""
        return not self._ro

    @property
    def is_locked(self) -> bool:
        """True while some thread of this process holds the lock (read or write)."""
        return self._locked

    @property
    def locked_for_write(self) -> bool:
        """True while some thread of this process holds the write lock (Go's ``Locked()``)."""
        return self._locked and self._locktype == _WRITE

    def held_by_current_thread(self) -> bool:
        """True if the calling thread holds this lock (read or write)."""
        return self._locked and self._rw.held_by_me()

    def assert_locked(self) -> None:
        """Raise RuntimeError unless the calling thread holds the lock (read or write)."""
        if not self.held_by_current_thread():
            raise RuntimeError(f"lock {self._path!r} is not held by the calling thread")

    def assert_locked_for_write(self) -> None:
        """Raise RuntimeError unless the calling thread holds the write lock."""
        if not (self._locked and self._locktype == _WRITE and self._rw.held_for_write_by_me()):
            raise RuntimeError(f"lock {self._path!r} is not held for writing by the calling thread")

    # ------------------------------------------------------------------ locking

    def _acquire(self, kind: str, blocking: bool) -> bool:
        if kind == _WRITE and self._ro:
            raise StoreIsReadOnly(f"can't take write lock on read-only lock file {self._path!r}")
        got = self._rw.acquire_write(blocking) if kind == _WRITE else self._rw.acquire_read(blocking)
        if not got:
            return False
        try:
            with self._state:
                if self._counter == 0:
                    fd = _open_lock(self._path, self._ro)
                    got = False
                    try:
                        got = _fcntl_lock(fd, kind, blocking)
                    finally:
                        if not got:
                            os.close(fd)
                    if not got:
                        raise _Busy
                    self._fd = fd
                self._locktype = kind
                self._locked = True
                self._counter += 1
                return True
        except BaseException as e:
            self._rw.release()
            if isinstance(e, _Busy):
                return False
            raise

    def lock(self) -> None:
        """Take the write (exclusive) lock, blocking. Raises StoreIsReadOnly on read-only locks."""
        self._acquire(_WRITE, True)

    def rlock(self) -> None:
        """Take a read (shared) lock, blocking."""
        self._acquire(_READ, True)

    def try_lock(self) -> bool:
        """Take the write lock if that is possible without waiting; return whether it was taken."""
        return self._acquire(_WRITE, False)

    def try_rlock(self) -> bool:
        """Take a read lock if that is possible without waiting; return whether it was taken."""
        return self._acquire(_READ, False)

    def unlock(self) -> None:
        """Release one acquisition; the last one closes the fd, releasing the fcntl lock.

        Raises RuntimeError if the lock is not held (Go panics).
        """
        with self._state:
            if not self._locked or self._counter <= 0:
                raise RuntimeError(f"calling unlock on unlocked lock {self._path!r}")
            self._counter -= 1
            if self._counter == 0:
                self._locked = False
                fd, self._fd = self._fd, -1
                try:
                    os.close(fd)
                finally:
                    self._rw.release()
            else:
                self._rw.release()

    @contextlib.contextmanager
    def locked(self) -> Iterator[LockFile]:
        """Context manager holding the write lock."""
        self.lock()
        try:
            yield self
        finally:
            self.unlock()

    @contextlib.contextmanager
    def read_locked(self) -> Iterator[LockFile]:
        """Context manager holding a read lock."""
        self.rlock()
        try:
            yield self
        finally:
            self.unlock()

    # ------------------------------------------------------------------ last-writer token

    def touch(self) -> None:
        """Record a write: store a fresh :func:`new_token` at offset 0 and remember it.

        Needs the write lock (RuntimeError otherwise). Raises OSError(ENOSPC) on a short write.
        """
        with self._state:
            if not self._locked or self._locktype != _WRITE:
                raise RuntimeError(
                    f"attempted to update last-writer in lock {self._path!r} without the write lock"
                )
            self._lw = new_token()
            n = os.pwrite(self._fd, self._lw, 0)
            if n != TOKEN_SIZE:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)

    record_write = touch

    def modified(self) -> bool:
        """Return whether the token changed since this object last wrote or saw it.

        Needs a lock (RuntimeError otherwise). Reads 64 bytes at offset 0: a short read (e.g. a
        never-touched, empty file) counts as modified and is not remembered; otherwise the token
        read is remembered and the result is ``token != previous``.
        """
        with self._state:
            if not self._locked:
                raise RuntimeError(
                    f"attempted to check last-writer in lock {self._path!r} without locking it first"
                )
            current = os.pread(self._fd, TOKEN_SIZE, 0)
            if len(current) != TOKEN_SIZE:
                return True
            previous, self._lw = self._lw, current
            return current != previous

    def touched_since(self, when_ns: int) -> bool:
        """Return whether the file's mtime (ns since the epoch) is after ``when_ns``.

        Needs a lock (RuntimeError otherwise) because only then is the fd open.
        """
        with self._state:
            if not self._locked:
                raise RuntimeError(f"touched_since on unlocked lock {self._path!r}")
            return os.fstat(self._fd).st_mtime_ns > when_ns

    def __repr__(self) -> str:
        state = "unlocked"
        if self._locked:
            state = f"{'write' if self._locktype == _WRITE else 'read'}-locked x{self._counter}"
        mode = "ro" if self._ro else "rw"
        return f"<LockFile {self._path!r} {mode} {state}>"


def _after_fork_in_child() -> None:
    """Forget every lock state inherited from the parent (fcntl locks are not inherited).

    The registry keeps its objects (so there is still one object per path), but each is reset to
    unlocked with fresh mutexes; inherited descriptors are closed, which cannot affect the parent's
    locks since POSIX record locks belong to the parent process.
    """
    global _registry_lock, _token_lock
    _registry_lock = threading.Lock()
    _token_lock = threading.Lock()
    for lf in _registry.values():
        fd = lf._fd
        lf._reset_state()
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


os.register_at_fork(after_in_child=_after_fork_in_child)
