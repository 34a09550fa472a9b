"""Host probes of the overlay driver, cached in ``<runroot>/overlay/`` exactly as containers/storage
caches them (empty ``<feature>-true`` files, ``<feature>-false`` files holding the reason), so
lamina and the Go tools sharing a run root agree and probe only once per boot.

Cached features: ``overlay`` (kernel overlay mounts with several lowers work here),
``native-diff(<mountopt>)``, ``metacopy(<mountopt>)``, ``volatile``. ``idmapped-lower-dir`` is
never probed nor written by lamina: it does not use idmapped lower layers (see the package doc).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile

from . import _sys

__all__ = [
    "FS_MAGIC_NAMES", "FS_MAGIC_OVERLAY", "FS_MAGIC_FUSE", "INCOMPATIBLE_FS", "backing_fs_name",
    "cached_feature_check", "cached_feature_record", "probe_overlay", "probe_native_diff",
    "probe_metacopy", "probe_volatile",
]

_LOG = logging.getLogger(__name__)

FS_MAGIC_OVERLAY = 0x794C7630
FS_MAGIC_FUSE = 0x65735546
FS_MAGIC_XFS = 0x58465342

#: containers/storage's graphdriver.FsNames (the names its status prints).
FS_MAGIC_NAMES: dict[int, str] = {
    0x61756673: "aufs",
    0x9123683E: "btrfs",
    0x28CD3D45: "cramfs",
    0xF15F: "ecryptfs",
    0xEF53: "extfs",
    0xF2F52010: "f2fs",
    0x47504653: "gpfs",
    0x000072B6: "jffs2",
    0x3153464A: "jfs",
    0x6969: "nfs",
    0x858458F6: "ramfs",
    0x52654973: "reiserfs",
    0x517B: "smb",
    0x73717368: "squashfs",
    0x01021994: "tmpfs",
    0xA501FCF5: "vxfs",
    FS_MAGIC_XFS: "xfs",
    0x2FC12FC1: "zfs",
    FS_MAGIC_OVERLAY: "overlayfs",
    FS_MAGIC_FUSE: "fuse",
    0x00C36400: "ceph",
    0xFF534D42: "cifs",
    0xE0F5E1E2: "erofs",
    0x6E667364: "nfsd",
}

#: Filesystems the kernel cannot use as overlay upper layers (1.43 refuses them without a mount_program).
INCOMPATIBLE_FS = frozenset({0x61756673, 0x2FC12FC1, FS_MAGIC_OVERLAY, 0xF15F})

_OPAQUE = "trusted.overlay.opaque"
_REDIRECT = "trusted.overlay.redirect"
_METACOPY = "trusted.overlay.metacopy"


def backing_fs_name(path: str) -> tuple[int, str]:
    """(magic, name) of the filesystem holding *path* (or its nearest existing ancestor)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    magic = _sys.statfs_magic(probe)
    return magic, FS_MAGIC_NAMES.get(magic, "<unknown>")


def cached_feature_check(runhome: str, feature: str) -> tuple[bool, str] | None:
    """(supported, text) from the cache files, or None when the feature was never probed."""
    for value in (True, False):
        try:
            with open(os.path.join(runhome, f"{feature}-{str(value).lower()}"), encoding="utf-8",
                      errors="replace") as f:
                return value, f.read()
        except FileNotFoundError:
            continue
    return None


def cached_feature_record(runhome: str, feature: str, supported: bool, text: str = "") -> None:
    """Write ``<feature>-true|false`` (0644, *text* as content) in *runhome*."""
    path = os.path.join(runhome, f"{feature}-{str(supported).lower()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        if text:
            os.write(fd, text.encode())
    finally:
        os.close(fd)


class _Scratch:
    """A temporary probe directory inside the driver home, unmounted and removed on exit."""

    def __init__(self, home: str, prefix: str) -> None:
        self.path = tempfile.mkdtemp(prefix=prefix, dir=home)
        self.mounted: list[str] = []

    def mkdir(self, *names: str, mode: int = 0o755) -> None:
        for name in names:
            os.makedirs(os.path.join(self.path, name), mode=mode, exist_ok=True)

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def mount(self, data: str, flags: int = 0) -> None:
        target = self.join("merged")
        _sys.mount("overlay", target, "overlay", flags, data)
        self.mounted.append(target)

    def __enter__(self) -> "_Scratch":
        return self

    def __exit__(self, *exc: object) -> None:
        for target in reversed(self.mounted):
            try:
                _sys.umount(target, _sys.MNT_DETACH)
            except OSError as e:
                _LOG.warning("overlay probe: cannot unmount %s: %s", target, e)
        shutil.rmtree(self.path, ignore_errors=False)


def probe_overlay(home: str) -> None:
    """Check that overlay with two lowers mounts under *home*; raise OSError with the reason.

    Like containers/storage's supportsOverlay: d_type, kernel-style whiteout creation, then a
    test mount (with one lower as a diagnostic fallback)."""
    if not _sys.supports_d_type(home):
        raise OSError(errno.EINVAL, "'overlay' is not supported over a filesystem without d_type support "
                                    "(reformat the backing filesystem with ftype=1)")
    with _Scratch(home, "compat") as s:
        s.mkdir("merged", "lower1", "lower2", "upper", "work", mode=0o700)
        try:
            os.mknod(s.join("upper", "whiteout"), stat.S_IFCHR | 0o600, os.makedev(0, 0))
        except OSError as e:
            raise OSError(e.errno, f"unable to create kernel-style whiteout: {e.strerror}") from e
        data = f"lowerdir={s.join('lower1')}:{s.join('lower2')},upperdir={s.join('upper')},workdir={s.join('work')}"
        try:
            s.mount(data)
            return
        except OSError as first:
            single = f"lowerdir={s.join('lower1')},upperdir={s.join('upper')},workdir={s.join('work')}"
            try:
                s.mount(single)
            except OSError:
                raise OSError(first.errno, f"'overlay' is not supported over this filesystem at {home!r}: "
                                           f"{first.strerror}") from first
            raise OSError(errno.ENOTSUP, "kernel too old to provide multiple lowers feature for overlay")


def probe_native_diff(home: str, mount_options: str) -> None:
    """Raise OSError when the upper dir cannot be diffed natively (containers/storage's
    doesSupportNativeDiff: opaque flag copied up, or redirect_dir enabled)."""
    flags, extra = _sys.parse_mount_options(mount_options)
    with _Scratch(home, "opaque-bug-check") as s:
        s.mkdir("l1/d", "l1/d1", "l2/d", "l3", "work", "merged")
        os.setxattr(s.join("l2", "d"), _OPAQUE, b"y", follow_symlinks=False)
        data = f"lowerdir={s.join('l2')}:{s.join('l1')},upperdir={s.join('l3')},workdir={s.join('work')}"
        if extra:
            data += "," + extra
        s.mount(data, flags)
        with open(s.join("merged", "d", "f"), "wb"):
            pass
        try:
            value = os.getxattr(s.join("l3", "d"), _OPAQUE, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
            value = b""
        if value == b"y":
            raise OSError(errno.ENOTSUP, "opaque flag erroneously copied up, consider update to kernel 4.8 or later to fix")
        try:
            os.rename(s.join("merged", "d1"), s.join("merged", "d2"))
        except OSError as e:
            if e.errno == errno.EXDEV:  # no redirect_dir: renames of lower dirs are refused
                return
            raise
        try:
            redirect = os.getxattr(s.join("l3", "d2"), _REDIRECT, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
            redirect = b""
        if redirect == b"d1":
            raise OSError(errno.ENOTSUP, "kernel has CONFIG_OVERLAY_FS_REDIRECT_DIR enabled")


def probe_metacopy(home: str, mount_options: str) -> bool:
    """Whether a chmod through the mount makes a metadata-only copy-up (containers/storage's doesMetacopy)."""
    flags, extra = _sys.parse_mount_options(mount_options)
    with _Scratch(home, "metacopy-check") as s:
        s.mkdir("l1", "l2", "work", "merged")
        with open(s.join("l1", "f"), "wb") as f:
            f.write(b"\xff")
        os.chmod(s.join("l1", "f"), 0o700)
        data = f"lowerdir={s.join('l1')},upperdir={s.join('l2')},workdir={s.join('work')}"
        if extra:
            data += "," + extra
        try:
            s.mount(data, flags)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return False
            raise
        os.chmod(s.join("merged", "f"), 0o600)
        try:
            os.getxattr(s.join("l2", "f"), _METACOPY, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                return False
            raise
        return True


def probe_volatile(home: str) -> bool:
    """Whether the kernel accepts the ``volatile`` overlay option (Linux 5.10+)."""
    with _Scratch(home, "volatile-check") as s:
        s.mkdir("l1", "l2", "work", "merged")
        data = f"lowerdir={s.join('l1')},upperdir={s.join('l2')},workdir={s.join('work')},volatile"
        try:
            s.mount(data)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return False
            raise
        return True
