"""XFS project quotas for overlay layer directories (containers/storage's drivers/quota).

Each layer directory gets its own project ID (with PROJINHERIT) and block/inode limits set
through quotactl(2) on a block-device node ``<home>/backingFsBlockDev``. Only XFS mounted with
``prjquota``/``pquota`` supports this; :class:`QuotaControl` raises OSError elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import threading

__all__ = ["QuotaControl"]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.quotactl.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
_libc.quotactl.restype = ctypes.c_int

_PRJQUOTA = 2
_Q_XGETQSTAT = 0x5805
_Q_XSETQLIM = 0x5804
_Q_XGETQUOTA = 0x5803
_FS_DQUOT_VERSION = 1
_FS_PROJ_QUOTA = 2
_FS_DQ_ISOFT = 1 << 0
_FS_DQ_IHARD = 1 << 1
_FS_DQ_BSOFT = 1 << 2
_FS_DQ_BHARD = 1 << 3
_FS_QUOTA_PDQ_ACCT = 1 << 4
_FS_QUOTA_PDQ_ENFD = 1 << 5
_FS_IOC_FSGETXATTR = 0x801C581F
_FS_IOC_FSSETXATTR = 0x401C5820
_FS_XFLAG_PROJINHERIT = 0x200


def _qcmd(cmd: int, kind: int) -> int:
    return (cmd << 8) | (kind & 0xFF)


class _FsDiskQuota(ctypes.Structure):
    _fields_ = [
        ("d_version", ctypes.c_int8), ("d_flags", ctypes.c_int8), ("d_fieldmask", ctypes.c_uint16),
        ("d_id", ctypes.c_uint32), ("d_blk_hardlimit", ctypes.c_uint64), ("d_blk_softlimit", ctypes.c_uint64),
        ("d_ino_hardlimit", ctypes.c_uint64), ("d_ino_softlimit", ctypes.c_uint64),
        ("d_bcount", ctypes.c_uint64), ("d_icount", ctypes.c_uint64), ("d_itimer", ctypes.c_int32),
        ("d_btimer", ctypes.c_int32), ("d_iwarns", ctypes.c_uint16), ("d_bwarns", ctypes.c_uint16),
        ("d_itimer_hi", ctypes.c_int8), ("d_btimer_hi", ctypes.c_int8), ("d_rtbtimer_hi", ctypes.c_int8),
        ("d_padding2", ctypes.c_int8), ("d_rtb_hardlimit", ctypes.c_uint64), ("d_rtb_softlimit", ctypes.c_uint64),
        ("d_rtbcount", ctypes.c_uint64), ("d_rtbtimer", ctypes.c_int32), ("d_rtbwarns", ctypes.c_uint16),
        ("d_padding3", ctypes.c_int16), ("d_padding4", ctypes.c_char * 8),
    ]


class _FsXattr(ctypes.Structure):
    _fields_ = [("fsx_xflags", ctypes.c_uint32), ("fsx_extsize", ctypes.c_uint32), ("fsx_nextents", ctypes.c_uint32),
                ("fsx_projid", ctypes.c_uint32), ("fsx_cowextsize", ctypes.c_uint32), ("fsx_pad", ctypes.c_ubyte * 8)]


def _get_projid(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        buf = bytearray(ctypes.sizeof(_FsXattr))
        fcntl.ioctl(fd, _FS_IOC_FSGETXATTR, buf, True)
        return int(_FsXattr.from_buffer(buf).fsx_projid)
    finally:
        os.close(fd)


def _set_projid(path: str, projid: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        buf = bytearray(ctypes.sizeof(_FsXattr))
        fcntl.ioctl(fd, _FS_IOC_FSGETXATTR, buf, True)
        attr = _FsXattr.from_buffer(buf)
        attr.fsx_projid = projid
        attr.fsx_xflags |= _FS_XFLAG_PROJINHERIT
        fcntl.ioctl(fd, _FS_IOC_FSSETXATTR, bytes(buf))
    finally:
        os.close(fd)


class QuotaControl:
    """Project-quota control for directories directly below *base* (the driver home)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.device = os.path.join(base, "backingFsBlockDev")
        st = os.stat(base)
        if os.path.lexists(self.device):  # a stale node from an earlier run
            os.unlink(self.device)
        os.mknod(self.device, stat.S_IFBLK | 0o600, st.st_dev)
        try:
            qstat = ctypes.create_string_buffer(128)
            if _libc.quotactl(_qcmd(_Q_XGETQSTAT, _PRJQUOTA), os.fsencode(self.device), 0, qstat) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"failed to get quota status: {os.strerror(err)}", base)
            flags = int.from_bytes(qstat.raw[2:4], "little")
            if not (flags & _FS_QUOTA_PDQ_ACCT and flags & _FS_QUOTA_PDQ_ENFD):
                raise OSError(errno.ENOTSUP, "project quotas are not enabled (mount the filesystem with prjquota)",
                              base)
        except OSError:
            os.unlink(self.device)
            raise
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        base_id = _get_projid(base)
        if base_id == 0:  # like Go: the home reserves the first ID, layers get the next ones
            base_id = 1
            _set_projid(base, base_id)
        self._next = base_id + 1
        for name in os.listdir(base):
            path = os.path.join(base, name)
            if os.path.isdir(path) and not os.path.islink(path):
                pid = _get_projid(path)
                if pid:
                    self._ids[path] = pid
                    self._next = max(self._next, pid + 1)

    def set_quota(self, path: str, size: int, inodes: int) -> None:
        """Give *path* its own project ID and limit it to *size* bytes / *inodes* inodes (0: no limit)."""
        with self._lock:
            pid = self._ids.get(path)
            if pid is None:
                pid = self._next
                self._next += 1
                _set_projid(path, pid)
                self._ids[path] = pid
        q = _FsDiskQuota()
        q.d_version = _FS_DQUOT_VERSION
        q.d_id = pid
        q.d_flags = _FS_PROJ_QUOTA
        q.d_fieldmask = _FS_DQ_BHARD | _FS_DQ_BSOFT | _FS_DQ_IHARD | _FS_DQ_ISOFT
        q.d_blk_hardlimit = q.d_blk_softlimit = size // 512
        q.d_ino_hardlimit = q.d_ino_softlimit = inodes
        if _libc.quotactl(_qcmd(_Q_XSETQLIM, _PRJQUOTA), os.fsencode(self.device), pid, ctypes.byref(q)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"failed to set quota limit for projid {pid} on {self.device}: {os.strerror(err)}", path)

    def clear_quota(self, path: str) -> None:
        """Drop the limits of *path* (its project ID is forgotten)."""
        with self._lock:
            pid = self._ids.pop(path, None)
        if pid is None:
            return
        q = _FsDiskQuota()
        q.d_version = _FS_DQUOT_VERSION
        q.d_id = pid
        q.d_flags = _FS_PROJ_QUOTA
        q.d_fieldmask = _FS_DQ_BHARD | _FS_DQ_BSOFT | _FS_DQ_IHARD | _FS_DQ_ISOFT
        if _libc.quotactl(_qcmd(_Q_XSETQLIM, _PRJQUOTA), os.fsencode(self.device), pid, ctypes.byref(q)) != 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOENT, errno.ESRCH):
                raise OSError(err, f"failed to clear quota of projid {pid}: {os.strerror(err)}", path)
