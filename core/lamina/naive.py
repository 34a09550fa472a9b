"""The core's fallbacks for optional driver hooks (``trylast``): the naive diff family, ID-map
re-owning by walking the tree, and neutral defaults. They answer only when the driver returned None.
"""

from __future__ import annotations

import io
import os
import stat
from typing import TYPE_CHECKING, BinaryIO

from .hookspecs import hookimpl
from .types import ApplyDiffOpts, Change, CreateOpts, IDMappings, MountOpts

if TYPE_CHECKING:
    from .graphdriver import DriverProxy

_READ_ONLY = MountOpts(options=("ro",))


class _ReleasingStream(io.RawIOBase):
    """A read-only stream that calls *release* exactly once when closed."""

    def __init__(self, inner: BinaryIO, release: "list[tuple[DriverProxy, str]]") -> None:
        super().__init__()
        self._inner = inner
        self._release = release

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._inner.close()
        finally:
            super().close()
            for proxy, layer in self._release:
                proxy.put(layer)


class CoreFallbacks:
    """Answers the optional driver hooks for drivers that leave them to the core."""

    def __init__(self, driver: "DriverProxy") -> None:
        self.driver = driver

    # -- neutral defaults

    @hookimpl(trylast=True)
    def driver_additional_image_stores(self) -> list[str]:
        return []

    @hookimpl(trylast=True)
    def driver_supports_shifting(self) -> bool:
        return False

    @hookimpl(trylast=True)
    def driver_diff_getter(self, id: str) -> None:
        return None

    @hookimpl(trylast=True)
    def driver_read_write_disk_usage(self, id: str) -> tuple[int, int]:
        root = self.driver.get(id, _READ_ONLY)
        try:
            size, inodes, seen = 0, 0, set()
            for dirpath, dirnames, filenames in os.walk(root):
                for name in dirnames + filenames:
                    st = os.lstat(os.path.join(dirpath, name))
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    inodes += 1
                    size += st.st_size
            return size, inodes + 1
        finally:
            self.driver.put(id)

    # -- naive diff family (Go's NaiveDiffDriver)

    @hookimpl(trylast=True)
    def driver_diff(self, id: str, id_mappings: IDMappings, parent: str | None,
                    parent_mappings: IDMappings, mount_label: str) -> BinaryIO:
        from . import archive

        layer_fs = self.driver.get(id, MountOpts(mount_label=mount_label))
        try:
            if parent is None:
                return _ReleasingStream(archive.tar_tree(layer_fs, id_mappings), [(self.driver, id)])
            parent_fs = self.driver.get(parent, _READ_ONLY)
            try:
                changes = archive.changes_dirs(layer_fs, parent_fs)
            finally:
                self.driver.put(parent)
            return _ReleasingStream(archive.export_changes(layer_fs, changes, id_mappings), [(self.driver, id)])
        except BaseException:
            self.driver.put(id)
            raise

    @hookimpl(trylast=True)
    def driver_changes(self, id: str, id_mappings: IDMappings, parent: str | None,
                       parent_mappings: IDMappings, mount_label: str) -> list[Change]:
        from . import archive

        layer_fs = self.driver.get(id, MountOpts(mount_label=mount_label))
        try:
            if parent is None:
                return archive.changes_dirs(layer_fs, None)
            parent_fs = self.driver.get(parent, _READ_ONLY)
            try:
                return archive.changes_dirs(layer_fs, parent_fs)
            finally:
                self.driver.put(parent)
        finally:
            self.driver.put(id)

    @hookimpl(trylast=True)
    def driver_diff_size(self, id: str, id_mappings: IDMappings, parent: str | None,
                         parent_mappings: IDMappings, mount_label: str) -> int:
        from . import archive

        changes = self.driver_changes(id, id_mappings, parent, parent_mappings, mount_label)
        layer_fs = self.driver.get(id, MountOpts(mount_label=mount_label))
        try:
            return archive.changes_size(layer_fs, changes)
        finally:
            self.driver.put(id)

    @hookimpl(trylast=True)
    def driver_apply_diff(self, id: str, parent: str | None, opts: ApplyDiffOpts) -> int:
        from . import archive

        layer_fs = self.driver.get(id, MountOpts(mount_label=opts.mount_label))
        try:
            return archive.apply_tar(layer_fs, opts.diff, opts, whiteouts="delete")
        finally:
            self.driver.put(id)

    @hookimpl(trylast=True)
    def driver_create_from_template(self, id: str, template: str, template_mappings: IDMappings,
                                    parent: str | None, parent_mappings: IDMappings, opts: CreateOpts,
                                    read_write: bool) -> bool:
        """Go's NaiveCreateFromTemplate: *id* on *parent*, then the template's diff applied to it."""
        self.driver.create(id, parent, opts, read_write=read_write)
        try:
            diff = self.driver.diff(template, parent, template_mappings, parent_mappings, opts.mount_label)
            try:
                self.driver.apply_diff(id, parent, ApplyDiffOpts(diff=diff, mappings=template_mappings,
                                                                 mount_label=opts.mount_label))
            finally:
                diff.close()
        except BaseException:
            self.driver.remove(id)
            raise
        return True

    # -- ID maps (Go's NaiveLayerIDMapUpdater)

    @hookimpl(trylast=True)
    def driver_update_layer_id_map(self, id: str, to_container: IDMappings, to_host: IDMappings,
                                   mount_label: str) -> bool:
        root = self.driver.get(id, MountOpts(mount_label=mount_label))
        try:
            chown_tree_by_maps(root, to_container, to_host)
        finally:
            self.driver.put(id)
        return True


def chown_tree_by_maps(root: str, to_container: IDMappings, to_host: IDMappings) -> None:
    """Re-own every entry under *root* (and root itself): host IDs of *to_container* become host IDs of *to_host*."""

    seen: set[tuple[int, int]] = set()

    def fix(path: str) -> None:
        st = os.lstat(path)
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in seen:  # a hardlink already re-owned
                return
            seen.add((st.st_dev, st.st_ino))
        uid, gid = to_container.to_container(st.st_uid, st.st_gid)
        new_uid, new_gid = to_host.to_host(uid, gid)
        if (new_uid, new_gid) == (st.st_uid, st.st_gid):
            return
        if stat.S_ISLNK(st.st_mode):
            os.lchown(path, new_uid, new_gid)
            return
        # chown(2) drops set-id bits and file capabilities: put them back afterwards.
        try:
            capability: bytes | None = os.getxattr(path, "security.capability", follow_symlinks=False)
        except OSError:
            capability = None
        os.lchown(path, new_uid, new_gid)
        os.chmod(path, stat.S_IMODE(st.st_mode))
        if capability is not None:
            os.setxattr(path, "security.capability", capability, follow_symlinks=False)

    fix(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            fix(os.path.join(dirpath, name))
