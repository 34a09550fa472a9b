"""Native diffs of an overlay layer, computed from its upper ``diff/`` directory alone.

Counterparts of containers/storage's ``archive.OverlayChanges``, ``TarWithOptions`` with the
overlay whiteout converter, ``directory.Size`` and the overlay DiffGetter. In ``diff/`` a
deletion is a 0:0 character device and a directory replaced wholesale carries
``trusted.overlay.opaque=y``; in tars they become AUFS ``.wh.`` entries.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from typing import BinaryIO, Iterator

from lamina.archive import WHITEOUT_OPAQUE, WHITEOUT_PREFIX
from lamina.types import Change, ChangeKind, IDMappings

from . import _sys

__all__ = ["overlay_changes", "directory_size", "inode_count", "overlay_diff_tar", "is_whiteout", "is_opaque", "DiffFiles"]

_OPAQUE_XATTR = "trusted.overlay.opaque"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def is_whiteout(st: os.stat_result) -> bool:
    """An overlay whiteout: a character device with device number 0:0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    """Whether the directory *path* carries ``trusted.overlay.opaque=y``."""
    try:
        return os.getxattr(path, _OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise


def _walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything below *root* in Go's filepath.Walk order
    (names sorted bytewise inside each directory, a directory before its contents)."""
    stack: list[Iterator[str]] = []
    prefixes: list[str] = []

    def listing(rel: str) -> Iterator[str]:
        names = os.listdir(os.path.join(root, rel) if rel else root)
        return iter(sorted(names, key=os.fsencode))

    stack.append(listing(""))
    prefixes.append("")
    while stack:
        name = next(stack[-1], None)
        if name is None:
            stack.pop()
            prefixes.pop()
            continue
        rel = prefixes[-1] + name
        try:
            st = os.lstat(os.path.join(root, rel))
        except FileNotFoundError:
            continue  # vanished while walking (Go ignores these too)
        yield rel, st
        if stat.S_ISDIR(st.st_mode):
            stack.append(listing(rel))
            prefixes.append(rel + "/")


def _same_fs_time(a_ns: int, b_ns: int) -> bool:
    if a_ns == b_ns:
        return True
    return a_ns // 10**9 == b_ns // 10**9 and (a_ns % 10**9 == 0 or b_ns % 10**9 == 0)


def overlay_changes(lowers: list[str], upper: str) -> list[Change]:
    """Changes recorded in the upper dir *upper* over the lower dirs *lowers* (nearest first).

    Go's ``changes(layers, rw, overlayDeletedFile)``: a whiteout or an opaque directory is a
    Delete of that path; anything else is a Modify when some lower has the path (directories
    with equal size, mode and mtime are skipped), else an Add; the parent of an Add/Delete is
    reported as Modify when it was not reported yet. Walk order, not sorted."""
    out: list[Change] = []
    changed_dirs: set[str] = set()
    for rel, st in _walk(upper):
        path = "/" + rel
        full = os.path.join(upper, rel)
        deleted = is_whiteout(st) or (stat.S_ISDIR(st.st_mode) and is_opaque(full))
        if deleted:
            kind = ChangeKind.DELETE
        else:
            kind = ChangeKind.ADD
            skip = False
            for lower in lowers:
                try:
                    lst = os.stat(os.path.join(lower, rel))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if stat.S_ISDIR(lst.st_mode) and stat.S_ISDIR(st.st_mode):
                    if (st.st_size == lst.st_size and st.st_mode == lst.st_mode
                            and _same_fs_time(st.st_mtime_ns, lst.st_mtime_ns)):
                        skip = True
                        break
                kind = ChangeKind.MODIFY
                break
            if skip:
                continue
        if stat.S_ISDIR(st.st_mode):
            changed_dirs.add(path)
        if kind in (ChangeKind.ADD, ChangeKind.DELETE):
            parent = os.path.dirname(path)
            if parent != "/" and parent not in changed_dirs:
                out.append(Change(parent, ChangeKind.MODIFY))
                changed_dirs.add(parent)
        out.append(Change(path, kind))
    return out


def directory_size(root: str) -> int:
    """Bytes of everything but directories below *root*, each inode once (Go's directory.Size)."""
    seen = {os.lstat(root).st_ino}
    total = 0
    for _, st in _walk(root):
        if st.st_ino in seen:
            continue
        seen.add(st.st_ino)
        if not stat.S_ISDIR(st.st_mode):
            total += st.st_size
    return total


def inode_count(root: str) -> int:
    """Distinct inodes in *root* and below, *root* included."""
    seen = {os.lstat(root).st_ino}
    seen.update(st.st_ino for _, st in _walk(root))
    return len(seen)


def _opaque_needs_marker(lowers: list[str], rel: str) -> bool:
    """Go's overlay whiteout converter: an opaque dir gets ``.wh..wh..opq`` only when the nearest
    lower that has the path has a real entry there (not a whiteout)."""
    for lower in lowers:
        try:
            st = os.stat(os.path.join(lower, rel))
        except (FileNotFoundError, NotADirectoryError):
            continue
        return not is_whiteout(st)
    return False


def _diff_chunks(upper: str, lowers: list[str], mappings: IDMappings) -> Iterator[bytes]:
    # lamina.archive's entry encoder, so native and naive diffs carry identical headers.
    from lamina import archive

    root_fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        exporter = archive.TreeExporter(root_fd, mappings)
        for rel, st in _walk(upper):
            parent_rel, _, leaf = rel.rpartition("/")
            if is_whiteout(st):
                uid, gid = st.st_uid, st.st_gid
                if not mappings.empty:
                    uid, gid = mappings.to_container(uid, gid)
                name = (parent_rel + "/" if parent_rel else "") + WHITEOUT_PREFIX + leaf
                uname, gname = archive.host_owner_names(st.st_uid, st.st_gid)
                yield archive.encode_header(archive.TarHeader(
                    uname=uname, gname=gname,
                    name=name, typeflag=b"0", mode=stat.S_IMODE(st.st_mode), uid=uid, gid=gid,
                    mtime_ns=st.st_mtime_ns // 10**9 * 10**9))
                continue
            pfd = os.open(parent_rel or ".", _DIR_FLAGS, dir_fd=root_fd)
            try:
                got = yield from exporter.emit(pfd, leaf, rel)
            finally:
                os.close(pfd)
            if got is not None and stat.S_ISDIR(got.st_mode) and is_opaque(os.path.join(upper, rel)):
                if _opaque_needs_marker(lowers, rel):
                    uid, gid = got.st_uid, got.st_gid
                    if not mappings.empty:
                        uid, gid = mappings.to_container(uid, gid)
                    yield archive.encode_header(archive.TarHeader(
                        name=rel + "/" + WHITEOUT_OPAQUE, typeflag=b"0", mode=stat.S_IMODE(got.st_mode) & 0o777,
                        uid=uid, gid=gid, mtime_ns=0))
        yield bytes(1024)
    finally:
        os.close(root_fd)


def overlay_diff_tar(upper: str, lowers: list[str], mappings: IDMappings) -> BinaryIO:
    """Lazily produced uncompressed tar of the upper dir *upper*, whiteouts converted to AUFS form.

    Entries come in walk order, owners mapped host -> container through *mappings*."""
    from lamina import archive

    return archive.chunks_stream(_diff_chunks(upper, lowers, mappings))


class DiffFiles:
    """Opens files of a layer's own diff by archive name without mounting (the DiffGetter).

    Tries ``diff/``, then ``diff1/``… of the layer, then its lower layers' diff dirs, nearest
    first (containers/storage 1.62's overlayFileGetter). Names never resolve outside a dir."""

    def __init__(self, dirs: list[str]) -> None:
        self.fds: list[int] = []
        try:
            for d in dirs:
                try:
                    self.fds.append(os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
                except FileNotFoundError:
                    continue
        except BaseException:
            self.close()
            raise
        if not self.fds:
            raise FileNotFoundError(errno.ENOENT, "layer has no diff directory", dirs[0] if dirs else "")

    def __call__(self, name: str) -> BinaryIO:
        first: OSError | None = None
        for fd in self.fds:
            try:
                return io.FileIO(_sys.open_in_root(fd, name), "rb", closefd=True)
            except OSError as e:
                if first is None:
                    first = e
        assert first is not None
        raise first

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())
