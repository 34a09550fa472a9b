"""Helpers shared by the command modules (imported only once a command runs)."""

from __future__ import annotations

import os
import sys
from typing import Any, BinaryIO

from lamina.errors import NotKnown

from .output import err, go_error

__all__ = ["id_mappings_from_flags", "open_input", "read_input", "dir_size", "fail"]


def fail(exc: BaseException, op: str = "") -> int:
    """Print *exc* like Go's ``fmt.Fprintf(os.Stderr, "%+v\\n", err)`` and return 1."""
    err(go_error(exc, op) + "\n")
    return 1


def known(lookup: Any, keys: list[str]) -> list[Any]:
    """The records *keys* name, through *lookup* (e.g. ``store.layer``), in order; like Go, an
    unknown key is skipped (commands then exit 1 because fewer records than keys were found)."""
    found = []
    for key in keys:
        try:
            found.append(lookup(key))
        except NotKnown:
            continue
    return found


def lookup_image(store: Any, key: str) -> Any:
    """Store.image(), failing with Go's Store.Image() text (``locating image with ID "x": ...``)."""
    from lamina.errors import ImageUnknown

    try:
        return store.image(key)
    except ImageUnknown as exc:
        from .flags import go_quote

        raise LookupError(f'locating image with ID "{go_quote(key)}": {exc}') from None


def duplicate_name_message(store: Any, kind: str, names: list[str], exc: BaseException) -> str:
    """Go's text for a name that another record of *kind* already has (Store.Create*)."""
    for name in names:
        try:
            other = getattr(store, kind)(name)
        except NotKnown:
            continue
        if name not in other.names:
            continue
        if kind == "layer":
            return "that name is already in use"
        if kind == "image":
            return (f'image name "{_q(name)}" is already associated with image "{other.id}": '
                    "that name is already in use")
        return (f'the container name "{_q(name)}" is already in use by {other.id}. You have to remove that '
                "container to be able to reuse that name: that name is already in use")
    return go_error(exc)


def _q(text: str) -> str:
    from .flags import go_quote

    return go_quote(text)


def open_input(path: str) -> BinaryIO:
    """``path`` opened for reading, or stdin when empty (raises OSError)."""
    if path:
        return open(path, "rb")
    return sys.stdin.buffer


def read_input(path: str) -> bytes:
    stream = open_input(path)
    try:
        return stream.read()
    finally:
        if path:
            stream.close()


def create_output(path: str) -> BinaryIO:
    """Go's ``os.Create``: truncate or create (mode 0666 before umask)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    return os.fdopen(fd, "wb")


def dir_size(path: str) -> int:
    """pkg/directory.Size: bytes of everything but directories, each inode once."""
    seen: set[int] = set()
    total = 0

    def visit(p: str, top: bool) -> None:
        nonlocal total
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            if top:
                raise
            return
        if st.st_ino in seen:
            return
        seen.add(st.st_ino)
        import stat

        if stat.S_ISDIR(st.st_mode):
            try:
                names = sorted(os.listdir(p))
            except FileNotFoundError:
                return
            for name in names:
                visit(os.path.join(p, name), False)
            return
        total += st.st_size

    visit(path, True)
    return total


# ---------------------------------------------------------------- ID maps


class MappingError(Exception):
    pass


def _parse_id_map(spec: str, setting: str) -> list[Any]:
    """idtools.ParseIDMap([]string{spec}, setting)."""
    from lamina.types import IDMap

    if spec == "":
        return []
    bad = MappingError(
        f'initializing ID mappings: {setting} setting is malformed expected ["uint32:uint32:uint32"]: ["{spec}"]')
    parts = spec.split(":")
    if len(parts) % 3 != 0:
        raise bad
    nums = []
    for part in parts:
        if not part.isdigit() or not part.isascii() or int(part) > 0xFFFFFFFF:
            raise bad
        nums.append(int(part))
    return [IDMap(nums[i], nums[i + 1], nums[i + 2]) for i in range(0, len(nums), 3)]


def _sub_ranges(path: str, name: str) -> list[tuple[int, int]]:
    """/etc/subuid or /etc/subgid ranges for user or group *name* (or its numeric ID)."""
    try:
        import pwd

        # Go's parseSubidFile looks the name up as a user for both files.
        ident = str(pwd.getpwnam(name).pw_uid)
    except (KeyError, ImportError):
        ident = ""
    ranges: list[tuple[int, int]] = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split(":")
            if len(parts) != 3:
                raise MappingError(f"cannot parse subuid/gid information: Format not correct for {path} file")
            if parts[0] == name or name == "ALL" or (ident and parts[0] == ident):
                try:
                    start, length = int(parts[1]), int(parts[2])
                except ValueError:
                    raise MappingError(f"string to int conversion failed during subuid/gid parsing of {text}") from None
                ranges.append((start, length))
    return ranges


def _create_id_map(ranges: list[tuple[int, int]]) -> list[Any]:
    from lamina.types import IDMap

    out = []
    container = 0
    for start, length in sorted(ranges):
        out.append(IDMap(container, start, length))
        container += length
    return out


class MappingRequest:
    """What the --hostuidmap/--uidmap/--subuidmap... flags ask for (Go's IDMappingOptions)."""

    def __init__(self, host_uid: bool, host_gid: bool, uid_map: list[Any], gid_map: list[Any]) -> None:
        self.host_uid = host_uid
        self.host_gid = host_gid
        self.uid_map = uid_map
        self.gid_map = gid_map

    @property
    def explicit(self) -> bool:
        return bool(self.host_uid or self.host_gid or self.uid_map or self.gid_map)

    def resolve(self, inherited: Any) -> Any:
        """The IDMappings to use: explicit maps, "host" (empty) maps, else *inherited*'s."""
        from lamina.types import IDMappings

        uid = () if self.host_uid else (tuple(self.uid_map) or tuple(inherited.uid_map))
        gid = () if self.host_gid else (tuple(self.gid_map) or tuple(inherited.gid_map))
        return IDMappings(uid, gid)


def id_mappings_from_flags(flags: dict[str, Any]) -> MappingRequest:
    """Go's paramIDMapping(); raises MappingError with Go's messages."""
    host_uid = bool(flags.get("hostuidmap"))
    host_gid = bool(flags.get("hostgidmap"))
    uidmap = flags.get("uidmap", "")
    gidmap = flags.get("gidmap", "")
    subuid = flags.get("subuidmap", "")
    subgid = flags.get("subgidmap", "")
    if host_uid and (uidmap or subuid):
        raise MappingError("host uid map specified along with UID mapping")
    if host_gid and (gidmap or subgid):
        raise MappingError("host gid map specified along with GID mapping")
    if not subgid and subuid:
        subgid = subuid
    if not subuid and subgid:
        subuid = subgid
    uids: list[Any] = []
    gids: list[Any] = []
    if subuid and subgid:
        try:
            uranges = _sub_ranges("/etc/subuid", subuid)
            granges = _sub_ranges("/etc/subgid", subgid)
        except OSError as exc:
            raise MappingError(go_error(exc, "open")) from None
        if not uranges:
            raise MappingError(f'no subuid ranges found for user "{subuid}" in /etc/subuid')
        if not granges:
            raise MappingError(f'no subgid ranges found for group "{subgid}" in /etc/subgid')
        uids = _create_id_map(uranges)
        gids = _create_id_map(granges)
    uids += _parse_id_map(uidmap, "uid")
    gids += _parse_id_map(gidmap, "gid")
    return MappingRequest(host_uid, host_gid, uids, gids)
