"""Host facts and mount calls for the btrfs driver: statfs(2) and mount(2)/umount2(2) through ctypes.

Python's os module offers neither the filesystem type of statfs nor mount(2), so these go
straight to libc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re

__all__ = [
    "BTRFS_SUPER_MAGIC",
    "fs_magic",
    "fs_name",
    "nearest_existing",
    "is_mount_point",
    "make_private_bind",
    "unmount",
]

BTRFS_SUPER_MAGIC = 0x9123683E

#: statfs f_type values of filesystems a graph root commonly sits on (linux/magic.h).
_FS_NAMES = {
    BTRFS_SUPER_MAGIC: "btrfs",
    0xEF53: "ext2/ext3/ext4",
    0x58465342: "xfs",
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
    0x794C7630: "overlay",
    0x2FC12FC1: "zfs",
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xF2F52010: "f2fs",
    0x65735546: "fuse",
    0x73717368: "squashfs",
    0x01021997: "9p",
    0x4D44: "vfat",
    0x5346544E: "ntfs",
    0x2011BAB0: "exfat",
    0xCA451A4E: "bcachefs",
    0x9FA0: "proc",
    0x62656572: "sysfs",
}

_MS_BIND = 0x1000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 0x2


class _Statfs(ctypes.Structure):
    # glibc's struct statfs64: __fsword_t is a long; the counters are 64-bit everywhere.
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_uint64),
        ("f_bfree", ctypes.c_uint64),
        ("f_bavail", ctypes.c_uint64),
        ("f_files", ctypes.c_uint64),
        ("f_ffree", ctypes.c_uint64),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        statfs = getattr(lib, "statfs64", None) or lib.statfs
        statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Statfs)]
        statfs.restype = ctypes.c_int
        lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
        lib.mount.restype = ctypes.c_int
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.umount2.restype = ctypes.c_int
        _libc = lib
    return _libc


def _raise_errno(what: str, path: str, err: int | None = None) -> None:
    err = ctypes.get_errno() if err is None else err
    raise OSError(err, f"{what}: {os.strerror(err)}", path)


def nearest_existing(path: str) -> str:
    """*path* itself if it exists, else its closest existing ancestor."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def fs_magic(path: str) -> int:
    """statfs(2) ``f_type`` of the filesystem holding *path*, as an unsigned 32-bit value."""
    lib = _lib()
    buf = _Statfs()
    statfs = getattr(lib, "statfs64", None) or lib.statfs
    if statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        _raise_errno("statfs", path)
    return int(buf.f_type) & 0xFFFFFFFF


def fs_name(magic: int) -> str:
    """A readable name for a statfs magic number (``unknown (0x...)`` when not in the table)."""
    return _FS_NAMES.get(magic, f"unknown filesystem 0x{magic:x}")


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def is_mount_point(path: str) -> bool:
    """Whether *path* (resolved) is a mount point in this mount namespace (/proc/self/mountinfo)."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return any(_unescape(line.split()[4]) == real for line in f)


def make_private_bind(path: str) -> bool:
    """Bind-mount *path* onto itself unless it already is a mount point, then make it MS_PRIVATE.

    This is containers/storage's ``mount.MakePrivate(home)``: mounts made below the driver home
    do not propagate to other namespaces. Returns whether this call made the bind mount.
    """
    lib = _lib()
    target = os.fsencode(os.path.realpath(path))
    made = False
    if not is_mount_point(path):
        if lib.mount(target, target, b"none", _MS_BIND, None) != 0:
            _raise_errno("bind-mounting the driver home onto itself", path)
        made = True
    if lib.mount(b"", target, b"none", _MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        if made:
            lib.umount2(target, _MNT_DETACH)
        _raise_errno("making the driver home mount private", path, err)
    return made


def unmount(path: str) -> bool:
    """Unmount *path*; lazily (MNT_DETACH, as containers/storage always does) only when it is busy.

    A plain unmount releases the filesystem at once, so it can be unmounted right afterwards; a lazy
    one keeps it pinned until the kernel lets go of the detached mount. Returns False when *path* was
    not a mount point (EINVAL) or is missing.
    """
    lib = _lib()
    target = os.fsencode(os.path.realpath(path))
    for flags in (0, _MNT_DETACH):
        if lib.umount2(target, flags) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return False
        if err != errno.EBUSY:
            break
    raise OSError(err, f"unmounting the driver home: {os.strerror(err)}", path)

