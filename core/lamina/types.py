"""Plain data exchanged between the store and graph drivers (options, ID maps, changes)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import BinaryIO


@dataclass(frozen=True)
class IDMap:
    """One range of an ID mapping: *size* IDs starting at *container_id* map to *host_id*."""

    container_id: int
    host_id: int
    size: int

    def to_json(self) -> dict[str, int]:
        return {"container_id": self.container_id, "host_id": self.host_id, "size": self.size}

    @classmethod
    def from_json(cls, data: dict[str, int]) -> "IDMap":
        return cls(int(data["container_id"]), int(data["host_id"]), int(data["size"]))


def _map(maps: tuple[IDMap, ...], value: int, to_host: bool) -> int:
    if not maps:
        return value
    for m in maps:
        src, dst = (m.container_id, m.host_id) if to_host else (m.host_id, m.container_id)
        if src <= value < src + m.size:
            return dst + (value - src)
    side = "container" if to_host else "host"
    raise ValueError(f"{side} ID {value} is not covered by the ID mapping")


@dataclass(frozen=True)
class IDMappings:
    """UID and GID maps of a layer; empty maps mean the identity."""

    uid_map: tuple[IDMap, ...] = ()
    gid_map: tuple[IDMap, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.uid_map and not self.gid_map

    def to_host(self, uid: int, gid: int) -> tuple[int, int]:
        """Map a container (uid, gid) pair to the host; ValueError if unmapped."""
        return _map(self.uid_map, uid, True), _map(self.gid_map, gid, True)

    def to_container(self, uid: int, gid: int) -> tuple[int, int]:
        """Map a host (uid, gid) pair into the container; ValueError if unmapped."""
        return _map(self.uid_map, uid, False), _map(self.gid_map, gid, False)

    def root_pair(self) -> tuple[int, int]:
        """The host IDs that container root (0, 0) maps to."""
        try:
            return self.to_host(0, 0)
        except ValueError:
            return 0, 0


@dataclass(frozen=True)
class CreateOpts:
    """Options for creating a layer in a driver (Go's CreateOpts)."""

    mount_label: str = ""
    storage_opt: dict[str, str] = field(default_factory=dict)
    id_mappings: IDMappings = IDMappings()
    ignore_chown_errors: bool = False


@dataclass(frozen=True)
class MountOpts:
    """Options for making a layer's tree available (Go's MountOpts)."""

    mount_label: str = ""
    uid_maps: tuple[IDMap, ...] = ()
    gid_maps: tuple[IDMap, ...] = ()
    #: containers/storage 1.62's separate image store root: read-only (image) layers are created
    #: under ``<image_store>/<name>/`` instead of *home*. Empty when not configured.
    image_store: str = ""
    options: tuple[str, ...] = ()
    volatile: bool = False
    disable_shifting: bool = False

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


@dataclass
class ApplyDiffOpts:
    """Options for applying an uncompressed tar stream to a layer (Go's ApplyDiffOpts)."""

    diff: BinaryIO
    mappings: IDMappings = IDMappings()
    mount_label: str = ""
    ignore_chown_errors: bool = False
    force_mask: int | None = None
    allow_devices: bool = True


class ChangeKind(enum.IntEnum):
    """Kind of a filesystem change; values match containers/storage's archive.ChangeType."""

    MODIFY = 0
    ADD = 1
    DELETE = 2

    @property
    def label(self) -> str:
        return ("Modify", "Add", "Delete")[self.value]


@dataclass(frozen=True)
class Change:
    """One changed path (absolute, rooted at the layer) and what happened to it."""

    path: str
    kind: ChangeKind

    def to_json(self) -> dict[str, object]:
        return {"Path": self.path, "Kind": int(self.kind)}


@dataclass(frozen=True)
class DriverConfig:
    """What a driver is constructed with.

    *home* is ``<graphroot>/<driver name>``; *options* are the storage options as given
    (``name.key=value``); a driver rejects the ones it does not know, as containers/storage does.
    """

    name: str
    home: str
    run_root: str
    options: tuple[str, ...] = ()
    uid_maps: tuple[IDMap, ...] = ()
    gid_maps: tuple[IDMap, ...] = ()
    #: containers/storage 1.62's separate image store root: read-only (image) layers are created
    #: under ``<image_store>/<name>/`` instead of *home*. Empty when not configured.
    image_store: str = ""
