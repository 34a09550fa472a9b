"""The graph-driver conformance suite, for lamina's drivers and third-party ones.

Use it from a driver's tests::

    # conftest.py at the project root
    pytest_plugins = ["lamina.testing"]

    # test_mydriver.py
    from lamina.testing import DriverConformance

    class TestMyDriver(DriverConformance):
        driver_name = "mydriver"        # loaded through its real entry point

Override the ``graph_root`` fixture when the driver needs a special filesystem (btrfs), and
``driver_options`` for options. Every check reads the tree through plain ``os`` calls rather
than trusting the driver. Scenarios follow Go's graphtest and containerd's snapshotter suite.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from typing import Any, Iterator

import pytest

from ..drivers import new_driver
from ..errors import LaminaError
from ..graphdriver import DriverProxy, build_driver
from ..types import ApplyDiffOpts, Change, ChangeKind, CreateOpts, DriverConfig, IDMap, IDMappings, MountOpts

__all__ = ["DriverConformance", "make_tar", "TarEntry", "mounts_under", "tree_snapshot"]

# ---------------------------------------------------------------- helpers usable by any driver's tests

TarEntry = tuple[str, str, dict[str, Any]]  # (kind, name, attributes)


def make_tar(entries: list[TarEntry]) -> bytes:
    """An uncompressed PAX tar built from ``(kind, name, attrs)`` tuples.

    kind is ``file`` (attrs: data, mode, uid, gid, mtime), ``dir``, ``symlink`` (target),
    ``hardlink`` (target), ``fifo``, ``chardev`` (major, minor); attrs may give ``xattrs``.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, attrs in entries:
            info = tarfile.TarInfo(name)
            info.mode = attrs.get("mode", 0o755 if kind == "dir" else 0o644)
            info.uid = attrs.get("uid", 0)
            info.gid = attrs.get("gid", 0)
            info.mtime = attrs.get("mtime", 1_700_000_000)
            data = b""
            if kind == "file":
                data = attrs.get("data", b"")
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = attrs["target"]
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = attrs["target"]
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "chardev":
                info.type = tarfile.CHRTYPE
                info.devmajor = attrs.get("major", 1)
                info.devminor = attrs.get("minor", 3)
            else:
                raise ValueError(f"unknown tar entry kind {kind!r}")
            if "xattrs" in attrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in attrs["xattrs"].items()}
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return buf.getvalue()


def tree_snapshot(root: str) -> dict[str, tuple[Any, ...]]:
    """Relative path -> (type, mode, uid, gid, size, content-or-target) for every entry under *root*."""
    snap: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    extra: Any = f.read()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = st.st_rdev
            else:
                extra = None
            snap[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                         st.st_size if stat.S_ISREG(st.st_mode) else 0, extra)
    return snap


def mounts_under(path: str) -> list[str]:
    """Mount points at or below *path*, from /proc/self/mountinfo."""
    real = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == real or point.startswith(real + "/"):
                found.append(point)
    return found


def _tar_names(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


BASE_TAR_ENTRIES: list[TarEntry] = [
    ("dir", "etc", {"mode": 0o755}),
    ("file", "etc/hello.txt", {"data": b"hello\n"}),
    ("hardlink", "etc/hello-hard", {"target": "etc/hello.txt"}),
    ("symlink", "link-to-hello", {"target": "etc/hello.txt"}),
    ("dir", "dir1", {"mode": 0o750}),
    ("file", "dir1/a.txt", {"data": b"aaa", "uid": 1000, "gid": 1001}),
    ("file", "dir1/b.txt", {"data": b"bbbb", "mode": 0o600}),
    ("file", "dir1/suid", {"data": b"#!", "mode": 0o4755}),
    ("dir", "opaque-dir", {}),
    ("file", "opaque-dir/old.txt", {"data": b"old"}),
    ("fifo", "pipe", {}),
]

CHILD_TAR_ENTRIES: list[TarEntry] = [
    ("dir", "dir1", {"mode": 0o750}),
    ("file", "dir1/.wh.a.txt", {}),
    ("dir", "opaque-dir", {}),
    ("file", "opaque-dir/.wh..wh..opq", {}),
    ("file", "opaque-dir/new.txt", {"data": b"new\n"}),
    ("file", "newfile.txt", {"data": b"fresh\n"}),
]


# ---------------------------------------------------------------- the suite


class DriverConformance:
    """Subclass with ``driver_name = "..."`` (and a ``Test`` prefix) to run the suite on a driver."""

    #: Entry-point name of the driver under test.
    driver_name: str = ""
    #: Storage options handed to the driver.
    driver_options: tuple[str, ...] = ()
    #: Length of the deep-chain scenario (containers/storage 1.62 allows 500 overlay lowers).
    deep_chain_length: int = 32
    #: Whether the driver is expected to support ID-mapped creation (chown at create time).
    supports_id_maps: bool = True

    # -- fixtures (override graph_root for drivers that need a special filesystem)

    @pytest.fixture
    def graph_root(self, tmp_path: Any) -> Iterator[str]:
        root = tmp_path / "graph"
        root.mkdir(mode=0o700)
        yield str(root)

    @pytest.fixture
    def driver(self, graph_root: str, tmp_path: Any) -> Iterator[DriverProxy]:
        if not self.driver_name:
            pytest.fail("DriverConformance subclasses must set driver_name")
        run_root = tmp_path / "run"
        run_root.mkdir(mode=0o700)
        config = DriverConfig(
            name=self.driver_name,
            home=os.path.join(graph_root, self.driver_name),
            run_root=str(run_root),
            options=tuple(self.driver_options),
        )
        proxy = build_driver(config, new_driver(config))
        try:
            yield proxy
        finally:
            proxy.cleanup()
            leaked = mounts_under(graph_root)
            assert not leaked, f"driver {self.driver_name} left mounts behind after cleanup: {leaked}"

    # -- helpers

    @staticmethod
    def _apply(driver: DriverProxy, id: str, parent: str | None, entries: list[TarEntry]) -> int:
        return driver.apply_diff(id, parent, ApplyDiffOpts(diff=io.BytesIO(make_tar(entries))))

    @staticmethod
    def _read(driver: DriverProxy, id: str, rel: str) -> bytes:
        root = driver.get(id, MountOpts(options=("ro",)))
        try:
            with open(os.path.join(root, rel), "rb") as f:
                return f.read()
        finally:
            driver.put(id)

    @staticmethod
    def _snapshot(driver: DriverProxy, id: str) -> dict[str, tuple[Any, ...]]:
        root = driver.get(id, MountOpts(options=("ro",)))
        try:
            return tree_snapshot(root)
        finally:
            driver.put(id)

    # -- life cycle

    def test_create_base_is_empty(self, driver: DriverProxy) -> None:
        driver.create("base", None)
        assert driver.exists("base")
        root = driver.get("base", MountOpts())
        try:
            assert os.path.isdir(root)
            assert os.listdir(root) == []
        finally:
            driver.put("base")

    def test_create_read_only_layer(self, driver: DriverProxy) -> None:
        driver.create("ro-layer", None, read_write=False)
        assert driver.exists("ro-layer")

    def test_unknown_layer_does_not_exist(self, driver: DriverProxy) -> None:
        assert not driver.exists("no-such-layer")

    def test_get_unknown_layer_fails(self, driver: DriverProxy) -> None:
        with pytest.raises((LaminaError, OSError)):
            driver.get("no-such-layer", MountOpts())

    def test_create_duplicate_fails(self, driver: DriverProxy) -> None:
        driver.create("dup", None)
        with pytest.raises((LaminaError, OSError)):
            driver.create("dup", None)

    def test_create_with_unknown_parent_fails(self, driver: DriverProxy) -> None:
        with pytest.raises((LaminaError, OSError)):
            driver.create("orphan", "no-such-parent")
        assert not driver.exists("orphan")

    def test_remove(self, driver: DriverProxy) -> None:
        driver.create("gone", None)
        self._apply(driver, "gone", None, BASE_TAR_ENTRIES)
        driver.remove("gone")
        assert not driver.exists("gone")
        driver.remove("gone")  # removing twice is not an error

    def test_child_sees_parent_and_is_isolated(self, driver: DriverProxy) -> None:
        driver.create("p", None)
        self._apply(driver, "p", None, [("file", "shared.txt", {"data": b"from parent"})])
        driver.create("c", "p")
        assert self._read(driver, "c", "shared.txt") == b"from parent"
        root = driver.get("c", MountOpts())
        try:
            with open(os.path.join(root, "shared.txt"), "wb") as f:
                f.write(b"changed in child")
            with open(os.path.join(root, "only-child.txt"), "wb") as f:
                f.write(b"x")
        finally:
            driver.put("c")
        assert self._read(driver, "p", "shared.txt") == b"from parent"
        assert "only-child.txt" not in self._snapshot(driver, "p")
        assert self._read(driver, "c", "shared.txt") == b"changed in child"

    def test_get_put_twice(self, driver: DriverProxy) -> None:
        driver.create("twice", None)
        first = driver.get("twice", MountOpts())
        second = driver.get("twice", MountOpts())
        assert first == second
        driver.put("twice")
        assert os.path.isdir(second)
        driver.put("twice")

    def test_read_only_view_matches(self, driver: DriverProxy) -> None:
        driver.create("rov", None)
        self._apply(driver, "rov", None, BASE_TAR_ENTRIES)
        rw = self._snapshot(driver, "rov")
        root = driver.get("rov", MountOpts(options=("ro",)))
        try:
            assert tree_snapshot(root) == rw
        finally:
            driver.put("rov")

    def test_deep_chain(self, driver: DriverProxy) -> None:
        parent = None
        for i in range(self.deep_chain_length):
            layer = f"chain{i}"
            driver.create(layer, parent)
            self._apply(driver, layer, parent, [("file", f"f{i}", {"data": str(i).encode()})])
            parent = layer
        snap = self._snapshot(driver, parent or "")
        assert sorted(snap) == sorted(f"f{i}" for i in range(self.deep_chain_length))
        assert all(snap[f"f{i}"][5] == str(i).encode() for i in range(self.deep_chain_length))

    def test_status_and_metadata_shapes(self, driver: DriverProxy) -> None:
        driver.create("meta", None)
        status = driver.status()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in status)
        assert isinstance(driver.metadata("meta"), dict)
        assert isinstance(driver.additional_image_stores(), list)

    # -- content: apply, diff, changes, size

    def test_apply_base_layer(self, driver: DriverProxy) -> None:
        driver.create("base", None)
        size = self._apply(driver, "base", None, BASE_TAR_ENTRIES)
        assert size == len(b"hello\n") + 3 + 4 + 2 + 3
        snap = self._snapshot(driver, "base")
        assert snap["etc/hello.txt"][5] == b"hello\n"
        assert snap["link-to-hello"][0] == stat.S_IFLNK and snap["link-to-hello"][5] == "etc/hello.txt"
        assert snap["dir1/a.txt"][2:4] == (1000, 1001)
        assert snap["dir1/b.txt"][1] == 0o600
        assert snap["dir1/suid"][1] == 0o4755
        assert snap["dir1"][1] == 0o750
        assert snap["pipe"][0] == stat.S_IFIFO
        root = driver.get("base", MountOpts(options=("ro",)))
        try:
            a = os.lstat(os.path.join(root, "etc/hello.txt"))
            b = os.lstat(os.path.join(root, "etc/hello-hard"))
            assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev), "hardlink not preserved"
            assert a.st_mtime == 1_700_000_000
        finally:
            driver.put("base")

    def test_apply_child_whiteouts(self, driver: DriverProxy) -> None:
        driver.create("base", None)
        self._apply(driver, "base", None, BASE_TAR_ENTRIES)
        driver.create("child", "base")
        self._apply(driver, "child", "base", CHILD_TAR_ENTRIES)
        snap = self._snapshot(driver, "child")
        assert "dir1/a.txt" not in snap
        assert "dir1/b.txt" in snap
        assert "opaque-dir/old.txt" not in snap
        assert snap["opaque-dir/new.txt"][5] == b"new\n"
        assert snap["newfile.txt"][5] == b"fresh\n"
        assert not any(os.path.basename(p).startswith(".wh.") for p in snap), "whiteout files leaked into the tree"
        assert "dir1/a.txt" in self._snapshot(driver, "base")

    def test_changes_of_child(self, driver: DriverProxy) -> None:
        driver.create("base", None)
        self._apply(driver, "base", None, BASE_TAR_ENTRIES)
        driver.create("child", "base")
        self._apply(driver, "child", "base", CHILD_TAR_ENTRIES)
        changes = {(c.path, c.kind) for c in driver.changes("child", "base")}
        assert ("/newfile.txt", ChangeKind.ADD) in changes
        assert ("/opaque-dir/new.txt", ChangeKind.ADD) in changes
        assert ("/dir1/a.txt", ChangeKind.DELETE) in changes
        assert ("/dir1/b.txt", ChangeKind.MODIFY) not in changes
        assert ("/etc/hello.txt", ChangeKind.MODIFY) not in changes
        old_gone = ("/opaque-dir/old.txt", ChangeKind.DELETE) in changes or ("/opaque-dir", ChangeKind.DELETE) in changes
        assert old_gone

    def test_diff_size_of_child(self, driver: DriverProxy) -> None:
        driver.create("base", None)
        self._apply(driver, "base", None, BASE_TAR_ENTRIES)
        driver.create("child", "base")
        self._apply(driver, "child", "base", CHILD_TAR_ENTRIES)
        assert driver.diff_size("child", "base") == len(b"new\n") + len(b"fresh\n")

    def test_diff_of_base_lists_everything(self, driver: DriverProxy) -> None:
        driver.create("base", None)
        self._apply(driver, "base", None, BASE_TAR_ENTRIES)
        stream = driver.diff("base", None)
        try:
            data = stream.read()
        finally:
            stream.close()
        members = _tar_names(data)
        for name in ("etc/hello.txt", "link-to-hello", "dir1/a.txt", "pipe"):
            assert name in members, f"{name} missing from diff"
        assert members["dir1/a.txt"].uid == 1000

    def test_diff_apply_round_trip(self, driver: DriverProxy) -> None:
        driver.create("base", None)
        self._apply(driver, "base", None, BASE_TAR_ENTRIES)
        driver.create("child", "base")
        root = driver.get("child", MountOpts())
        try:
            os.unlink(os.path.join(root, "dir1/b.txt"))
            with open(os.path.join(root, "etc/hello.txt"), "wb") as f:
                f.write(b"rewritten\n")
            os.mkdir(os.path.join(root, "newdir"))
            os.symlink("../etc", os.path.join(root, "newdir/etc-link"))
            os.chown(os.path.join(root, "newdir"), 7, 8)
        finally:
            driver.put("child")
        stream = driver.diff("child", "base")
        try:
            data = stream.read()
        finally:
            stream.close()
        members = _tar_names(data)
        assert "dir1/.wh.b.txt" in members
        assert "link-to-hello" not in members, "unchanged file exported"
        driver.create("replay", "base")
        driver.apply_diff("replay", "base", ApplyDiffOpts(diff=io.BytesIO(data)))
        expected = self._snapshot(driver, "child")
        actual = self._snapshot(driver, "replay")
        assert actual == expected

    def test_writes_then_changes(self, driver: DriverProxy) -> None:
        driver.create("base", None)
        self._apply(driver, "base", None, BASE_TAR_ENTRIES)
        driver.create("rw", "base")
        root = driver.get("rw", MountOpts())
        try:
            with open(os.path.join(root, "added"), "wb") as f:
                f.write(b"+")
            os.chmod(os.path.join(root, "dir1/b.txt"), 0o640)
            os.unlink(os.path.join(root, "link-to-hello"))
        finally:
            driver.put("rw")
        changes = set(driver.changes("rw", "base"))
        assert Change("/added", ChangeKind.ADD) in changes
        assert Change("/dir1/b.txt", ChangeKind.MODIFY) in changes
        assert Change("/link-to-hello", ChangeKind.DELETE) in changes
        assert not any(c.path.startswith("/etc") for c in changes)

    # -- ID maps

    def test_create_with_id_maps_owns_root(self, driver: DriverProxy) -> None:
        if not self.supports_id_maps:
            pytest.skip(f"{self.driver_name} declares no ID-map support")
        maps = IDMappings((IDMap(0, 100000, 65536),), (IDMap(0, 200000, 65536),))
        driver.create("mapped", None, CreateOpts(id_mappings=maps))
        root = driver.get("mapped", MountOpts())
        try:
            st = os.stat(root)
            assert (st.st_uid, st.st_gid) == (100000, 200000)
        finally:
            driver.put("mapped")

    def test_update_layer_id_map(self, driver: DriverProxy) -> None:
        if not self.supports_id_maps:
            pytest.skip(f"{self.driver_name} declares no ID-map support")
        driver.create("remap", None)
        self._apply(driver, "remap", None, BASE_TAR_ENTRIES)
        to_host = IDMappings((IDMap(0, 100000, 65536),), (IDMap(0, 100000, 65536),))
        driver.update_layer_id_map("remap", IDMappings(), to_host)
        snap = self._snapshot(driver, "remap")
        assert snap["etc/hello.txt"][2:4] == (100000, 100000)
        assert snap["dir1/a.txt"][2:4] == (101000, 101001)
        assert snap["dir1/suid"][1] == 0o4755, "set-id bit lost by re-owning"

    def test_create_from_template_copies_the_tree(self, driver: DriverProxy) -> None:
        driver.create("tbase", None)
        self._apply(driver, "tbase", None, BASE_TAR_ENTRIES)
        driver.create("tchild", "tbase")
        self._apply(driver, "tchild", "tbase", CHILD_TAR_ENTRIES)
        driver.create_from_template("tcopy", "tchild", IDMappings(), "tbase", IDMappings(), CreateOpts(),
                                    read_write=False)
        assert self._snapshot(driver, "tcopy") == self._snapshot(driver, "tchild")
        self._apply(driver, "tchild", "tbase", [("file", "added-later.txt", {"data": b"x"})])
        assert "added-later.txt" not in self._snapshot(driver, "tcopy"), "the copy shares the template's files"
        driver.remove("tcopy")
        assert not driver.exists("tcopy") and driver.exists("tchild")

    # -- optional hooks (answered by the driver or by the core's fallbacks)

    def test_read_write_disk_usage(self, driver: DriverProxy) -> None:
        driver.create("du", None)
        self._apply(driver, "du", None, BASE_TAR_ENTRIES)
        size, inodes = driver.read_write_disk_usage("du")
        assert size >= len(b"hello\n") + 3 + 4 + 2 + 3
        assert inodes >= 9

    def test_supports_shifting_is_a_bool(self, driver: DriverProxy) -> None:
        assert isinstance(driver.supports_shifting(), bool)

    def test_diff_getter_reads_the_layer_own_files(self, driver: DriverProxy) -> None:
        driver.create("dg", None)
        self._apply(driver, "dg", None, BASE_TAR_ENTRIES)
        getter = driver.diff_getter("dg")
        if getter is None:
            return  # the core mounts the layer instead; nothing more to check
        opened = getter("etc/hello.txt")
        try:
            assert opened.read() == b"hello\n"
        finally:
            opened.close()
        closer = getattr(getter, "close", None)
        if closer is not None:
            closer()
