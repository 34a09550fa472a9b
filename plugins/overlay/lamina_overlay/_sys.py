"""Thin ctypes wrappers over the Linux calls the overlay driver needs (mount(2), umount2(2),
unshare(2), statfs(2), readdir(3) d_type, openat2(2)), plus /proc/self/mountinfo parsing and
Go's ``mount.ParseOptions``. No subprocess is started by anything in this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

__all__ = [
    "MS_RDONLY", "MS_NOSUID", "MS_NODEV", "MS_NOEXEC", "MS_BIND", "MS_REC", "MS_PRIVATE",
    "MNT_DETACH", "PAGE_SIZE",
    "mount", "umount", "statfs_magic", "supports_d_type", "parse_mount_options",
    "MountInfo", "mountinfo", "is_mountpoint", "is_self_bind", "run_in_private_cwd",
    "open_in_root",
]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_libc.unshare.argtypes = [ctypes.c_int]
_libc.unshare.restype = ctypes.c_int
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_libc.statfs.restype = ctypes.c_int
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.opendir.restype = ctypes.c_void_p
_libc.readdir.argtypes = [ctypes.c_void_p]
_libc.readdir.restype = ctypes.c_void_p
_libc.closedir.argtypes = [ctypes.c_void_p]
_libc.closedir.restype = ctypes.c_int

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 0x2
CLONE_FS = 0x200

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _check(ret: int, what: str, path: str | None = None) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """mount(2); raises OSError with the errno."""
    ret = _libc.mount(os.fsencode(source), os.fsencode(target), os.fsencode(fstype), flags,
                      os.fsencode(data) if data else None)
    _check(ret, f"mount {fstype} on {target}", target)


def umount(target: str, flags: int = 0) -> None:
    """umount2(2); raises OSError with the errno (EINVAL: not a mount point)."""
    _check(_libc.umount2(os.fsencode(target), flags), f"unmount {target}", target)


def statfs_magic(path: str) -> int:
    """The filesystem magic number (``f_type``) of the filesystem holding *path*."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    _check(_libc.statfs(os.fsencode(path), buf), "statfs", path)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF

# glibc's struct dirent on 64-bit Linux: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name.
_D_TYPE_OFFSET = 18
_DT_UNKNOWN = 0


def supports_d_type(directory: str) -> bool:
    """Whether readdir(3) in *directory* fills d_type (overlay needs it; xfs ftype=0 does not).

    Creates and removes a probe file, like containers/storage's fsutils.SupportsDType."""
    probe = os.path.join(directory, f".d_type-probe-{os.getpid()}-{threading.get_ident()}")
    with open(probe, "wb"):
        pass
    try:
        handle = _libc.opendir(os.fsencode(directory))
        if not handle:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), directory)
        try:
            while True:
                ctypes.set_errno(0)
                entry = _libc.readdir(handle)
                if not entry:
                    if ctypes.get_errno():
                        err = ctypes.get_errno()
                        raise OSError(err, os.strerror(err), directory)
                    return False
                d_type = ctypes.c_ubyte.from_address(entry + _D_TYPE_OFFSET).value
                name = ctypes.string_at(entry + _D_TYPE_OFFSET + 1)
                if name in (b".", b".."):
                    continue
                return d_type != _DT_UNKNOWN
        finally:
            _libc.closedir(handle)
    finally:
        os.unlink(probe)


# Go's pkg/mount flag table: name -> (clear, flag)
_MOUNT_FLAGS: dict[str, tuple[bool, int]] = {
    "defaults": (False, 0),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "suid": (True, MS_NOSUID),
    "nosuid": (False, MS_NOSUID),
    "dev": (True, MS_NODEV),
    "nodev": (False, MS_NODEV),
    "exec": (True, MS_NOEXEC),
    "noexec": (False, MS_NOEXEC),
    "sync": (False, MS_SYNCHRONOUS),
    "async": (True, MS_SYNCHRONOUS),
    "dirsync": (False, MS_DIRSYNC),
    "remount": (False, MS_REMOUNT),
    "mand": (False, MS_MANDLOCK),
    "nomand": (True, MS_MANDLOCK),
    "atime": (True, MS_NOATIME),
    "noatime": (False, MS_NOATIME),
    "diratime": (True, MS_NODIRATIME),
    "nodiratime": (False, MS_NODIRATIME),
    "bind": (False, MS_BIND),
    "rbind": (False, MS_BIND | MS_REC),
    "unbindable": (False, MS_UNBINDABLE),
    "runbindable": (False, MS_UNBINDABLE | MS_REC),
    "private": (False, MS_PRIVATE),
    "rprivate": (False, MS_PRIVATE | MS_REC),
    "shared": (False, MS_SHARED),
    "rshared": (False, MS_SHARED | MS_REC),
    "slave": (False, MS_SLAVE),
    "rslave": (False, MS_SLAVE | MS_REC),
    "relatime": (False, MS_RELATIME),
    "norelatime": (True, MS_RELATIME),
    "strictatime": (False, MS_STRICTATIME),
    "nostrictatime": (True, MS_STRICTATIME),
}


def parse_mount_options(options: str) -> tuple[int, str]:
    """Split a mount option string into (MS_* flags, filesystem data), as Go's ParseOptions.

    Empty items are dropped; unknown items (``lowerdir=...``, ``volatile``) go to the data."""
    flags = 0
    data: list[str] = []
    for item in options.split(","):
        if not item:
            continue
        known = _MOUNT_FLAGS.get(item)
        if known is None:
            data.append(item)
        elif known[0]:
            flags &= ~known[1]
        else:
            flags |= known[1]
    return flags, ",".join(data)


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    parent_id: int
    dev: str
    root: str
    mount_point: str
    fstype: str
    source: str
    super_options: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal
    if "\\" not in field:
        return field
    raw = field.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 4 <= len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def mountinfo() -> list[MountInfo]:
    """All mounts of this process's mount namespace, in mount order."""
    found: list[MountInfo] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            pre, _, post = line.rstrip("\n").partition(" - ")
            fields = pre.split()
            tail = post.split()
            if len(fields) < 5 or len(tail) < 2:
                continue
            found.append(MountInfo(
                mount_id=int(fields[0]), parent_id=int(fields[1]), dev=fields[2],
                root=_unescape(fields[3]), mount_point=_unescape(fields[4]), fstype=tail[0],
                source=_unescape(tail[1]), super_options=tail[2] if len(tail) > 2 else "",
            ))
    return found


def is_mountpoint(path: str) -> bool:
    """Whether something is mounted exactly at *path* (Go's mount.Mounted)."""
    real = os.path.realpath(path)
    return any(m.mount_point == real for m in mountinfo())


def is_self_bind(path: str) -> bool:
    """Whether the topmost mount at *path* is a bind mount of *path* onto itself (what
    containers/storage's MakePrivate creates), as opposed to a filesystem mounted there."""
    real = os.path.realpath(path)
    mounts = mountinfo()
    by_id = {m.mount_id: m for m in mounts}
    top = [m for m in mounts if m.mount_point == real]
    if not top:
        return False
    m = top[-1]
    parent = by_id.get(m.parent_id)
    if parent is None or parent.dev != m.dev:
        return False
    if parent.mount_point == real:  # stacked on an earlier mount at the same place
        return parent.root == m.root
    rel = os.path.relpath(real, parent.mount_point)
    expected = os.path.normpath(os.path.join(parent.root, rel))
    return expected == m.root


T = TypeVar("T")


def run_in_private_cwd(fn: Callable[[], T]) -> T:
    """Run *fn* in a fresh thread whose working directory is its own (unshare(CLONE_FS)),
    so that *fn* may chdir without affecting the rest of the process; re-raise its error.

    This replaces Go's re-exec'd ``mountfrom`` child: mount data may then use relative paths."""
    box: dict[str, object] = {}

    def body() -> None:
        try:
            _check(_libc.unshare(CLONE_FS), "unshare(CLONE_FS)")
            box["result"] = fn()
        except BaseException as exc:  # handed to the calling thread below
            box["error"] = exc

    worker = threading.Thread(target=body, name="lamina-overlay-mount", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


_SYS_OPENAT2 = 437  # the same on every architecture
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_openat2_usable: bool | None = None


def open_in_root(root_fd: int, name: str) -> int:
    """Open *name* read-only below the directory *root_fd* without ever leaving it.

    Uses openat2(RESOLVE_IN_ROOT); where that is missing, walks the components with
    O_NOFOLLOW and refuses ``..`` and symlinks. Raises OSError (ENOENT, ELOOP, EACCES)."""
    global _openat2_usable
    rel = os.fsencode(name).lstrip(b"/") or b"."
    if _openat2_usable is not False:
        how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(root_fd), ctypes.c_char_p(rel),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            _openat2_usable = True
            return int(fd)
        err = ctypes.get_errno()
        if not (err in (errno.ENOSYS, errno.EPERM) and _openat2_usable is None):
            raise OSError(err, os.strerror(err), name)
        _openat2_usable = False
    parts = [p for p in rel.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise OSError(errno.EACCES, "path leaves the layer", name)
    cur = os.dup(root_fd)
    try:
        for comp in parts[:-1]:
            nxt = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = nxt
        return os.open(parts[-1] if parts else b".", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
    finally:
        os.close(cur)
