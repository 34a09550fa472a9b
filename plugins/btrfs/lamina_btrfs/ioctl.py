"""The btrfs ioctls the driver needs, called with ``fcntl.ioctl`` on struct-packed buffers.

Layouts follow the kernel UAPI header ``linux/btrfs.h``; request numbers use the asm-generic
``_IOC`` encoding (x86, arm, arm64, riscv, s390). Every function takes an open directory file
descriptor and raises ``OSError`` (with the kernel's errno) on failure.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

__all__ = [
    "FIRST_FREE_OBJECTID",
    "is_subvolume",
    "subvol_create",
    "snapshot_create",
    "subvol_destroy",
    "subvol_id",
    "subvol_read_only",
    "set_subvol_read_only",
    "quota_enable",
    "quota_enabled",
    "qgroup_limit",
    "qgroup_remove",
]

_MAGIC = 0x94
#: Inode number of every subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID).
FIRST_FREE_OBJECTID = 256

_VOL_ARGS = struct.Struct("=q4088s")  # btrfs_ioctl_vol_args: fd, name[BTRFS_PATH_NAME_MAX + 1]
_VOL_ARGS_V2 = struct.Struct("=qQQ4Q4040s")  # fd, transid, flags, unused[4], name[BTRFS_SUBVOL_NAME_MAX + 1]
_QUOTA_CTL = struct.Struct("=QQ")  # cmd, status
_QGROUP_LIMIT = struct.Struct("=Q5Q")  # qgroupid, lim{flags, max_rfer, max_excl, rsv_rfer, rsv_excl}
_QGROUP_CREATE = struct.Struct("=QQ")  # create, qgroupid
_INO_LOOKUP = struct.Struct("=QQ4080s")  # treeid, objectid, name
_SEARCH_KEY = struct.Struct("=7Q4I4Q")  # btrfs_ioctl_search_key (104 bytes)
_SEARCH_HEADER = struct.Struct("=3Q2I")  # transid, objectid, offset, type, len
_SEARCH_ARGS_SIZE = 4096
_FLAGS = struct.Struct("=Q")


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_MAGIC << 8) | nr


def _iow(nr: int, size: int) -> int:
    return _ioc(1, nr, size)


def _ior(nr: int, size: int) -> int:
    return _ioc(2, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(3, nr, size)


IOC_SUBVOL_CREATE = _iow(14, _VOL_ARGS.size)
IOC_SNAP_DESTROY = _iow(15, _VOL_ARGS.size)
IOC_TREE_SEARCH = _iowr(17, _SEARCH_ARGS_SIZE)
IOC_INO_LOOKUP = _iowr(18, _INO_LOOKUP.size)
IOC_SNAP_CREATE_V2 = _iow(23, _VOL_ARGS_V2.size)
IOC_SUBVOL_GETFLAGS = _ior(25, _FLAGS.size)
IOC_SUBVOL_SETFLAGS = _iow(26, _FLAGS.size)
IOC_QUOTA_CTL = _iowr(40, _QUOTA_CTL.size)
IOC_QGROUP_CREATE = _iow(42, _QGROUP_CREATE.size)
IOC_QGROUP_LIMIT = _ior(43, _QGROUP_LIMIT.size)
IOC_SNAP_DESTROY_V2 = _iow(63, _VOL_ARGS_V2.size)

_QUOTA_CTL_ENABLE = 1
_QGROUP_LIMIT_MAX_RFER = 1 << 0
_SUBVOL_RDONLY = 1 << 1
_QUOTA_TREE_OBJECTID = 8
_QGROUP_STATUS_KEY = 240
_U64_MAX = (1 << 64) - 1


def _name(name: str, limit: int) -> bytes:
    raw = os.fsencode(name)
    if not raw or b"/" in raw or raw in (b".", b"..") or len(raw) >= limit:
        raise OSError(errno.EINVAL, f"not a valid subvolume name: {name!r}")
    return raw


def _call(fd: int, request: int, buf: bytearray, what: str) -> bytearray:
    """ioctl with a mutable buffer (fcntl limits immutable arguments to 1024 bytes)."""
    try:
        fcntl.ioctl(fd, request, buf, True)
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: {os.strerror(exc.errno or 0)}") from None
    return buf


def is_subvolume(path: str) -> bool:
    """Whether *path* (not followed if a symlink) is the root directory of a btrfs subvolume."""
    st = os.lstat(path)
    return st.st_ino == FIRST_FREE_OBJECTID and (st.st_mode & 0o170000) == 0o040000


def subvol_create(dir_fd: int, name: str) -> None:
    """Create an empty subvolume *name* inside the directory *dir_fd* (BTRFS_IOC_SUBVOL_CREATE)."""
    buf = bytearray(_VOL_ARGS.pack(0, _name(name, 4088)))
    _call(dir_fd, IOC_SUBVOL_CREATE, buf, f"failed to create btrfs subvolume {name}")


def snapshot_create(source_fd: int, dest_dir_fd: int, name: str) -> None:
    """Snapshot the subvolume open at *source_fd* as *name* inside *dest_dir_fd* (BTRFS_IOC_SNAP_CREATE_V2)."""
    buf = bytearray(_VOL_ARGS_V2.pack(source_fd, 0, 0, 0, 0, 0, 0, _name(name, 4040)))
    _call(dest_dir_fd, IOC_SNAP_CREATE_V2, buf, f"failed to create btrfs snapshot {name}")


def subvol_destroy(dir_fd: int, name: str) -> None:
    """Delete the subvolume *name* inside *dir_fd* (BTRFS_IOC_SNAP_DESTROY_V2, or the v1 call on kernels before 5.7).

    It must not contain other subvolumes (ENOTEMPTY).
    """
    what = f"failed to destroy btrfs subvolume {name}"
    buf = bytearray(_VOL_ARGS_V2.pack(0, 0, 0, 0, 0, 0, 0, _name(name, 4040)))
    try:
        _call(dir_fd, IOC_SNAP_DESTROY_V2, buf, what)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTTY, errno.EOPNOTSUPP):
            raise
    _call(dir_fd, IOC_SNAP_DESTROY, bytearray(_VOL_ARGS.pack(0, _name(name, 4088))), what)


def subvol_id(fd: int) -> int:
    """The tree (subvolume) ID of the subvolume holding *fd* (BTRFS_IOC_INO_LOOKUP)."""
    buf = _call(fd, IOC_INO_LOOKUP, bytearray(_INO_LOOKUP.pack(0, FIRST_FREE_OBJECTID, b"")),
                "failed to look up the btrfs subvolume ID")
    treeid: int = _INO_LOOKUP.unpack(buf)[0]
    if treeid == 0:
        raise OSError(errno.EINVAL, "btrfs returned subvolume ID 0")
    return treeid


def subvol_read_only(fd: int) -> bool:
    """Whether the subvolume open at *fd* is read-only (BTRFS_IOC_SUBVOL_GETFLAGS)."""
    buf = _call(fd, IOC_SUBVOL_GETFLAGS, bytearray(_FLAGS.size), "failed to read btrfs subvolume flags")
    return bool(_FLAGS.unpack(buf)[0] & _SUBVOL_RDONLY)


def set_subvol_read_only(fd: int, read_only: bool) -> None:
    """Set or clear the read-only flag of the subvolume open at *fd* (BTRFS_IOC_SUBVOL_SETFLAGS)."""
    buf = _call(fd, IOC_SUBVOL_GETFLAGS, bytearray(_FLAGS.size), "failed to read btrfs subvolume flags")
    flags: int = _FLAGS.unpack(buf)[0]
    flags = flags | _SUBVOL_RDONLY if read_only else flags & ~_SUBVOL_RDONLY
    _call(fd, IOC_SUBVOL_SETFLAGS, bytearray(_FLAGS.pack(flags)), "failed to set btrfs subvolume flags")


def quota_enable(fd: int) -> None:
    """Enable qgroups on the filesystem holding *fd* (BTRFS_IOC_QUOTA_CTL); a no-op when already enabled."""
    _call(fd, IOC_QUOTA_CTL, bytearray(_QUOTA_CTL.pack(_QUOTA_CTL_ENABLE, 0)), "failed to enable btrfs quota")


def quota_enabled(fd: int) -> bool:
    """Whether qgroups are enabled: the quota tree holds a status item (BTRFS_IOC_TREE_SEARCH)."""
    key = _SEARCH_KEY.pack(_QUOTA_TREE_OBJECTID, 0, _U64_MAX, 0, _U64_MAX, 0, _U64_MAX,
                           _QGROUP_STATUS_KEY, _QGROUP_STATUS_KEY, 1, 0, 0, 0, 0, 0)
    buf = bytearray(_SEARCH_ARGS_SIZE)
    buf[: len(key)] = key
    try:
        fcntl.ioctl(fd, IOC_TREE_SEARCH, buf, True)
    except OSError as exc:
        if exc.errno == errno.ENOENT:  # no quota tree: quotas were never enabled
            return False
        raise
    nr_items = _SEARCH_KEY.unpack_from(buf)[9]
    if nr_items == 0:
        return False
    header = _SEARCH_HEADER.unpack_from(buf, _SEARCH_KEY.size)
    return bool(header[3] == _QGROUP_STATUS_KEY)


def qgroup_limit(fd: int, max_referenced: int) -> None:
    """Limit the referenced bytes of the subvolume open at *fd* (its level-0 qgroup; BTRFS_IOC_QGROUP_LIMIT)."""
    buf = bytearray(_QGROUP_LIMIT.pack(0, _QGROUP_LIMIT_MAX_RFER, max_referenced, 0, 0, 0))
    _call(fd, IOC_QGROUP_LIMIT, buf, "failed to limit btrfs qgroup")


def qgroup_remove(fd: int, qgroupid: int) -> None:
    """Delete qgroup *qgroupid* on the filesystem holding *fd* (BTRFS_IOC_QGROUP_CREATE with create=0)."""
    _call(fd, IOC_QGROUP_CREATE, bytearray(_QGROUP_CREATE.pack(0, qgroupid)), f"failed to delete btrfs qgroup 0/{qgroupid}")
