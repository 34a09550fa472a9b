"""btrfs: the conformance suite on a loop-mounted btrfs, plus what only btrfs has (subvolumes,
snapshots, nested subvolumes, qgroups, the private home mount) and a store shared with Go."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from lamina.drivers import new_driver, support_reason
from lamina.errors import DriverNotSupported, DuplicateID, InvalidOption, LayerUnknown
from lamina.graphdriver import DriverProxy, build_driver
from lamina.store import Store
from lamina.testing import BASE_TAR_ENTRIES, CHILD_TAR_ENTRIES, DriverConformance, make_tar, mounts_under
from lamina.types import CreateOpts, DriverConfig, IDMap, IDMappings, MountOpts
from lamina_btrfs import Driver, parse_size

GO = shutil.which("containers-storage")
needs_go = pytest.mark.skipif(GO is None, reason="Go containers-storage (Debian package) not installed")
MiB = 1 << 20


# ---------------------------------------------------------------- helpers


def run(*cmd: str) -> str:
    """Run *cmd*; AssertionError with its stderr if it fails. Returns stdout."""
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace")


def _driver(graph_root: str, *options: str, run_root: str | None = None) -> DriverProxy:
    config = DriverConfig("btrfs", os.path.join(graph_root, "btrfs"), run_root or os.path.join(graph_root, "run"),
                          tuple(options))
    return build_driver(config, new_driver(config))


@pytest.fixture
def drivers() -> Iterator[Callable[..., DriverProxy]]:
    """``drivers(graph_root, *options)`` builds a driver; every one is cleaned up afterwards."""
    made: list[DriverProxy] = []

    def make(graph_root: str, *options: str) -> DriverProxy:
        made.append(_driver(graph_root, *options))
        return made[-1]

    yield make
    for proxy in made:
        proxy.cleanup()


def subvolume_show(path: str) -> dict[str, str]:
    """``btrfs subvolume show`` as a dict of its ``Key: value`` lines."""
    fields = {}
    for line in run("btrfs", "subvolume", "show", path).splitlines()[1:]:
        key, sep, value = line.strip().partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def subvolume_paths(mount: str) -> list[str]:
    """Paths (relative to the filesystem top) of every subvolume on the filesystem at *mount*."""
    return [line.split(" path ", 1)[1] for line in run("btrfs", "subvolume", "list", mount).splitlines() if " path " in line]


def write_file(path: str, size: int, chunk: int = 4 * MiB) -> None:
    block = os.urandom(min(chunk, size)) if size else b""
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[:left])
            left -= len(block[:left])
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- the conformance suite


class TestBtrfsConformance(DriverConformance):
    driver_name = "btrfs"
    deep_chain_length = 40

    @pytest.fixture
    def graph_root(self, btrfs_mount: str) -> Iterator[str]:
        yield tempfile.mkdtemp(prefix="graph-", dir=btrfs_mount)


# ---------------------------------------------------------------- layout


def test_layers_are_subvolumes_under_the_go_layout(btrfs_mount: str, drivers: Callable[..., DriverProxy]) -> None:
    graph = os.path.join(btrfs_mount, "g")
    drv = drivers(graph)
    drv.create("L1", None)
    path = drv.get("L1", MountOpts())
    assert path == os.path.join(graph, "btrfs", "subvolumes", "L1")
    st = os.lstat(path)
    assert st.st_ino == 256, "a layer root must be a subvolume root (inode 256)"
    assert stat.S_IMODE(st.st_mode) == 0o555
    assert subvolume_show(path)["Name"] == "L1"
    assert subvolume_show(path)["Parent UUID"] == "-"
    assert os.path.realpath(drv.home) in mounts_under(graph), "the driver home is not bind-mounted onto itself"
    drv.put("L1")
    assert drv.metadata("L1") == {}


def test_home_mount_is_private_and_removed_by_cleanup(btrfs_mount: str) -> None:
    graph = os.path.join(btrfs_mount, "g")
    drv = _driver(graph)
    home = os.path.realpath(drv.home)
    with open("/proc/self/mountinfo") as f:
        lines = [line.split() for line in f if line.split()[4] == home]
    assert len(lines) == 1
    optional = lines[0][6:lines[0].index("-")]
    assert not any(o.startswith(("shared:", "master:")) for o in optional), f"home mount propagates: {optional}"
    second = _driver(graph)  # a second driver on the same home must not stack another bind mount
    assert mounts_under(graph) == [home]
    drv.cleanup()
    assert mounts_under(graph) == []
    second.cleanup()  # already unmounted: not an error


def test_cleanup_while_the_home_is_busy_detaches_it(btrfs_mount: str) -> None:
    graph = os.path.join(btrfs_mount, "g")
    drv = _driver(graph)
    drv.create("busy", None)
    fd = os.open(drv.get("busy", MountOpts()), os.O_RDONLY | os.O_DIRECTORY)
    try:
        drv.cleanup()  # a plain unmount gets EBUSY; the lazy one must follow
        assert mounts_under(graph) == []
    finally:
        os.close(fd)


def test_child_is_a_snapshot_sharing_extents(btrfs_mount: str, drivers: Callable[..., DriverProxy]) -> None:
    drv = drivers(os.path.join(btrfs_mount, "g"))
    drv.create("parent", None)
    root = drv.get("parent", MountOpts())
    write_file(os.path.join(root, "blob"), 32 * MiB)
    drv.put("parent")
    drv.create("child", "parent")
    child = drv.get("child", MountOpts())
    assert os.lstat(child).st_ino == 256
    assert subvolume_show(child)["Parent UUID"] == subvolume_show(root)["UUID"]
    os.sync()
    du = run("btrfs", "filesystem", "du", "-s", "--raw", child).splitlines()[1].split()
    total, exclusive, shared = int(du[0]), int(du[1]), int(du[2])
    assert total >= 32 * MiB and shared >= 32 * MiB and exclusive == 0, f"child does not share extents: {du}"
    with open(os.path.join(child, "blob"), "r+b") as f:  # copy-on-write: the parent keeps its bytes
        before = open(os.path.join(root, "blob"), "rb").read(4)
        f.write(b"\xff\xfe\xfd\xfc")
    assert open(os.path.join(root, "blob"), "rb").read(4) == before


def test_nested_subvolumes_are_removed_with_the_layer(btrfs_mount: str, drivers: Callable[..., DriverProxy]) -> None:
    drv = drivers(os.path.join(btrfs_mount, "g"))
    drv.create("base", None)
    drv.create("ctr", "base")
    root = drv.get("ctr", MountOpts())
    os.makedirs(os.path.join(root, "var/lib"))
    run("btrfs", "subvolume", "create", os.path.join(root, "var/lib/inner"))
    run("btrfs", "subvolume", "create", os.path.join(root, "var/lib/inner/deeper"))
    write_file(os.path.join(root, "var/lib/inner/deeper/data"), MiB)
    run("btrfs", "subvolume", "snapshot", "-r", os.path.join(root, "var/lib/inner"), os.path.join(root, "ro-snap"))
    run("btrfs", "property", "set", os.path.join(root, "var/lib/inner"), "ro", "true")  # holds "deeper"
    drv.put("ctr")
    assert len([p for p in subvolume_paths(btrfs_mount) if "/ctr/" in p]) == 3
    drv.remove("ctr")
    assert not drv.exists("ctr")
    assert not os.path.lexists(root)
    left = subvolume_paths(btrfs_mount)
    assert [p for p in left if "ctr" in p] == [], left
    assert any(p.endswith("subvolumes/base") for p in left)


def test_remove_odd_leftovers(btrfs_mount: str, drivers: Callable[..., DriverProxy]) -> None:
    drv = drivers(os.path.join(btrfs_mount, "g"))
    drv.remove("never-created")
    plain = os.path.join(drv.home, "subvolumes", "plain")
    os.makedirs(os.path.join(plain, "sub"))
    os.chmod(os.path.join(plain, "sub"), 0o555)
    assert drv.exists("plain")
    drv.remove("plain")
    assert not os.path.lexists(plain)


def test_create_errors(btrfs_mount: str, drivers: Callable[..., DriverProxy]) -> None:
    drv = drivers(os.path.join(btrfs_mount, "g"))
    drv.create("one", None)
    with pytest.raises(DuplicateID):
        drv.create("one", None)
    with pytest.raises(LayerUnknown):
        drv.create("two", "missing")
    with pytest.raises(LayerUnknown):
        drv.get("missing", MountOpts())
    with pytest.raises(InvalidOption, match="unknown option foo"):
        drv.create("three", None, CreateOpts(storage_opt={"foo": "1"}))
    with pytest.raises(InvalidOption, match="invalid size"):
        drv.create("three", None, CreateOpts(storage_opt={"size": "lots"}))
    assert not drv.exists("two") and not drv.exists("three")
    with pytest.raises(InvalidOption, match="does not support mount options"):
        drv.get("one", MountOpts(options=("nodev",)))
    assert drv.get("one", MountOpts(options=("ro",))) == os.path.join(drv.home, "subvolumes", "one")


def test_base_layer_root_owned_by_mapped_root(btrfs_mount: str, drivers: Callable[..., DriverProxy]) -> None:
    drv = drivers(os.path.join(btrfs_mount, "g"))
    maps = IDMappings((IDMap(0, 231072, 65536),), (IDMap(0, 231073, 65536),))
    drv.create("mapped", None, CreateOpts(id_mappings=maps))
    st = os.stat(drv.get("mapped", MountOpts()))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (231072, 231073, 0o555)


@pytest.mark.parametrize(
    "option, message",
    [
        ("btrfs.foo=1", "unknown option btrfs.foo"),
        ("size=1G", "unknown option size"),
        ("btrfs.mountopt=nodev", "btrfs driver does not support mount options"),
        ("btrfs.min_space", "unable to parse key/value option"),
        ("btrfs.min_space=huge", "invalid size"),
        ("btrfs.size=0", "invalid storage size"),
    ],
)
def test_bad_options_are_clear_errors_and_leave_nothing(btrfs_mount: str, option: str, message: str) -> None:
    graph = os.path.join(btrfs_mount, "g")
    with pytest.raises(InvalidOption, match=message):
        _driver(graph, option)
    assert mounts_under(graph) == []


def test_parse_size_like_go() -> None:
    assert parse_size("512") == 512
    assert parse_size("100m") == 100 * MiB
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("2 kb") == 2048
    with pytest.raises(InvalidOption):
        parse_size("-1")


def test_status_reports_versions(btrfs_mount: str, drivers: Callable[..., DriverProxy]) -> None:
    status = dict(drivers(os.path.join(btrfs_mount, "g")).status())
    assert set(status) == {"Build Version", "Library Version"}
    assert status["Build Version"].startswith("lamina-btrfs ")
    assert os.uname().release in status["Library Version"]


# ---------------------------------------------------------------- host checks


def test_check_host_refuses_other_filesystems(tmp_path: Path) -> None:
    from lamina_btrfs import host

    if host.fs_magic(str(tmp_path)) == host.BTRFS_SUPER_MAGIC:
        pytest.skip(f"{tmp_path} is itself on btrfs")
    graph = str(tmp_path / "not" / "yet" / "there")
    with pytest.raises(DriverNotSupported) as caught:
        Driver.check_host(graph)
    assert caught.value.why.startswith(f"{graph} is not on a btrfs filesystem (found ")
    assert support_reason("btrfs", graph) == caught.value.why
    with pytest.raises(DriverNotSupported, match="is not on a btrfs filesystem"):
        Driver(DriverConfig("btrfs", os.path.join(graph, "btrfs"), str(tmp_path / "run")))
    assert not os.path.exists(graph)


def test_check_host_accepts_btrfs_and_lamina_drivers_says_so(btrfs_mount: str, tmp_path: Path) -> None:
    graph = os.path.join(btrfs_mount, "not-created-yet")
    Driver.check_host(graph)
    assert support_reason("btrfs", graph) is None
    cli = [sys.executable, "-m", "lamina", "--run", str(tmp_path / "run")]
    on_btrfs = run(*cli, "--graph", graph, "drivers")
    assert any(line.split()[:1] == ["btrfs"] and " yes" in line for line in on_btrfs.splitlines()), on_btrfs
    elsewhere = run(*cli, "--graph", str(tmp_path / "g"), "drivers")
    assert f"{tmp_path / 'g'} is not on a btrfs filesystem (found " in elsewhere, elsewhere


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_without_cap_sys_admin_the_driver_is_not_supported(btrfs_mount: str) -> None:
    graph = os.path.join(btrfs_mount, "g")
    code = ("import sys; from lamina.errors import DriverNotSupported; from lamina_btrfs import Driver; "
            "from lamina.types import DriverConfig\n"
            "try:\n    Driver(DriverConfig('btrfs', sys.argv[1], sys.argv[1] + '-run'))\n"
            "except DriverNotSupported as e:\n    print(e.why)\n")
    out = run("setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", sys.executable, "-c", code,
              os.path.join(graph, "btrfs"))
    assert "cannot bind-mount" in out and "needs root" in out, out
    assert mounts_under(graph) == []


# ---------------------------------------------------------------- quotas


def _quota_driver(make: Callable[..., DriverProxy], graph: str, *options: str) -> DriverProxy:
    try:
        return make(graph, *options)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
            pytest.skip(f"btrfs qgroups are not supported here: {exc}")
        raise


def _fill(path: str, size: int) -> None:
    write_file(path, size, chunk=MiB)


def test_size_option_limits_writable_layers(btrfs_mount: str, drivers: Callable[..., DriverProxy]) -> None:
    graph = os.path.join(btrfs_mount, "g")
    drv = _quota_driver(drivers, graph, "btrfs.size=16M")
    drv.create("limited", None)
    root = drv.get("limited", MountOpts())
    _fill(os.path.join(root, "fits"), 8 * MiB)
    with pytest.raises(OSError) as caught:
        _fill(os.path.join(root, "too-big"), 32 * MiB)
    assert caught.value.errno in (errno.EDQUOT, errno.ENOSPC)
    drv.put("limited")
    with open(os.path.join(graph, "btrfs", "quotas", "limited")) as f:
        assert f.read() == str(16 * MiB)  # the file Go's driver writes and re-applies on Get
    drv.create("image-layer", None, read_write=False)  # btrfs.size is for writable layers only
    _fill(os.path.join(drv.get("image-layer", MountOpts()), "big"), 32 * MiB)
    drv.remove("limited")
    assert not os.path.exists(os.path.join(graph, "btrfs", "quotas", "limited"))


def test_per_layer_size_and_min_space(btrfs_mount: str, drivers: Callable[..., DriverProxy]) -> None:
    graph = os.path.join(btrfs_mount, "g")
    drv = _quota_driver(drivers, graph, "btrfs.min_space=8M")
    with pytest.raises(InvalidOption, match="storage size cannot be less than 8.389MB"):
        drv.create("tiny", None, CreateOpts(storage_opt={"size": "4M"}))
    assert not drv.exists("tiny")
    drv.create("base", None)
    _fill(os.path.join(drv.get("base", MountOpts()), "blob"), 4 * MiB)
    drv.create("sized", "base", CreateOpts(storage_opt={"size": "12M"}))
    root = drv.get("sized", MountOpts())
    _fill(os.path.join(root, "fits"), 4 * MiB)
    with pytest.raises(OSError) as caught:
        _fill(os.path.join(root, "too-big"), 16 * MiB)
    assert caught.value.errno in (errno.EDQUOT, errno.ENOSPC)
    drv.create("free", "base")  # no size: no limit
    _fill(os.path.join(drv.get("free", MountOpts()), "big"), 32 * MiB)


def test_quota_file_is_reapplied_on_get(btrfs_mount: str, drivers: Callable[..., DriverProxy]) -> None:
    graph = os.path.join(btrfs_mount, "g")
    drv = _quota_driver(drivers, graph, "btrfs.min_space=1M")
    drv.create("l", None)
    os.makedirs(os.path.join(graph, "btrfs", "quotas"), exist_ok=True)
    with open(os.path.join(graph, "btrfs", "quotas", "l"), "w") as f:
        f.write(str(4 * MiB))
    root = drv.get("l", MountOpts())
    assert "4.00MiB" in run("btrfs", "qgroup", "show", "-r", root)
    with pytest.raises(OSError):
        _fill(os.path.join(root, "too-big"), 16 * MiB)


# ---------------------------------------------------------------- sharing a store with the Go tool


class Shared:
    """A graph root on btrfs used by lamina Stores and the Go tool; shut down by both at the end."""

    def __init__(self, graph: str, run_root: str) -> None:
        self.graph, self.run_root = graph, run_root
        self.stores: list[Store] = []

    def go(self, *args: str) -> bytes:
        proc = subprocess.run([GO or "containers-storage", "--graph", self.graph, "--run", self.run_root,
                               "--storage-driver", "btrfs", *args], capture_output=True, timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"containers-storage {' '.join(args)}: {proc.stderr.decode(errors='replace')}")
        return proc.stdout

    def go_json(self, command: str, *args: str) -> Any:
        return json.loads(self.go(command, "-j", *args))  # flags go before the arguments

    def store(self) -> Store:
        self.stores.append(Store(self.graph, self.run_root, driver_name="btrfs"))
        return self.stores[-1]

    def shutdown(self) -> None:
        self.go("shutdown")
        for store in self.stores:
            store.shutdown()


@pytest.fixture
def shared(btrfs_mount: str, tmp_path: Path) -> Iterator[Shared]:
    sh = Shared(os.path.join(btrfs_mount, "graph"), str(tmp_path / "run"))
    try:
        yield sh
    finally:
        sh.shutdown()
        assert mounts_under(sh.graph) == [], "the btrfs home is still mounted after both shut down"


def _members(tar_bytes: bytes) -> dict[str, tuple[Any, ...]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isreg() else None  # type: ignore[union-attr]
            out[m.name.rstrip("/")] = (m.type, m.mode, m.uid, m.gid, m.linkname, data)
    return out


def _layer_json(store: Store) -> list[dict[str, Any]]:
    return [layer.to_json() for layer in store.layers()]


@needs_go
def test_lamina_reads_a_store_go_wrote_on_btrfs(shared: Shared, tmp_path: Path) -> None:
    base_tar, child_tar = make_tar(BASE_TAR_ENTRIES), make_tar(CHILD_TAR_ENTRIES)
    (tmp_path / "base.tar").write_bytes(base_tar)
    (tmp_path / "child.tar").write_bytes(child_tar)
    base = shared.go("create-layer", "-n", "go-base").split()[0].decode()
    shared.go("applydiff", "-f", str(tmp_path / "base.tar"), base)
    child = shared.go("create-layer", "-n", "go-child", base).split()[0].decode()
    shared.go("applydiff", "-f", str(tmp_path / "child.tar"), child)
    image = shared.go("create-image", "-n", "example.com/go:1", child).split()[0].decode()
    edited = shared.go("create-layer", "-n", "go-edited", child).split()[0].decode()
    root = shared.go("mount", edited).decode().strip()
    with open(os.path.join(root, "added.txt"), "wb") as f:
        f.write(b"added in place\n")
    os.unlink(os.path.join(root, "etc/hello.txt"))
    shared.go("unmount", edited)

    store = shared.store()
    assert _layer_json(store) == shared.go_json("layers")
    assert [i.to_json() for i in store.images()] == shared.go_json("images")
    assert store.image("example.com/go:1").id == image
    for layer in (base, child):  # applied layers: rebuilt from tar-split, byte for byte
        with store.diff(None, layer, compression=0) as stream:
            ours = stream.read()
        assert ours == shared.go("diff", "-u", layer), f"diff of {layer} differs from Go's"
    assert ours == child_tar
    with store.diff(None, edited, compression=0) as stream:  # no tar-split: the naive diff on both sides
        ours = stream.read()
    assert _members(ours) == _members(shared.go("diff", "-u", edited))
    assert set(_members(ours)) == {"added.txt", "etc", "etc/.wh.hello.txt"}
    go_changes = sorted((c["Path"], c["Kind"]) for c in shared.go_json("changes", edited))
    assert sorted((c.path, int(c.kind)) for c in store.changes(None, edited)) == go_changes
    with store.mounted_layer(edited) as mounted:
        assert mounted == root
        assert open(os.path.join(mounted, "added.txt"), "rb").read() == b"added in place\n"
    subvolumes = os.path.join(shared.graph, "btrfs", "subvolumes")
    assert subvolume_show(os.path.join(subvolumes, edited))["Parent UUID"] == subvolume_show(
        os.path.join(subvolumes, child))["UUID"]
    store.delete_layer(edited)  # lamina destroys a subvolume Go made
    assert edited not in {l["id"] for l in shared.go_json("layers")}
    assert not os.path.exists(os.path.join(subvolumes, edited))


@needs_go
def test_go_reads_a_store_lamina_wrote_on_btrfs(shared: Shared, tmp_path: Path) -> None:
    base_tar, child_tar = make_tar(BASE_TAR_ENTRIES), make_tar(CHILD_TAR_ENTRIES)
    store = shared.store()
    base = store.create_layer(names=["lamina-base"], diff=io.BytesIO(base_tar))
    child = store.create_layer(parent=base.id, names=["lamina-child"], diff=io.BytesIO(child_tar))
    image = store.create_image(top_layer=child.id, names=["example.com/lamina:1"])
    ctr = store.create_container(image=image.id, names=["lamina-ctr"])
    with store.mounted_layer(ctr.id) as root:
        with open(os.path.join(root, "from-container"), "wb") as f:
            f.write(b"ctr\n")

    assert shared.go_json("layers") == _layer_json(store)
    assert shared.go_json("images") == [i.to_json() for i in store.images()]
    assert shared.go_json("containers") == [c.to_json() for c in store.containers()]
    for layer, tar in ((base.id, base_tar), (child.id, child_tar)):
        with store.diff(None, layer, compression=0) as stream:
            ours = stream.read()
        assert shared.go("diff", "-u", layer) == ours == tar
    go_changes = sorted((c["Path"], c["Kind"]) for c in shared.go_json("changes", ctr.layer))
    assert go_changes == [("/from-container", 1)]
    assert sorted((c.path, int(c.kind)) for c in store.changes(None, ctr.layer)) == go_changes
    go_root = shared.go("mount", "lamina-ctr").decode().strip()
    assert go_root == os.path.join(shared.graph, "btrfs", "subvolumes", ctr.layer)
    assert open(os.path.join(go_root, "from-container"), "rb").read() == b"ctr\n"
    shared.go("unmount", "lamina-ctr")

    # Go snapshots a subvolume lamina made, and lamina reads what Go applied there.
    extra_tar = make_tar([("file", "go-was-here", {"data": b"go\n"})])
    (tmp_path / "extra.tar").write_bytes(extra_tar)
    go_layer = shared.go("create-layer", "-n", "go-on-lamina", child.id).split()[0].decode()
    shared.go("applydiff", "-f", str(tmp_path / "extra.tar"), go_layer)
    subvolumes = os.path.join(shared.graph, "btrfs", "subvolumes")
    assert subvolume_show(os.path.join(subvolumes, go_layer))["Parent UUID"] == subvolume_show(
        os.path.join(subvolumes, child.id))["UUID"]
    with store.diff(None, go_layer, compression=0) as stream:
        assert stream.read() == extra_tar
    with store.mounted_layer(go_layer) as root:
        assert open(os.path.join(root, "newfile.txt"), "rb").read() == b"fresh\n"
        assert not os.path.exists(os.path.join(root, "dir1/a.txt"))
    shared.go("delete-layer", go_layer)  # Go destroys a subvolume on a layer chain lamina made
    assert go_layer not in {l.id for l in store.layers()}
    assert not os.path.exists(os.path.join(subvolumes, go_layer))
