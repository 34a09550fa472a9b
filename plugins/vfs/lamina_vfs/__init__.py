"""The vfs graph driver: every layer is a full directory copy of its parent.

Layout as containers/storage: ``<graphroot>/vfs/dir/<id>``, layer root mode 0555. Works on any
filesystem; diffs are left to the core's naive implementation.
"""

from __future__ import annotations

import os

from lamina.errors import DuplicateID, InvalidOption, LayerUnknown
from lamina.fsutil import remove_tree
from lamina.hookspecs import hookimpl
from lamina.types import CreateOpts, DriverConfig, IDMappings, MountOpts

__all__ = ["Driver"]


def _parse_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise InvalidOption(f"vfs: option {key}: {value!r} is not a boolean")


class Driver:
    """vfs: plain directories, copied at creation. Options: ``vfs.imagestore=DIR[,DIR]``, ``vfs.ignore_chown_errors=BOOL``."""

    name = "vfs"

    def __init__(self, config: DriverConfig) -> None:
        self.config = config
        self.home = config.home
        self.image_stores: list[str] = []
        self.ignore_chown_errors = False
        for option in config.options:
            key, sep, value = option.partition("=")
            if not sep:
                raise InvalidOption(f"unable to parse key/value option: {option}")
            key = key.strip().lower()
            if key in (".imagestore", "vfs.imagestore"):
                self.image_stores.extend(p for p in value.split(",") if p)
            elif key in (".ignore_chown_errors", "vfs.ignore_chown_errors"):
                self.ignore_chown_errors = _parse_bool(key, value)
            elif key == "vfs.mountopt":
                raise InvalidOption("vfs driver does not support mount options")
            else:
                raise InvalidOption(f"vfs driver does not support {key} options")
        os.makedirs(os.path.join(self.home, "dir"), mode=0o700, exist_ok=True)

    # -- paths

    def _own_dir(self, id: str) -> str:
        if not id or "/" in id or id in (".", ".."):
            raise LayerUnknown(id)
        return os.path.join(self.home, "dir", id)

    def _image_store_dir(self, id: str) -> str | None:
        """Where 1.62's separate image store keeps read-only layer *id*, if one is configured."""
        if not self.config.image_store:
            return None
        self._own_dir(id)  # validates the ID
        return os.path.join(self.config.image_store, "vfs", "dir", id)

    def _dir(self, id: str) -> str:
        """The layer's directory: this home, the separate image store, or an additional image store."""
        own = self._own_dir(id)
        if os.path.isdir(own):
            return own
        split = self._image_store_dir(id)
        if split is not None and os.path.isdir(split):
            return split
        for store in self.image_stores:
            candidate = os.path.join(store, "vfs", "dir", id)
            if os.path.isdir(candidate):
                return candidate
        return own

    # -- hooks

    @hookimpl
    def driver_create(self, id: str, parent: str | None, opts: CreateOpts, read_write: bool) -> bool:
        if opts.storage_opt:
            raise InvalidOption("--storage-opt is not supported for vfs")
        target = self._own_dir(id)
        if not read_write and self.config.image_store:
            target = self._image_store_dir(id) or target
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        if os.path.lexists(target) or os.path.lexists(self._own_dir(id)):
            raise DuplicateID(id)
        parent_dir = None
        if parent:
            parent_dir = self._dir(parent)
            if not os.path.isdir(parent_dir):
                raise LayerUnknown(parent)
        staging = target + ".creating"
        if os.path.lexists(staging):
            remove_tree(staging)
        try:
            if parent_dir is None:
                os.mkdir(staging, 0o700)
                uid, gid = opts.id_mappings.root_pair()
                os.chown(staging, uid, gid)
                os.chmod(staging, 0o555)
            else:
                from lamina.archive import copy_tree

                copy_tree(parent_dir, staging)
            os.rename(staging, target)
        except BaseException:
            remove_tree(staging)
            raise
        return True

    @hookimpl
    def driver_create_from_template(self, id: str, template: str, template_mappings: IDMappings,
                                    parent: str | None, parent_mappings: IDMappings, opts: CreateOpts,
                                    read_write: bool) -> bool:
        # A vfs layer is a full tree: a copy of the template's is the template (as Go's vfs does).
        return self.driver_create(id, template, opts, read_write)

    @hookimpl
    def driver_remove(self, id: str) -> bool:
        for path in (self._own_dir(id), self._image_store_dir(id)):
            if path is not None:
                remove_tree(path)
                remove_tree(path + ".creating")
        return True

    @hookimpl
    def driver_get(self, id: str, opts: MountOpts) -> str:
        path = self._dir(id)
        if not os.path.isdir(path):
            raise LayerUnknown(id)
        return path

    @hookimpl
    def driver_put(self, id: str) -> bool:
        return True

    @hookimpl
    def driver_exists(self, id: str) -> bool:
        return os.path.isdir(self._dir(id))

    @hookimpl
    def driver_status(self) -> list[tuple[str, str]]:
        return []

    @hookimpl
    def driver_metadata(self, id: str) -> dict[str, str]:
        return {}

    @hookimpl
    def driver_cleanup(self) -> bool:
        return True

    @hookimpl
    def driver_additional_image_stores(self) -> list[str]:
        return list(self.image_stores)
