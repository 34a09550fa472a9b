"""The btrfs graph driver: every layer is a btrfs subvolume, and a child is a snapshot of its parent.

Layout as containers/storage: ``<graphroot>/btrfs/subvolumes/<id>`` (layer roots mode 0555) and
``<graphroot>/btrfs/quotas/<id>`` (the layer's qgroup limit in bytes, when it has one). The driver
home is bind-mounted onto itself with private propagation until :meth:`Driver.driver_cleanup`.
The kernel is driven through btrfs ioctls (:mod:`lamina_btrfs.ioctl`); no btrfs-progs binary or
library is used. Diffs are left to the core's naive implementation, as in containers/storage.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from typing import Iterator

from lamina.errors import DriverNotSupported, DuplicateID, InvalidOption, LayerUnknown
from lamina.fsutil import remove_tree
from lamina.hookspecs import hookimpl
from lamina.types import CreateOpts, DriverConfig, IDMappings, MountOpts

from . import host, ioctl

__all__ = ["Driver", "parse_size"]

_LOG = logging.getLogger("lamina.btrfs")
_LAYER_MODE = 0o555
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)*) ?([kmgtp])?i?b?$", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(value: str) -> int:
    """Bytes in a size such as ``512``, ``100m``, ``1.5GiB`` or ``2 GB`` (binary multiples, like Go's
    ``units.RAMInBytes``). Raises InvalidOption."""
    match = _SIZE_RE.match(value.strip())
    if not match:
        raise InvalidOption(f"invalid size: {value!r}")
    number, unit = match.groups()
    try:
        amount = float(number)
    except ValueError:
        raise InvalidOption(f"invalid size: {value!r}") from None
    return int(amount * 1024 ** _UNITS[(unit or "").lower()])


def _human_size(size: int) -> str:
    """Decimal size with 4 significant digits, like Go's ``units.HumanSize`` (``10.49MB``)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.4g}{unit}"
        value /= 1000
    return f"{size}B"


def _require_btrfs(path: str) -> None:
    """Raise DriverNotSupported unless *path* (or its nearest existing ancestor) is on btrfs."""
    probe = host.nearest_existing(path)
    try:
        magic = host.fs_magic(probe)
    except OSError as exc:
        raise DriverNotSupported("btrfs", f"cannot tell the filesystem type of {probe}: {exc.strerror}") from exc
    if magic != host.BTRFS_SUPER_MAGIC:
        raise DriverNotSupported("btrfs", f"{path} is not on a btrfs filesystem (found {host.fs_name(magic)})")


@contextlib.contextmanager
def _open_dir(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _versions() -> tuple[str, str]:
    """(Build Version, Library Version) for ``driver_status``.

    containers/storage reports the btrfs-progs headers it was built with and libbtrfs' version.
    lamina links neither; it reports its own version and the kernel it talks to instead.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        mine = version("lamina-btrfs")
    except PackageNotFoundError:
        mine = "(not installed as a distribution)"
    kernel = f"Linux {os.uname().release} (btrfs ioctls)"
    module_version = "/sys/module/btrfs/version"
    if os.path.exists(module_version):
        with open(module_version, encoding="ascii", errors="replace") as f:
            kernel += f", btrfs module {f.read().strip()}"
    return f"lamina-btrfs {mine} (no libbtrfs)", kernel


class Driver:
    """btrfs: a subvolume per layer. Options: ``btrfs.min_space=SIZE``, ``btrfs.size=SIZE``.

    ``btrfs.min_space`` (containers/storage's) turns qgroups on and is the smallest per-layer
    ``size`` accepted. ``btrfs.size`` (a lamina extension, like overlay's ``overlay.size``) is the
    qgroup limit given to writable layers created without a ``size`` storage option.
    """

    name = "btrfs"

    @classmethod
    def check_host(cls, graph_root: str) -> None:
        """Raise DriverNotSupported unless *graph_root* (or its nearest existing parent) is on btrfs."""
        _require_btrfs(graph_root)

    def __init__(self, config: DriverConfig) -> None:
        self.config = config
        self.home = config.home
        self.min_space = 0
        self.default_size = 0
        quota_wanted = False
        for option in config.options:
            key, sep, value = option.partition("=")
            if not sep:
                raise InvalidOption(f"unable to parse key/value option: {option}")
            key = key.strip().lower()
            if key == "btrfs.min_space":
                self.min_space = parse_size(value)
                quota_wanted = True
            elif key == "btrfs.size":
                self.default_size = parse_size(value)
                if self.default_size <= 0:
                    raise InvalidOption(f"btrfs: invalid storage size: {_human_size(self.default_size)}")
                quota_wanted = True
            elif key == "btrfs.mountopt":
                raise InvalidOption("btrfs driver does not support mount options")
            else:
                raise InvalidOption(f"unknown option {key}")
        if self.default_size and self.min_space and self.default_size < self.min_space:
            raise InvalidOption(f"btrfs: storage size cannot be less than {_human_size(self.min_space)}")
        _require_btrfs(self.home)
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        os.makedirs(self.subvolumes_dir, mode=0o700, exist_ok=True)
        self._quota_on = False
        try:
            mounted_here = host.make_private_bind(self.home)
        except PermissionError as exc:
            raise DriverNotSupported(
                "btrfs", f"cannot bind-mount {self.home} onto itself ({exc.strerror}); the btrfs driver needs root"
            ) from exc
        try:
            if quota_wanted:
                self._enable_quota()
        except BaseException:
            if mounted_here:
                host.unmount(self.home)
            raise

    # -- paths

    @property
    def subvolumes_dir(self) -> str:
        return os.path.join(self.home, "subvolumes")

    @property
    def quotas_dir(self) -> str:
        return os.path.join(self.home, "quotas")

    def _path(self, id: str) -> str:
        if not id or "/" in id or id in (".", ".."):
            raise LayerUnknown(id)
        return os.path.join(self.subvolumes_dir, id)

    def _quota_file(self, id: str) -> str:
        return os.path.join(self.quotas_dir, id)

    # -- quotas

    def _quota_enabled(self) -> bool:
        if not self._quota_on:
            with _open_dir(self.home) as fd:
                self._quota_on = ioctl.quota_enabled(fd)
        return self._quota_on

    def _enable_quota(self) -> None:
        if self._quota_enabled():
            return
        with _open_dir(self.home) as fd:
            ioctl.quota_enable(fd)
        self._quota_on = True

    def _layer_size(self, storage_opt: dict[str, str], read_write: bool) -> int:
        """The qgroup limit a new layer gets (0: none); validates the per-layer storage options."""
        size = self.default_size if read_write else 0
        for key, value in storage_opt.items():
            if key.lower() != "size":
                raise InvalidOption(f"unknown option {key.lower()}")
            size = parse_size(value)
            if size <= 0:
                raise InvalidOption(f"btrfs: invalid storage size: {_human_size(size)}")
        if size and self.min_space and size < self.min_space:
            raise InvalidOption(f"btrfs: storage size cannot be less than {_human_size(self.min_space)}")
        return size

    def _limit(self, path: str, size: int) -> None:
        self._enable_quota()
        with _open_dir(path) as fd:
            ioctl.qgroup_limit(fd, size)

    def _recorded_size(self, id: str) -> int:
        try:
            with open(self._quota_file(id), encoding="ascii") as f:
                text = f.read().strip()
        except FileNotFoundError:
            return 0
        if not text.isdigit():
            _LOG.warning("btrfs: ignoring unreadable quota file %s (%r)", self._quota_file(id), text)
            return 0
        return int(text)

    # -- removal

    def _destroy(self, path: str) -> None:
        """Delete the subvolume at *path* and every subvolume nested in it, deepest first."""
        nested: list[str] = []

        def walk_error(exc: OSError) -> None:
            if exc.errno != errno.ENOENT:
                raise exc

        for dirpath, dirnames, _ in os.walk(path, onerror=walk_error):
            for name in dirnames:
                full = os.path.join(dirpath, name)
                if ioctl.is_subvolume(full):
                    nested.append(full)
        # Destroying a subvolume writes to the directory holding it: a read-only holder must be made writable.
        holders = {path, *nested}
        for inner in nested:
            holder = max((h for h in holders if inner.startswith(h + "/")), key=len)
            with _open_dir(holder) as fd:
                if ioctl.subvol_read_only(fd):
                    ioctl.set_subvol_read_only(fd, False)
        for inner in reversed(nested):  # pre-order reversed: every subvolume goes before its holder
            with _open_dir(os.path.dirname(inner)) as fd:
                ioctl.subvol_destroy(fd, os.path.basename(inner))
        qgroup = 0
        if self._quota_enabled():
            with _open_dir(path) as fd:
                qgroup = ioctl.subvol_id(fd)
        with _open_dir(os.path.dirname(path)) as fd:
            ioctl.subvol_destroy(fd, os.path.basename(path))
        if qgroup:
            self._forget_qgroup(qgroup)

    def _forget_qgroup(self, qgroup: int) -> None:
        """Delete a removed layer's level-0 qgroup. Kernels since 6.7 refuse (EBUSY) while the subvolume
        is still being dropped and then delete it themselves, so that answer is expected."""
        try:
            with _open_dir(self.home) as fd:
                ioctl.qgroup_remove(fd, qgroup)
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.ENOENT):
                _LOG.debug("btrfs: qgroup 0/%d left to the kernel: %s", qgroup, exc)
            else:
                _LOG.warning("btrfs: could not delete qgroup 0/%d of a removed layer: %s", qgroup, exc)

    # -- hooks

    @hookimpl
    def driver_create(self, id: str, parent: str | None, opts: CreateOpts, read_write: bool) -> bool:
        size = self._layer_size(opts.storage_opt, read_write)
        target = self._path(id)
        if os.path.lexists(target):
            raise DuplicateID(id)
        source = None
        if parent:
            source = self._path(parent)
            if not os.path.isdir(source):
                raise LayerUnknown(parent)
        os.makedirs(self.subvolumes_dir, mode=0o700, exist_ok=True)
        with _open_dir(self.subvolumes_dir) as dest:
            if source is None:
                ioctl.subvol_create(dest, id)
            else:
                with _open_dir(source) as src:
                    ioctl.snapshot_create(src, dest, id)
        try:
            if source is None:
                uid, gid = opts.id_mappings.root_pair()
                st = os.lstat(target)
                if (st.st_uid, st.st_gid) != (uid, gid):
                    os.chown(target, uid, gid)
                os.chmod(target, _LAYER_MODE)
            if size:
                self._limit(target, size)
                os.makedirs(self.quotas_dir, mode=0o700, exist_ok=True)
                with open(self._quota_file(id), "w", encoding="ascii") as f:
                    f.write(str(size))
        except BaseException:
            try:
                self.driver_remove(id)
            except OSError as cleanup:
                _LOG.warning("btrfs: could not remove half-created layer %s: %s", id, cleanup)
            raise
        return True

    @hookimpl
    def driver_create_from_template(self, id: str, template: str, template_mappings: IDMappings,
                                    parent: str | None, parent_mappings: IDMappings, opts: CreateOpts,
                                    read_write: bool) -> bool:
        # A snapshot of the template is its copy (as Go's btrfs driver makes it).
        return self.driver_create(id, template, opts, read_write)

    @hookimpl
    def driver_remove(self, id: str) -> bool:
        path = self._path(id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._quota_file(id))
        if not os.path.lexists(path):
            return True
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
        elif not ioctl.is_subvolume(path):
            remove_tree(path)  # not made by a btrfs driver (a leftover copy): plain removal
        else:
            try:
                self._destroy(path)
            except PermissionError:
                # Without CAP_SYS_ADMIN (or user_subvol_rm_allowed) only rmdir(2) of emptied subvolumes works.
                _LOG.debug("btrfs: no permission to destroy subvolume %s; removing it file by file", path)
                remove_tree(path)
        return True

    @hookimpl
    def driver_get(self, id: str, opts: MountOpts) -> str:
        if any(option != "ro" for option in opts.options):
            raise InvalidOption("btrfs driver does not support mount options")
        path = self._path(id)
        if not os.path.isdir(path):
            raise LayerUnknown(id)
        size = self._recorded_size(id)
        if size and size >= self.min_space:  # re-apply, as Go does: the limit follows the layer file
            self._limit(path, size)
        return path

    @hookimpl
    def driver_put(self, id: str) -> bool:
        return True  # driver_get mounts nothing

    @hookimpl
    def driver_exists(self, id: str) -> bool:
        return os.path.isdir(self._path(id))

    @hookimpl
    def driver_status(self) -> list[tuple[str, str]]:
        build, library = _versions()
        return [("Build Version", build), ("Library Version", library)]

    @hookimpl
    def driver_metadata(self, id: str) -> dict[str, str]:
        return {}

    @hookimpl
    def driver_cleanup(self) -> bool:
        host.unmount(self.home)
        return True
