"""Tests for lamina.archive: naive diff, tar export/apply (incl. hostile archives), copy."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from lamina.archive import (
    OVERRIDE_STAT_XATTR,
    apply_tar,
    changes_dirs,
    changes_size,
    copy_tree,
    export_changes,
    tar_tree,
)
from lamina.errors import ArchiveError, UnsafeArchive
from lamina.types import ApplyDiffOpts, Change, ChangeKind, IDMap, IDMappings

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, trusted.* xattrs)")

GO_TOOL = "/usr/bin/containers-storage"
CAP_NET_ADMIN = struct.pack("<IIIII", 0x02000001, 1 << 12, 0, 0, 0)
T0 = 1_600_000_000  # fixed mtimes (seconds)
NS = 123_456_789

M, A, D = ChangeKind.MODIFY, ChangeKind.ADD, ChangeKind.DELETE


# ---------------------------------------------------------------------------- helpers


def opts(**kw: Any) -> ApplyDiffOpts:
    return ApplyDiffOpts(diff=io.BytesIO(b""), **kw)


def apply_bytes(dest: Path, data: bytes, whiteouts: str = "delete", **kw: Any) -> int:
    return apply_tar(str(dest), io.BytesIO(data), opts(**kw), whiteouts=whiteouts)


def read_all(stream: BinaryIO) -> bytes:
    try:
        return stream.read()
    finally:
        stream.close()


def ch(path: str, kind: ChangeKind) -> Change:
    return Change(path, kind)


def xattrs_of(path: str, wanted: tuple[str, ...]) -> dict[str, bytes]:
    out = {}
    for name in os.listxattr(path, follow_symlinks=False):
        if name.startswith(wanted):
            out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


XATTRS_ARCHIVED = ("user.", "security.capability")  # what Go's tar writer carries


def describe(
    root: Path, *, mtimes: bool = True, xattr_prefixes: tuple[str, ...] = XATTRS_ARCHIVED
) -> dict[str, dict[str, Any]]:
    """Metadata of everything below root, keyed by relative path (hardlinks grouped)."""
    out: dict[str, dict[str, Any]] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            d: dict[str, Any] = {
                "fmt": stat.S_IFMT(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "xattrs": xattrs_of(p, xattr_prefixes),
            }
            if mtimes:
                d["mtime"] = st.st_mtime_ns // 1_000_000_000
            if stat.S_ISREG(st.st_mode):
                d["sha"] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                d["target"] = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                d["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            out[rel] = d
    for group in inodes.values():
        for rel in group:
            out[rel]["links"] = sorted(group)
    return out


def snapshot(root: Path, exclude: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under root except the exclude subtree (to prove nothing escaped)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == exclude:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p == exclude:
                continue
            st = os.lstat(p)
            content = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_nlink, st.st_mtime_ns, content)
    return out


def host_file_state(path: str) -> tuple[int, int, int, int, bytes]:
    st = os.lstat(path)
    return st.st_mode, st.st_nlink, st.st_uid, st.st_mtime_ns, Path(path).read_bytes()


class TarBuilder:
    """Independent tar writer (Python's tarfile) for crafting test archives."""

    def __init__(self, fmt: int = tarfile.PAX_FORMAT) -> None:
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=fmt)

    def _info(
        self, name: str, type_: bytes, mode: int, uid: int, gid: int, mtime: int
    ) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = type_, mode, uid, gid, mtime
        return ti

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0,
             mtime: int = T0, pax: dict[str, str] | None = None) -> "TarBuilder":
        ti = self._info(name, tarfile.REGTYPE, mode, uid, gid, mtime)
        ti.size = len(data)
        if pax:
            ti.pax_headers = pax
        self.tf.addfile(ti, io.BytesIO(data))
        return self

    def dir(
        self, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = T0
    ) -> "TarBuilder":
        self.tf.addfile(self._info(name, tarfile.DIRTYPE, mode, uid, gid, mtime))
        return self

    def symlink(self, name: str, target: str) -> "TarBuilder":
        ti = self._info(name, tarfile.SYMTYPE, 0o777, 0, 0, T0)
        ti.linkname = target
        self.tf.addfile(ti)
        return self

    def hardlink(self, name: str, target: str, mode: int = 0o644) -> "TarBuilder":
        ti = self._info(name, tarfile.LNKTYPE, mode, 0, 0, T0)
        ti.linkname = target
        self.tf.addfile(ti)
        return self

    def device(self, name: str, major: int, minor: int, type_: bytes = tarfile.CHRTYPE) -> "TarBuilder":
        ti = self._info(name, type_, 0o666, 0, 0, T0)
        ti.devmajor, ti.devminor = major, minor
        self.tf.addfile(ti)
        return self

    def bytes(self) -> bytes:
        self.tf.close()
        return self.buf.getvalue()


def set_times(path: Path, sec: int, nsec: int = 0) -> None:
    ns = sec * 1_000_000_000 + nsec
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def build_rich_tree(root: Path) -> None:
    """A tree with every kind of entry and metadata the archive code must carry."""
    root.mkdir(exist_ok=True)
    (root / "dir").mkdir()
    (root / "dir/sub").mkdir()
    (root / "empty.txt").write_bytes(b"")
    (root / "small.txt").write_bytes(b"hello\n")
    (root / "dir/odd.bin").write_bytes(os.urandom(5000))
    (root / "dir/sub/big.bin").write_bytes(os.urandom((1 << 20) + 777))
    owned = root / "dir/owned.txt"
    owned.write_bytes(b"owned")
    os.chown(owned, 1000, 1001)
    suid = root / "suid-bin"
    suid.write_bytes(b"#!/bin/sh\n")
    os.chown(suid, 0, 0)
    os.chmod(suid, 0o4755)
    sgid_dir = root / "sgid-dir"
    sgid_dir.mkdir()
    os.chmod(sgid_dir, 0o2775)
    sticky = root / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    (root / "private.txt").write_bytes(b"p")
    os.chmod(root / "private.txt", 0o600)
    # xattrs
    os.setxattr(root / "small.txt", "user.comment", b"hi there")
    capfile = root / "cap-bin"
    capfile.write_bytes(b"\x7fELF")
    os.chmod(capfile, 0o755)
    os.setxattr(capfile, "security.capability", CAP_NET_ADMIN)
    os.setxattr(root / "dir", "user.dirattr", b"\x00\x01binary\xff")
    # hardlinks
    os.link(root / "small.txt", root / "dir/small-hard")
    os.link(root / "small.txt", root / "dir/sub/small-hard2")
    # symlinks
    os.symlink("small.txt", root / "link-rel")
    os.symlink("/etc/passwd", root / "link-abs")
    os.symlink("t" * 150, root / "link-long-target")
    # devices and fifo
    os.mknod(root / "chardev", stat.S_IFCHR | 0o640, os.makedev(1, 3))
    os.mknod(root / "blockdev", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mkfifo(root / "fifo", 0o620)
    # long / non-ASCII names
    longdir = root / ("d" * 90) / ("e" * 90)
    longdir.mkdir(parents=True)
    (longdir / ("f" * 150 + ".txt")).write_bytes(b"long name content")
    (root / "ünïcødé-名前.txt").write_bytes("ü".encode())
    # mtimes last, dirs after contents
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            set_times(Path(dirpath, name), T0 + 17, NS)
    set_times(root, T0 + 3)


# ---------------------------------------------------------------------------- round trips


def test_tar_tree_roundtrip_reproduces_everything(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_rich_tree(src)
    dst.mkdir()
    data = read_all(tar_tree(str(src), IDMappings()))
    size = apply_bytes(dst, data)
    expected = describe(src)
    got = describe(dst)
    assert got == expected
    assert got["small.txt"]["links"] == ["dir/small-hard", "dir/sub/small-hard2", "small.txt"]
    assert got["cap-bin"]["xattrs"] == {"security.capability": CAP_NET_ADMIN}
    assert got["suid-bin"]["mode"] == 0o4755 and got["sticky"]["mode"] == 0o1777
    assert got["chardev"]["rdev"] == (1, 3) and got["fifo"]["fmt"] == stat.S_IFIFO
    regular = [p.lstat() for p in src.rglob("*") if stat.S_ISREG(p.lstat().st_mode)]
    assert size == sum({st.st_ino: st.st_size for st in regular}.values())


def test_tar_tree_is_standard_tar(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_rich_tree(src)
    data = read_all(tar_tree(str(src), IDMappings()))
    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(data))}
    long_name = "d" * 90 + "/" + "e" * 90 + "/" + "f" * 150 + ".txt"
    assert members[long_name].size == len(b"long name content")
    assert members["link-long-target"].linkname == "t" * 150
    assert members["dir/small-hard"].type == tarfile.REGTYPE  # first in walk order
    assert members["small.txt"].type == tarfile.LNKTYPE
    assert members["small.txt"].linkname == "dir/small-hard"
    cap = members["cap-bin"].pax_headers["SCHILY.xattr.security.capability"]
    assert cap.encode("utf-8", "surrogateescape") == CAP_NET_ADMIN
    blk = members["blockdev"]
    assert blk.isblk() and (blk.devmajor, blk.devminor) == (7, 0)
    assert members["dir/owned.txt"].uid == 1000 and members["dir/owned.txt"].gid == 1001
    assert members["small.txt"].mtime == T0 + 17  # nanoseconds truncated like Go
    assert "." not in members and "" not in members  # the root itself is not archived
    assert data.endswith(bytes(1024))


def test_tar_tree_is_lazy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    stream = tar_tree(str(src), IDMappings())
    (src / "b").write_bytes(b"added after the call")  # not read yet, so it must show up
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(read_all(stream)))]
    assert names == ["a", "b"]


def test_id_mappings_both_ways(tmp_path: Path) -> None:
    maps = IDMappings(uid_map=(IDMap(0, 100000, 65536),), gid_map=(IDMap(0, 200000, 65536),))
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f"
    f.write_bytes(b"x")
    os.chown(f, 100000 + 5, 200000 + 7)
    data = read_all(tar_tree(str(src), maps))
    m = next(iter(tarfile.open(fileobj=io.BytesIO(data))))
    assert (m.uid, m.gid) == (5, 7)
    dst = tmp_path / "dst"
    dst.mkdir()
    apply_bytes(dst, data, mappings=maps)
    st = os.lstat(dst / "f")
    assert (st.st_uid, st.st_gid) == (100005, 200007)
    # an owner outside the mapping cannot be archived
    os.chown(f, 5, 5)
    with pytest.raises(ArchiveError):
        read_all(tar_tree(str(src), maps))
    with pytest.raises(ArchiveError):
        apply_bytes(tmp_path / "dst", TarBuilder().file("g", uid=70000).bytes(), mappings=maps)


def test_gnu_longnames_and_pax_xattrs_from_other_writers(tmp_path: Path) -> None:
    longname = "x" * 120 + "/" + "y" * 130
    gnu = (TarBuilder(tarfile.GNU_FORMAT).dir("x" * 120).file(longname, b"gnu")
           .symlink("l", "z" * 200).bytes())
    dst = tmp_path / "dst"
    dst.mkdir()
    apply_bytes(dst, gnu)
    assert (dst / longname).read_bytes() == b"gnu"
    assert os.readlink(dst / "l") == "z" * 200
    pax = TarBuilder().file("p", b"1", pax={"SCHILY.xattr.user.k": "v", "mtime": f"{T0}.5"}).bytes()
    apply_bytes(dst, pax)
    assert os.getxattr(dst / "p", "user.k") == b"v"
    assert os.lstat(dst / "p").st_mtime_ns == T0 * 1_000_000_000 + 500_000_000


def test_existing_entries_are_replaced(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    (dst / "was-dir/sub").mkdir(parents=True)
    (dst / "was-dir/sub/f").write_bytes(b"x")
    (dst / "was-file").write_bytes(b"old")
    (dst / "keep-dir").mkdir()
    (dst / "keep-dir/child").write_bytes(b"stays")
    os.symlink("was-file", dst / "was-link")
    data = (TarBuilder().file("was-dir", b"now a file").dir("was-file", mode=0o700)
            .dir("keep-dir", mode=0o711).file("was-link", b"plain").bytes())
    apply_bytes(dst, data)
    assert (dst / "was-dir").read_bytes() == b"now a file"
    assert (dst / "was-file").is_dir() and stat.S_IMODE(os.lstat(dst / "was-file").st_mode) == 0o700
    assert (dst / "keep-dir/child").read_bytes() == b"stays"
    assert stat.S_IMODE(os.lstat(dst / "keep-dir").st_mode) == 0o711
    assert not (dst / "was-link").is_symlink() and (dst / "was-link").read_bytes() == b"plain"


def test_dir_mtimes_set_after_contents_and_missing_parents_created(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    data = TarBuilder().dir("d", mtime=T0).file("d/f", b"1", mtime=T0 + 1).file("x/y/z", b"2").bytes()
    apply_bytes(dst, data)
    assert os.lstat(dst / "d").st_mtime == T0
    assert (dst / "x/y/z").read_bytes() == b"2"
    assert stat.S_IMODE(os.lstat(dst / "x/y").st_mode) == 0o755


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@pytest.fixture()
def umask_077() -> Any:
    old = os.umask(0o077)
    yield
    os.umask(old)


def test_new_files_get_the_archives_owner_despite_set_gid_parents(tmp_path: Path) -> None:
    """A file in a set-gid directory is born with the directory's group: the extractor must
    chown it back even when the archive's owner is the extracting process's own."""
    dst = tmp_path / "dst"
    (dst / "pre").mkdir(parents=True)
    os.chown(dst / "pre", 0, 777)
    os.chmod(dst / "pre", 0o2755)
    data = (TarBuilder().file("pre/f", b"1")
            .dir("sg", mode=0o2775, gid=4321).file("sg/f", b"2").file("sg/g", b"3", gid=4321)
            # "late/" is first made as a parent (0:0), then the archive's entry makes it set-gid
            .file("late/f1", b"4").dir("late", mode=0o2755, gid=4321).file("late/f2", b"5")
            .bytes())
    apply_bytes(dst, data)
    assert owner_and_mode(dst / "pre/f") == (0, 0, 0o644)
    assert owner_and_mode(dst / "sg/f") == (0, 0, 0o644)
    assert owner_and_mode(dst / "sg/g") == (0, 4321, 0o644)
    assert owner_and_mode(dst / "late/f1") == (0, 0, 0o644)
    assert owner_and_mode(dst / "late/f2") == (0, 0, 0o644)


def test_new_files_get_the_archives_mode_whatever_the_umask(tmp_path: Path, umask_077: None) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    modes = {"rw": 0o666, "x": 0o755, "ro": 0o444, "none": 0, "suid": 0o4755, "sgid": 0o2711,
             "sticky": 0o1644, "own": 0o600, "suid-own": 0o4700, "sticky-own": 0o1600}
    builder = TarBuilder()
    for name, mode in modes.items():
        builder.file(name, name.encode(), mode=mode, uid=0, gid=0)
    builder.file("mine-suid", b"u", mode=0o6755, uid=os.geteuid(), gid=os.getegid())
    apply_bytes(dst, builder.bytes())
    for name, mode in modes.items():
        assert owner_and_mode(dst / name) == (0, 0, mode), name
    assert stat.S_IMODE(os.lstat(dst / "mine-suid").st_mode) == 0o6755


def test_new_files_get_the_archives_mode_under_a_default_acl(tmp_path: Path) -> None:
    """A default ACL, not the umask, shapes a new file's mode: the extractor must not trust
    the mode it gave open()."""
    dst = tmp_path / "dst"
    (dst / "acl").mkdir(parents=True)
    entries = [(0x01, 7), (0x04, 5), (0x20, 0)]  # user::rwx group::r-x other::---
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                            for tag, perm in entries)
    try:
        os.setxattr(dst / "acl", "system.posix_acl_default", value)
    except OSError as e:
        pytest.skip(f"this filesystem takes no POSIX ACLs: {e}")
    probe = dst / "acl/probe"
    probe.write_bytes(b"")
    os.chmod(probe, 0o600)  # (the ACL is really in force: a new file would lose other's bits)
    with open(dst / "acl/check", "w"):
        pass
    assert stat.S_IMODE(os.lstat(dst / "acl/check").st_mode) & 0o007 == 0
    apply_bytes(dst, TarBuilder().file("acl/f", b"x", mode=0o644).file("acl/g", b"y", mode=0o755).bytes())
    assert owner_and_mode(dst / "acl/f") == (0, 0, 0o644)
    assert owner_and_mode(dst / "acl/g") == (0, 0, 0o755)


def test_force_mask_sets_mode_and_records_original(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    data = (TarBuilder().dir("d", mode=0o755).file("d/f", b"x", mode=0o4751, uid=3, gid=4)
            .symlink("s", "d/f").bytes())
    apply_bytes(dst, data, force_mask=0o700)
    st = os.lstat(dst / "d/f")
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert os.getxattr(dst / "d/f", OVERRIDE_STAT_XATTR) == b"3:4:04751"
    assert stat.S_IMODE(os.lstat(dst / "d").st_mode) == 0o700
    assert os.getxattr(dst / "d", OVERRIDE_STAT_XATTR) == b"0:0:0755"
    assert os.path.islink(dst / "s")


def test_ignore_chown_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(*args: Any, **kw: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", deny)
    monkeypatch.setattr(os, "chown", deny)
    data = TarBuilder().file("f", b"x", uid=1234).symlink("s", "f").bytes()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert apply_bytes(tmp_path / "a", data, ignore_chown_errors=True) == 1
    assert (tmp_path / "a/f").read_bytes() == b"x"
    with pytest.raises(ArchiveError, match="'f'"):
        apply_bytes(tmp_path / "b", data)


# ---------------------------------------------------------------------------- changes


@pytest.fixture()
def parent_child(tmp_path: Path) -> tuple[Path, Path]:
    parent = tmp_path / "parent"
    parent.mkdir()
    for name in ("keep.txt", "mod-content.txt", "mod-mode.txt", "chown.txt", "del.txt", "cap.txt"):
        (parent / name).write_bytes(name.encode())
    (parent / "deltree/a").mkdir(parents=True)
    (parent / "deltree/a/b.txt").write_bytes(b"b")
    (parent / "deltree/c.txt").write_bytes(b"c")
    (parent / "opq/inner").mkdir(parents=True)
    (parent / "opq/old1").write_bytes(b"1")
    (parent / "opq/inner/old2").write_bytes(b"2")
    (parent / "sub").mkdir()
    (parent / "sub/x.txt").write_bytes(b"x")
    (parent / "chmod-dir").mkdir()
    (parent / "untouched-dir").mkdir()
    (parent / "untouched-dir/u.txt").write_bytes(b"u")
    os.symlink("keep.txt", parent / "link")
    for dirpath, dirnames, filenames in os.walk(parent, topdown=False):
        for name in filenames + dirnames:
            set_times(Path(dirpath, name), T0, NS)

    child = tmp_path / "child"
    copy_tree(str(parent), str(child))
    (child / "new.txt").write_bytes(b"new")
    (child / "mod-content.txt").write_bytes(b"different content")
    os.chmod(child / "mod-mode.txt", 0o600)
    os.chown(child / "chown.txt", 1000, 1000)
    os.setxattr(child / "cap.txt", "security.capability", CAP_NET_ADMIN)
    (child / "del.txt").unlink()
    shutil.rmtree(child / "deltree")
    # opaque replacement of opq
    shutil.rmtree(child / "opq")
    (child / "opq").mkdir()
    (child / "opq/new1").write_bytes(b"n")
    set_times(child / "opq", T0, NS)
    (child / "sub/y.txt").write_bytes(b"y")
    os.chmod(child / "chmod-dir", 0o700)
    (child / "newdir/deeper").mkdir(parents=True)
    (child / "newdir/deeper/f").write_bytes(b"f")
    return parent, child


EXPECTED_CHILD_CHANGES = [
    ch("/cap.txt", M),
    ch("/chmod-dir", M),
    ch("/chown.txt", M),
    ch("/del.txt", D),
    ch("/deltree", D),
    ch("/mod-content.txt", M),
    ch("/mod-mode.txt", M),
    ch("/new.txt", A),
    ch("/newdir", A),
    ch("/newdir/deeper", A),
    ch("/newdir/deeper/f", A),
    ch("/opq", M),
    ch("/opq/inner", D),
    ch("/opq/new1", A),
    ch("/opq/old1", D),
    ch("/sub", M),
    ch("/sub/y.txt", A),
]


def test_changes_dirs_exact(parent_child: tuple[Path, Path]) -> None:
    parent, child = parent_child
    assert changes_dirs(str(child), str(parent)) == EXPECTED_CHILD_CHANGES
    assert changes_dirs(str(parent), str(parent)) == []


def test_changes_dirs_without_parent_is_all_adds(parent_child: tuple[Path, Path]) -> None:
    parent, _ = parent_child
    got = changes_dirs(str(parent), None)
    assert all(c.kind == A for c in got)
    assert [c.path for c in got] == sorted("/" + str(p.relative_to(parent)) for p in parent.rglob("*"))


def test_changes_mtime_rules(tmp_path: Path) -> None:
    """1.43 sameFsTime: equal, or same second when either side has zero nanoseconds."""
    parent, child = tmp_path / "p", tmp_path / "c"
    parent.mkdir()
    cases = {  # name: (parent (s, ns), child (s, ns), changed?)
        "same": ((T0, NS), (T0, NS), False),
        "rounded": ((T0, NS), (T0, 0), False),
        "rounded-other-side": ((T0, 0), (T0, NS), False),
        "other-ns": ((T0, NS), (T0, NS + 1), True),
        "other-second": ((T0, 0), (T0 - 1, 500_000_000), True),
        "rounded-up": ((T0, 500_000_000), (T0 + 1, 0), True),
    }
    for name in cases:
        (parent / name).write_bytes(b"x")
    (parent / "dir").mkdir()
    copy_tree(str(parent), str(child))
    for name, (p, c, _) in cases.items():
        set_times(parent / name, *p)
        set_times(child / name, *c)
    set_times(child / "dir", T0 + 100)  # directories' mtimes are ignored
    got = changes_dirs(str(child), str(parent))
    assert got == [ch(f"/{n}", M) for n in sorted(cases) if cases[n][2]]


def test_changes_size_counts_hardlinks_once(tmp_path: Path) -> None:
    layer = tmp_path / "l"
    layer.mkdir()
    (layer / "a").write_bytes(b"12345")
    os.link(layer / "a", layer / "b")
    (layer / "c").write_bytes(b"123")
    (layer / "d").mkdir()
    os.symlink("abc", layer / "s")
    changes = [ch("/a", A), ch("/b", A), ch("/c", M), ch("/d", A), ch("/s", A),
               ch("/gone", D), ch("/missing", A)]
    assert changes_size(str(layer), changes) == 5 + 3 + 3


def test_export_then_apply_reproduces_child(parent_child: tuple[Path, Path], tmp_path: Path) -> None:
    parent, child = parent_child
    changes = changes_dirs(str(child), str(parent))
    data = read_all(export_changes(str(child), changes, IDMappings()))
    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(data))}
    names = list(members)
    assert ".wh.deltree" in names and ".wh.del.txt" in names
    assert "opq/.wh.old1" in names and "opq/.wh.inner" in names and members["sub"].isdir()
    assert not any(n.startswith("deltree") for n in names)
    assert "keep.txt" not in names and "untouched-dir" not in names
    target = tmp_path / "target"
    copy_tree(str(parent), str(target))
    size = apply_bytes(target, data)
    assert size == changes_size(str(child), changes)
    assert describe(target) == describe(child)
    assert changes_dirs(str(target), str(child)) == []


def test_export_hardlinks_within_change_set(tmp_path: Path) -> None:
    parent, child = tmp_path / "p", tmp_path / "c"
    parent.mkdir()
    child.mkdir()
    (child / "x").write_bytes(b"shared")
    os.link(child / "x", child / "y")
    changes = changes_dirs(str(child), str(parent))
    data = read_all(export_changes(str(child), changes, IDMappings()))
    members = list(tarfile.open(fileobj=io.BytesIO(data)))
    assert [(m.name, m.type) for m in members] == [("x", tarfile.REGTYPE), ("y", tarfile.LNKTYPE)]
    dst = tmp_path / "d"
    dst.mkdir()
    apply_bytes(dst, read_all(export_changes(str(child), changes, IDMappings())))
    assert os.lstat(dst / "x").st_ino == os.lstat(dst / "y").st_ino


# ---------------------------------------------------------------------------- whiteouts


def whiteout_base(tmp_path: Path) -> Path:
    dst = tmp_path / "dst"
    (dst / "a").mkdir(parents=True)
    (dst / "a/f").write_bytes(b"f")
    (dst / "a/g").write_bytes(b"g")
    (dst / "b").write_bytes(b"b")
    (dst / "d/sub").mkdir(parents=True)
    (dst / "d/old").write_bytes(b"old")
    (dst / "d/sub/deep").write_bytes(b"deep")
    (dst / "d/sub/kept-dir-old").write_bytes(b"x")
    return dst


WHITEOUT_TAR = (TarBuilder().file("a/.wh.f").file(".wh.b").dir("d").file("d/-early", b"e")
                .dir("d/sub").file("d/sub/new", b"n").file("d/.wh..wh..opq").file("d/new", b"new")
                .file(".wh.missing").bytes())


def test_whiteouts_delete(tmp_path: Path) -> None:
    dst = whiteout_base(tmp_path)
    apply_bytes(dst, WHITEOUT_TAR)
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*")) == [
        "a", "a/g", "d", "d/-early", "d/new", "d/sub", "d/sub/new"]


def test_whiteouts_keep(tmp_path: Path) -> None:
    dst = whiteout_base(tmp_path)
    apply_bytes(dst, WHITEOUT_TAR, whiteouts="keep")
    assert (dst / "a/f").exists() and (dst / "a/.wh.f").is_file() and (dst / "b").exists()
    assert (dst / "d/.wh..wh..opq").is_file() and (dst / "d/old").exists()


def test_whiteouts_overlay(tmp_path: Path) -> None:
    dst = whiteout_base(tmp_path)
    apply_bytes(dst, WHITEOUT_TAR, whiteouts="overlay")
    st = os.lstat(dst / "a/f")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0) and stat.S_IMODE(st.st_mode) == 0
    assert stat.S_ISCHR(os.lstat(dst / "b").st_mode)
    assert os.getxattr(dst / "d", "trusted.overlay.opaque") == b"y"
    assert not (dst / "d/.wh..wh..opq").exists() and not (dst / "a/.wh.f").exists()
    assert (dst / "d/old").exists()  # overlay hides it at mount time; nothing deleted here


def test_overlay_whiteouts_get_the_archives_owner(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    (dst / "sg").mkdir(parents=True)
    os.chown(dst / "sg", 0, 4321)
    os.chmod(dst / "sg", 0o2755)
    data = TarBuilder().file("sg/.wh.mine", uid=0, gid=0).file("sg/.wh.theirs", uid=5, gid=6).bytes()
    apply_bytes(dst, data, whiteouts="overlay")
    for name, owner in (("mine", (0, 0)), ("theirs", (5, 6))):
        st = os.lstat(dst / "sg" / name)
        assert stat.S_ISCHR(st.st_mode) and (st.st_uid, st.st_gid) == owner, name

def test_parent_seen_through_a_removed_symlink_is_looked_up_again(tmp_path: Path) -> None:
    # The extractor keeps parent directories open between entries: once the symlink "a" that
    # led to "x" is whited out (or replaced by a directory), "a/f2" must land in a new "a".
    for how in ("whiteout", "replaced"):
        dst = tmp_path / how
        dst.mkdir()
        tar = TarBuilder().dir("x").symlink("a", "x").file("a/f1", b"1")
        tar = tar.file(".wh.a") if how == "whiteout" else tar.dir("a")
        apply_bytes(dst, tar.file("a/f2", b"2").bytes())
        assert (dst / "x/f1").read_bytes() == b"1" and not (dst / "x/f2").exists()
        assert (dst / "a").is_dir() and not (dst / "a").is_symlink() and (dst / "a/f2").read_bytes() == b"2"


def test_whiteouts_bad_mode_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        apply_bytes(tmp_path, b"", whiteouts="aufs")


# ---------------------------------------------------------------------------- hostile archives


@pytest.fixture()
def sandbox(tmp_path: Path) -> tuple[Path, Path, Path]:
    box = tmp_path / "box"
    dest = box / "dest"
    outside = box / "outside"
    (dest / "etc").mkdir(parents=True)
    (dest / "etc/passwd").write_bytes(b"layer passwd")
    outside.mkdir()
    (outside / "victim").write_bytes(b"secret")
    os.chmod(outside / "victim", 0o600)
    return box, dest, outside


HOST_FILES = ("/etc/passwd",)


def run_hostile(box: Path, dest: Path, data: bytes, expect: type[Exception] | None, **kw: Any) -> None:
    before = snapshot(box, dest)
    host_before = {p: host_file_state(p) for p in HOST_FILES}
    if expect is None:
        apply_bytes(dest, data, **kw)
    else:
        with pytest.raises(expect) as info:
            apply_bytes(dest, data, **kw)
        assert isinstance(info.value, ArchiveError)
    assert snapshot(box, dest) == before, "something outside dest changed"
    assert {p: host_file_state(p) for p in HOST_FILES} == host_before


def test_hostile_dotdot_escape(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, _ = sandbox
    run_hostile(box, dest, TarBuilder().file("../outside/pwned", b"x").bytes(), UnsafeArchive)
    run_hostile(box, dest, TarBuilder().file("a/b/../../../outside/pwned", b"x").bytes(), UnsafeArchive)


def test_hostile_absolute_path_is_made_relative(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, outside = sandbox
    run_hostile(box, dest, TarBuilder().file(f"{outside}/pwned", b"x").bytes(), None)
    assert (dest / str(outside).lstrip("/") / "pwned").read_bytes() == b"x"


def test_hostile_symlink_parent_pointing_outside(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, outside = sandbox
    data = TarBuilder().symlink("evil", str(outside)).file("evil/pwned", b"x").bytes()
    run_hostile(box, dest, data, None)
    assert (dest / str(outside).lstrip("/") / "pwned").read_bytes() == b"x"  # resolved in-root
    data = (TarBuilder().dir("sub").symlink("sub/evil", str(outside))
            .file("sub/evil/pwned2", b"y").bytes())
    run_hostile(box, dest, data, None)
    assert (dest / str(outside).lstrip("/") / "pwned2").read_bytes() == b"y"  # absolute = from dest
    data = TarBuilder().symlink("rel", "../../../../../../../outside").file("rel/victim", b"x").bytes()
    run_hostile(box, dest, data, None)
    assert (dest / "outside/victim").read_bytes() == b"x"


def test_hostile_hardlink_to_etc_passwd(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, _ = sandbox
    (dest / "etc/passwd").unlink()
    run_hostile(box, dest, TarBuilder().hardlink("hl", "/etc/passwd").bytes(), ArchiveError)
    escaping = TarBuilder().hardlink("hl", "../../../../../../etc/passwd").bytes()
    run_hostile(box, dest, escaping, UnsafeArchive)
    run_hostile(box, dest, TarBuilder().hardlink("hl", "../outside/victim").bytes(), UnsafeArchive)
    assert not (dest / "hl").exists()


def test_hostile_hardlink_through_symlink(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, outside = sandbox
    data = TarBuilder().symlink("s", str(outside)).hardlink("hl", "s/victim").bytes()
    run_hostile(box, dest, data, UnsafeArchive)
    assert os.lstat(outside / "victim").st_nlink == 1


def test_hostile_hardlink_to_symlink_does_not_chmod_its_target(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, outside = sandbox
    data = TarBuilder().symlink("s", str(outside / "victim")).hardlink("hl", "s", mode=0o777).bytes()
    run_hostile(box, dest, data, None)
    assert os.path.islink(dest / "hl") and stat.S_IMODE(os.lstat(outside / "victim").st_mode) == 0o600


def test_hostile_symlink_swapped_mid_archive(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, outside = sandbox
    data = (TarBuilder().dir("d").file("d/f", b"1").symlink("d", str(outside))
            .file("d/victim", b"overwritten?").dir("d").bytes())
    run_hostile(box, dest, data, None)
    assert (dest / "d").is_dir() and not (dest / "d").is_symlink() and not (dest / "d/f").exists()
    assert (dest / str(outside).lstrip("/") / "victim").read_bytes() == b"overwritten?"


def test_hostile_existing_symlink_leaf_replaced(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, outside = sandbox
    os.symlink(str(outside / "victim"), dest / "leaf")
    os.symlink(str(outside), dest / "dirleaf")
    data = TarBuilder().file("leaf", b"mine", mode=0o777).dir("dirleaf", mode=0o777).bytes()
    run_hostile(box, dest, data, None)
    assert (dest / "leaf").read_bytes() == b"mine" and not (dest / "leaf").is_symlink()
    assert (dest / "dirleaf").is_dir() and not (dest / "dirleaf").is_symlink()


def test_hostile_device_refused(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, _ = sandbox
    data = TarBuilder().device("dev/mem", 1, 1).bytes()
    run_hostile(box, dest, data, UnsafeArchive, allow_devices=False)
    assert not (dest / "dev/mem").exists()
    data = TarBuilder().device("dev/loop", 7, 0, tarfile.BLKTYPE).bytes()
    run_hostile(box, dest, data, UnsafeArchive, allow_devices=False)


def test_hostile_truncated_archive(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, _ = sandbox
    data = TarBuilder().file("first", b"1").file("victim.bin", os.urandom(4000)).bytes()
    cut = data[: 512 * 4 + 1000]  # inside victim.bin's data
    with pytest.raises(ArchiveError, match=r"victim\.bin.*offset \d+"):
        apply_bytes(dest, cut)
    run_hostile(box, dest, data[: 512 * 3 + 100], ArchiveError)  # inside a header


def test_hostile_corrupt_header_checksum(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, _ = sandbox
    data = bytearray(TarBuilder().file("ok", b"1").file("bad", b"2").bytes())
    data[1024 + 1] ^= 0x40  # flip a bit in the second header's name
    with pytest.raises(ArchiveError, match="checksum.*|.*offset 1024"):
        apply_bytes(dest, bytes(data))
    run_hostile(box, dest, bytes(data), ArchiveError)


def test_hostile_whiteout_of_dotdot(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, _ = sandbox
    run_hostile(box, dest, TarBuilder().file(".wh..").bytes(), UnsafeArchive)
    run_hostile(box, dest, TarBuilder().dir("sub").file("sub/.wh..").bytes(), UnsafeArchive)
    run_hostile(box, dest, TarBuilder().file("etc/.wh..").bytes(), UnsafeArchive)
    assert (dest / "etc/passwd").read_bytes() == b"layer passwd"


def test_hostile_whiteout_through_symlink_parent(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, outside = sandbox
    data = TarBuilder().symlink("s", str(outside)).file("s/.wh.victim").bytes()
    run_hostile(box, dest, data, None)
    data = TarBuilder().symlink("t", "../outside").file("t/.wh..wh..opq").bytes()
    run_hostile(box, dest, data, None)
    assert (outside / "victim").read_bytes() == b"secret"


def test_hostile_file_named_dotdot(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, _ = sandbox
    run_hostile(box, dest, TarBuilder().file("..", b"x").bytes(), UnsafeArchive)
    run_hostile(box, dest, TarBuilder().file("sub/..", b"x").bytes(), UnsafeArchive)
    run_hostile(box, dest, TarBuilder().file(".", b"x").bytes(), UnsafeArchive)
    assert (dest / "etc/passwd").read_bytes() == b"layer passwd"


def test_hostile_overlay_xattrs_not_applied(sandbox: tuple[Path, Path, Path]) -> None:
    box, dest, _ = sandbox
    data = TarBuilder().file("f", b"x", pax={"SCHILY.xattr.trusted.overlay.redirect": "/etc"}).bytes()
    run_hostile(box, dest, data, None)
    assert "trusted.overlay.redirect" not in os.listxattr(dest / "f")


# ---------------------------------------------------------------------------- copy_tree


def test_copy_tree_preserves_everything(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_rich_tree(src)
    os.setxattr(src / "dir/odd.bin", "trusted.secret", b"t")
    os.setxattr(src / "link-rel", "trusted.onlink", b"l", follow_symlinks=False)
    os.chmod(src, 0o555)
    os.chown(src, 12, 34)
    set_times(src, T0 + 5, NS)
    copy_tree(str(src), str(dst))
    prefixes = ("user.", "security.", "trusted.")
    want = describe(src, xattr_prefixes=prefixes)
    got = describe(dst, xattr_prefixes=prefixes)
    assert got == want
    assert got["dir/odd.bin"]["xattrs"]["trusted.secret"] == b"t"
    # nanosecond timestamps, for files, symlinks and dirs
    for rel in ("small.txt", "link-rel", "dir", "fifo"):
        assert os.lstat(dst / rel).st_mtime_ns == os.lstat(src / rel).st_mtime_ns
    rs, rd = os.lstat(src), os.lstat(dst)
    meta = lambda st: (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)  # noqa: E731
    assert meta(rd) == meta(rs)
    assert changes_dirs(str(dst), str(src)) == []


# ---------------------------------------------------------------------------- Go differential


def go(*args: str, stdin: bytes | None = None) -> str:
    proc = subprocess.run([GO_TOOL, *args], input=stdin, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()
    return proc.stdout.decode()


def reference_tars() -> tuple[bytes, bytes]:
    base = (TarBuilder(tarfile.GNU_FORMAT).dir("etc").file("etc/hello.txt", b"hello\n")
            .hardlink("etc/hello-hard", "etc/hello.txt").symlink("link-to-hello", "etc/hello.txt")
            .dir("dir1").file("dir1/a.txt", b"a\n", uid=1000, gid=1001)
            .file("dir1/b.txt", b"b\n", uid=1000, gid=1001)
            .dir("opaque-dir").file("opaque-dir/old.txt", b"old\n").bytes())
    child = (TarBuilder(tarfile.GNU_FORMAT).dir("dir1", mtime=T0 + 60).file("dir1/.wh.a.txt")
             .dir("opaque-dir", mtime=T0 + 60).file("opaque-dir/.wh..wh..opq")
             .file("opaque-dir/new.txt", b"new\n").file("newfile.txt", b"hello\n").bytes())
    return base, child


@pytest.mark.needs_go
@pytest.mark.skipif(not os.path.exists(GO_TOOL), reason=f"{GO_TOOL} (Go reference) is not installed")
def test_go_differential_reference_scenario(tmp_path: Path) -> None:
    base, child = reference_tars()
    (tmp_path / "base.tar").write_bytes(base)
    (tmp_path / "child.tar").write_bytes(child)
    graph = tmp_path / "graph"
    cs = ["--graph", str(graph), "--run", str(tmp_path / "run"), "--storage-driver", "vfs"]
    l1 = go(*cs, "create-layer").split()[-1]
    go(*cs, "applydiff", "-f", str(tmp_path / "base.tar"), l1)
    l2 = go(*cs, "create-layer", l1).split()[-1]
    go(*cs, "applydiff", "-f", str(tmp_path / "child.tar"), l2)
    go_changes = sorted((c["Path"], c["Kind"]) for c in json.loads(go(*cs, "changes", "-j", l2)))
    reference = sorted([("/newfile.txt", 1), ("/opaque-dir", 0), ("/opaque-dir/new.txt", 1),
                        ("/opaque-dir/old.txt", 2), ("/dir1", 0), ("/dir1/a.txt", 2)])
    assert go_changes == reference
    gdir = lambda layer: graph / "vfs/dir" / layer  # noqa: E731

    # 1. our change detection on Go's trees
    as_pairs = lambda cs_: [(c.path, int(c.kind)) for c in cs_]  # noqa: E731
    assert as_pairs(changes_dirs(str(gdir(l2)), str(gdir(l1)))) == go_changes
    assert as_pairs(changes_dirs(str(gdir(l1)), None)) == sorted(
        (c["Path"], c["Kind"]) for c in json.loads(go(*cs, "changes", "-j", l1)))

    # 2. our whole pipeline reproduces Go's trees, changes and diffsize
    mine_a, mine_b = tmp_path / "A", tmp_path / "B"
    mine_a.mkdir()
    apply_bytes(mine_a, base)
    copy_tree(str(mine_a), str(mine_b))
    apply_bytes(mine_b, child)
    mine_changes = changes_dirs(str(mine_b), str(mine_a))
    assert as_pairs(mine_changes) == go_changes
    assert describe(mine_a) == describe(gdir(l1))
    assert describe(mine_b) == describe(gdir(l2))
    assert changes_size(str(mine_b), mine_changes) == int(go(*cs, "diffsize", l2).strip()) == 10

    # 3. Go applies our naive diff to the same result
    l3 = go(*cs, "create-layer", l1).split()[-1]
    diff = read_all(export_changes(str(mine_b), mine_changes, IDMappings()))
    (tmp_path / "ours.tar").write_bytes(diff)
    go(*cs, "applydiff", "-f", str(tmp_path / "ours.tar"), l3)
    assert describe(gdir(l3)) == describe(gdir(l2))
    assert sorted((c["Path"], c["Kind"]) for c in json.loads(go(*cs, "changes", "-j", l3))) == go_changes

    # 4. a layer changed in place (no tar-split): Go's naive Changes/Diff vs ours
    l4 = go(*cs, "create-layer", l1).split()[-1]
    d4 = gdir(l4)
    (d4 / "dir1/a.txt").write_bytes(b"changed\n")
    os.chown(d4 / "dir1/b.txt", 7, 8)
    (d4 / "etc/hello.txt").unlink()
    shutil.rmtree(d4 / "opaque-dir")
    (d4 / "new/deep").mkdir(parents=True)
    (d4 / "new/deep/cap").write_bytes(b"\x7fELF")
    os.setxattr(d4 / "new/deep/cap", "security.capability", CAP_NET_ADMIN)
    os.setxattr(d4 / "new/deep/cap", "user.note", b"n")
    go_changes4 = sorted((c["Path"], c["Kind"]) for c in json.loads(go(*cs, "changes", "-j", l4)))
    assert as_pairs(changes_dirs(str(d4), str(gdir(l1)))) == go_changes4
    assert ("/opaque-dir", 2) in go_changes4 and ("/new/deep/cap", 1) in go_changes4
    go_diff = subprocess.run([GO_TOOL, *cs, "diff", "-u", l4], capture_output=True, timeout=60,
                             check=True).stdout
    mine_c = tmp_path / "C"
    copy_tree(str(mine_a), str(mine_c))
    apply_bytes(mine_c, go_diff)
    assert describe(mine_c) == describe(d4)
