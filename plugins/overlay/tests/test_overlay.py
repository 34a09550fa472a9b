"""overlay: layout, mounting, native diffs, probes and options, checked against containers/storage's facts."""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import stat
import subprocess
import tarfile

import pytest

from lamina.errors import DriverNotSupported, DuplicateID, InvalidOption, LayerUnknown
from lamina.testing import BASE_TAR_ENTRIES, CHILD_TAR_ENTRIES, make_tar, tree_snapshot
from lamina.types import ApplyDiffOpts, Change, ChangeKind, CreateOpts, IDMap, IDMappings, MountOpts

import lamina_overlay
from lamina_overlay import _sys, format_mount_label, probes

from .conftest import overlay_mounts_under

LINK_RE = re.compile(r"^[A-Z2-7]{26}$")
RO = MountOpts(options=("ro",))


def apply(drv, id, parent, entries):
    return drv.apply_diff(id, parent, ApplyDiffOpts(diff=io.BytesIO(make_tar(entries))))


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def home_of(drv):
    return drv.config.home


def base_and_child(drv):
    drv.create("L1", None)
    apply(drv, "L1", None, BASE_TAR_ENTRIES)
    drv.create("L2", "L1")
    apply(drv, "L2", "L1", CHILD_TAR_ENTRIES)


def mountinfo_line(path):
    return next(m for m in _sys.mountinfo() if m.mount_point == os.path.realpath(path))


# ---------------------------------------------------------------- layout


def test_layout_matches_containers_storage(make_driver, tmp_path):
    drv = make_driver()
    home = home_of(drv)
    drv.create("L1", None)
    drv.create("L2", "L1")
    drv.create("L3", "L2", read_write=False)
    assert mode_of(home) == 0o700
    assert mode_of(f"{home}/l") == 0o755
    assert open(f"{home}/.has-mount-program").read() == "false"
    assert mode_of(f"{home}/.has-mount-program") == 0o600
    links = {}
    for id in ("L1", "L2", "L3"):
        d = f"{home}/{id}"
        assert mode_of(d) == 0o700
        assert mode_of(f"{d}/diff") == 0o555
        assert mode_of(f"{d}/work") == 0o700 and mode_of(f"{d}/merged") == 0o700
        link = open(f"{d}/link").read()
        assert LINK_RE.match(link), link
        assert mode_of(f"{d}/link") == 0o644
        assert os.readlink(f"{home}/l/{link}") == f"../{id}/diff"
        links[id] = link
    assert os.path.isdir(f"{home}/L1/empty") and mode_of(f"{home}/L1/empty") == 0o700
    assert not os.path.exists(f"{home}/L1/lower")
    assert not os.path.exists(f"{home}/L2/empty")
    assert open(f"{home}/L2/lower").read() == f"l/{links['L1']}"
    assert open(f"{home}/L3/lower").read() == f"l/{links['L2']}:l/{links['L1']}"
    assert mode_of(f"{home}/L3/lower") == 0o644
    cache = sorted(os.listdir(tmp_path / "r" / "overlay"))
    assert cache == ["metacopy()-false", "native-diff()-true", "overlay-true"]
    meta = drv.metadata("L3")
    assert meta["UpperDir"] == f"{home}/L3/diff" and meta["WorkDir"] == f"{home}/L3/work"
    assert meta["LowerDir"] == f"{home}/L2/diff:{home}/L1/diff"
    assert "LowerDir" not in drv.metadata("L1")


def test_status_pairs(make_driver):
    drv = make_driver()
    assert drv.status() == [("Backing Filesystem", probes.backing_fs_name(home_of(drv))[1]),
                            ("Supports d_type", "true"), ("Native Overlay Diff", "true"),
                            ("Using metacopy", "false")]


def test_home_is_bind_mounted_private_until_cleanup(make_driver):
    drv = make_driver()
    home = home_of(drv)
    info = mountinfo_line(home)
    assert info.root.endswith(os.path.realpath(home)[1:]) or info.root == os.path.realpath(home)
    with open("/proc/self/mountinfo") as f:
        line = next(l for l in f if l.split()[4] == os.path.realpath(home))
    assert "shared:" not in line, "home must have private propagation"
    drv.cleanup()
    assert not _sys.is_mountpoint(home)


def test_skip_mount_home(make_driver):
    drv = make_driver("overlay.skip_mount_home=true")
    assert not _sys.is_mountpoint(home_of(drv))
    drv.create("a", None)
    drv.get("a", MountOpts())
    drv.put("a")


def test_duplicate_and_unknown(make_driver):
    drv = make_driver()
    drv.create("a", None)
    with pytest.raises(DuplicateID):
        drv.create("a", None)
    with pytest.raises(LayerUnknown):
        drv.create("b", "nope")
    assert not os.path.exists(f"{home_of(drv)}/b")
    for bad in ("", "..", "a/b", "l"):
        with pytest.raises(LayerUnknown):
            drv.get(bad, MountOpts())


def test_remove_deletes_link_and_mount(make_driver):
    drv = make_driver()
    drv.create("a", None)
    link = open(f"{home_of(drv)}/a/link").read()
    drv.get("a", MountOpts())
    drv.remove("a")  # removing a mounted layer unmounts it (Go's EnsureRemoveAll)
    assert not os.path.lexists(f"{home_of(drv)}/l/{link}")
    assert not os.path.exists(f"{home_of(drv)}/a")
    assert not overlay_mounts_under(home_of(drv))


# ---------------------------------------------------------------- mounting


def test_get_put_counts_and_merged_removed(make_driver):
    drv = make_driver()
    drv.create("a", None)
    merged = drv.get("a", MountOpts())
    assert merged == f"{home_of(drv)}/a/merged"
    assert drv.get("a", MountOpts()) == merged
    drv.put("a")
    assert _sys.is_mountpoint(merged), "a nested put must not unmount"
    drv.put("a")
    assert not _sys.is_mountpoint(merged)
    assert not os.path.exists(merged), "1.43 removes merged/ on the last put"
    drv.put("a")  # an extra put is harmless


def test_refcount_adopts_mounts_of_other_processes(make_driver):
    first = make_driver()
    first.create("a", None)
    merged = first.get("a", MountOpts())
    second = make_driver()  # a second driver instance, as another process would have
    assert second.get("a", MountOpts()) == merged  # counts the existing mount as one use
    second.put("a")
    assert _sys.is_mountpoint(merged)
    second.put("a")  # the mount it adopted: really unmounts
    assert not _sys.is_mountpoint(merged)
    first.put("a")


def test_mount_data_and_options(make_driver):
    drv = make_driver("overlay.mountopt=nodev")
    home = home_of(drv)
    base_and_child(drv)
    merged = drv.get("L2", MountOpts())
    try:
        info = mountinfo_line(merged)
        assert info.fstype == "overlay"
        assert f"upperdir={home}/L2/diff" in info.super_options
        assert f"workdir={home}/L2/work" in info.super_options
        link = open(f"{home}/L1/link").read()
        assert f"lowerdir={home}/l/{link}" in info.super_options
        with open("/proc/self/mountinfo") as f:
            line = next(l for l in f if l.split()[4] == merged)
        assert "nodev" in line.split()[5]
    finally:
        drv.put("L2")


def test_base_layer_mounts_empty_lower(make_driver):
    drv = make_driver()
    drv.create("a", None)
    merged = drv.get("a", MountOpts())
    try:
        assert f"lowerdir={home_of(drv)}/a/empty" in mountinfo_line(merged).super_options
    finally:
        drv.put("a")


def test_read_only_mount_has_no_upper(make_driver):
    drv = make_driver()
    base_and_child(drv)
    merged = drv.get("L2", RO)
    try:
        opts = mountinfo_line(merged).super_options
        assert "upperdir" not in opts and f"lowerdir={home_of(drv)}/L2/diff:" in opts
        with pytest.raises(OSError) as err:
            open(os.path.join(merged, "x"), "w")
        assert err.value.errno == errno.EROFS
        assert sorted(os.listdir(merged)) == ["dir1", "etc", "link-to-hello", "newfile.txt", "opaque-dir", "pipe"]
    finally:
        drv.put("L2")


def test_volatile_mount(make_driver, tmp_path):
    drv = make_driver()
    drv.create("a", None)
    merged = drv.get("a", MountOpts(volatile=True))
    try:
        assert "volatile" in mountinfo_line(merged).super_options
        assert os.path.exists(f"{home_of(drv)}/a/work/work/incompat/volatile/dirty")
    finally:
        drv.put("a")
    assert "volatile-true" in os.listdir(tmp_path / "r" / "overlay")
    merged = drv.get("a", MountOpts(volatile=True))  # the stale volatile marker must not block a remount
    drv.put("a")


def test_mount_label_only_with_selinux(make_driver):
    drv = make_driver()
    data = drv.driver.build_mount_data("x", True, ["l/A"], [], "system_u:object_r:container_file_t:s0:c1,c2",
                                       selinux=True)
    assert data.endswith(',context="system_u:object_r:container_file_t:s0:c1,c2"')
    assert "context" not in drv.driver.build_mount_data("x", True, ["l/A"], [], "lbl", selinux=False)
    assert format_mount_label("a=b", "", selinux=True) == "a=b"


def test_missing_short_links_are_recreated(make_driver):
    drv = make_driver()
    home = home_of(drv)
    base_and_child(drv)
    link1 = open(f"{home}/L1/link").read()
    os.unlink(f"{home}/l/{link1}")
    os.unlink(f"{home}/L2/link")
    link2_names = set(os.listdir(f"{home}/l"))
    merged = drv.get("L2", MountOpts())
    try:
        assert os.path.exists(os.path.join(merged, "etc/hello.txt"))
    finally:
        drv.put("L2")
    assert os.readlink(f"{home}/l/{link1}") == "../L1/diff"
    assert open(f"{home}/L2/link").read() in link2_names


@pytest.mark.slow
def test_depth_limit(make_driver):
    drv = make_driver()
    parent = None
    for i in range(lamina_overlay.MAX_DEPTH + 1):
        drv.create(f"c{i}", parent)
        parent = f"c{i}"
    assert len(open(f"{home_of(drv)}/{parent}/lower").read().split(":")) == lamina_overlay.MAX_DEPTH
    with pytest.raises(OSError, match="max depth exceeded"):
        drv.create("too-deep", parent)
    merged = drv.get(parent, MountOpts())  # 500 lowers (the kernel's limit) under its upper
    try:
        assert sorted(os.listdir(merged)) == []
    finally:
        drv.put(parent)


# ---------------------------------------------------------------- native diff


def test_whiteouts_in_diff_dir_are_overlay_format(make_driver):
    drv = make_driver()
    base_and_child(drv)
    diff = f"{home_of(drv)}/L2/diff"
    st = os.lstat(f"{diff}/dir1/a.txt")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and stat.S_IMODE(st.st_mode) == 0
    assert os.getxattr(f"{diff}/opaque-dir", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(f"{diff}/opaque-dir")) == ["new.txt"]
    assert not any(n.startswith(".wh.") for _, _, files in os.walk(diff) for n in files)


def test_native_changes_match_containers_storage(make_driver):
    drv = make_driver()
    base_and_child(drv)
    got = [(c.kind.label, c.path) for c in drv.changes("L2", "L1")]
    # containers-storage 1.43 on overlay, same layers (reference section "Overlay specifics")
    assert got == [("Modify", "/dir1"), ("Delete", "/dir1/a.txt"), ("Add", "/newfile.txt"),
                   ("Delete", "/opaque-dir"), ("Add", "/opaque-dir/new.txt")]
    assert drv.diff_size("L2", "L1") == 10


def test_native_diff_tar(make_driver):
    drv = make_driver()
    base_and_child(drv)
    stream = drv.diff("L2", "L1")
    try:
        data = stream.read()
    finally:
        stream.close()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name.rstrip("/"): m for m in tar.getmembers()}
    assert list(members) == ["dir1", "dir1/.wh.a.txt", "newfile.txt", "opaque-dir",
                             "opaque-dir/.wh..wh..opq", "opaque-dir/new.txt"]
    assert members["dir1/.wh.a.txt"].isreg() and members["dir1/.wh.a.txt"].size == 0
    assert members["dir1/.wh.a.txt"].mode == 0  # the kernel whiteout's permission bits, as Go keeps them
    # replaying the native diff over the parent gives the same tree
    drv.create("replay", "L1")
    drv.apply_diff("replay", "L1", ApplyDiffOpts(diff=io.BytesIO(data)))
    assert tree_snapshot(drv.get("replay", RO)) == tree_snapshot(drv.get("L2", RO))
    drv.put("replay")
    drv.put("L2")


def test_new_dir_is_not_marked_opaque_in_diff(make_driver):
    drv = make_driver()
    drv.create("a", None)
    drv.create("b", "a")
    root = drv.get("b", MountOpts())
    try:
        os.mkdir(os.path.join(root, "fresh"))
    finally:
        drv.put("b")
    os.setxattr(f"{home_of(drv)}/b/diff/fresh", "trusted.overlay.opaque", b"y")
    stream = drv.diff("b", "a")
    names = tarfile.open(fileobj=io.BytesIO(stream.read())).getnames()
    stream.close()
    assert names == ["fresh"], "an opaque dir absent from the lowers needs no opaque marker"


def test_diff_against_other_parent_defers_to_naive(make_driver):
    drv = make_driver()
    base_and_child(drv)
    assert drv.driver.driver_changes(id="L2", id_mappings=IDMappings(), parent=None,
                                     parent_mappings=IDMappings(), mount_label="") is None
    assert drv.driver.driver_apply_diff(id="L2", parent="other", opts=ApplyDiffOpts(diff=io.BytesIO())) is None
    # the naive walk answers instead (two trees): the opaque dir shows its old file deleted
    changes = set(drv.changes("L2", None))
    assert Change("/etc/hello.txt", ChangeKind.ADD) in changes


def test_diff_getter_reads_files_without_mounting(make_driver):
    drv = make_driver()
    base_and_child(drv)
    getter = drv.diff_getter("L2")
    try:
        with getter("opaque-dir/new.txt") as f:
            assert f.read() == b"new\n"
        with getter("etc/hello.txt") as f:  # from the parent's diff
            assert f.read() == b"hello\n"
        with pytest.raises(OSError):
            getter("../../L1/link").read()
    finally:
        getter.close()
    assert not overlay_mounts_under(home_of(drv))


def test_update_layer_id_map_rotates_upper(make_driver):
    drv = make_driver()
    drv.create("a", None)
    apply(drv, "a", None, BASE_TAR_ENTRIES)
    drv.create("b", "a")
    maps = IDMappings((IDMap(0, 100000, 65536),), (IDMap(0, 100000, 65536),))
    drv.update_layer_id_map("b", IDMappings(), maps)
    home = home_of(drv)
    assert os.path.isdir(f"{home}/b/diff1") and os.listdir(f"{home}/b/diff") == []
    assert os.stat(f"{home}/b/diff").st_uid == 100000
    root = drv.get("b", RO)
    try:
        assert os.lstat(os.path.join(root, "dir1/a.txt")).st_uid == 101000
    finally:
        drv.put("b")
    assert drv.changes("b", "a") == [], "the re-owning copy-up is not a change of the layer"


def test_create_with_id_maps(make_driver):
    drv = make_driver()
    maps = IDMappings((IDMap(0, 100000, 65536),), (IDMap(0, 200000, 65536),))
    drv.create("m", None, CreateOpts(id_mappings=maps))
    drv.create("c", "m")
    for id in ("m", "c"):
        for sub in ("", "/diff", "/work", "/merged"):
            st = os.stat(f"{home_of(drv)}/{id}{sub}")
            assert (st.st_uid, st.st_gid) == (100000, 200000), (id, sub)


# ---------------------------------------------------------------- additional image stores


def test_additional_image_store(make_driver, tmp_path):
    ro = make_driver(graph="ro")
    ro.create("base", None)
    apply(ro, "base", None, [("file", "from-store", {"data": b"ro"})])
    ro.cleanup()
    drv = make_driver(f"overlay.imagestore={tmp_path / 'ro'}")
    assert drv.additional_image_stores() == [str(tmp_path / "ro")]
    assert drv.exists("base")
    merged = drv.get("base", MountOpts())
    try:
        assert merged.startswith(str(tmp_path / "ro"))
        assert open(os.path.join(merged, "from-store")).read() == "ro"
        with pytest.raises(OSError):
            open(os.path.join(merged, "new"), "w")
    finally:
        drv.put("base")
    drv.create("child", "base")
    link = open(tmp_path / "ro" / "overlay" / "base" / "link").read()
    assert open(f"{home_of(drv)}/child/lower").read() == f"l/{link}"
    root = drv.get("child", MountOpts())
    try:
        assert open(os.path.join(root, "from-store")).read() == "ro"
        with open(os.path.join(root, "mine"), "w") as f:
            f.write("x")
    finally:
        drv.put("child")
    assert [(c.path, c.kind) for c in drv.changes("child", "base")] == [("/mine", ChangeKind.ADD)]


# ---------------------------------------------------------------- options and host checks


@pytest.mark.parametrize("option, message", [
    ("overlay.bogus=1", "overlay: Unknown option overlay.bogus"),
    ("novalue", "unable to parse key/value option: novalue"),
    ("overlay.force_mask=0755", "'force_mask' is supported only with 'mount_program'"),
    ("overlay.skip_mount_home=maybe", "invalid syntax"),
    ("overlay.imagestore=relative/dir", "is not absolute"),
    ("overlay.mount_program=/no/such/program", "can't stat program"),
    ("overlay.size=lots", "invalid size"),
])
def test_bad_options(make_driver, option, message):
    with pytest.raises(InvalidOption, match=re.escape(message)):
        make_driver(option)


def test_quota_needs_xfs(make_driver, tmp_path):
    if probes.backing_fs_name(str(tmp_path))[1] == "xfs":
        pytest.skip("the test directory is on xfs")
    with pytest.raises(InvalidOption, match="only supported for backingFS XFS"):
        make_driver("overlay.size=10M")
    drv = make_driver()
    with pytest.raises(InvalidOption, match="only for overlay over xfs"):
        drv.create("q", None, CreateOpts(storage_opt={"size": "1G"}))
    with pytest.raises(InvalidOption, match="only supported for ReadWrite Layers"):
        drv.create("q", None, CreateOpts(storage_opt={"size": "1G"}), read_write=False)


def test_option_prefixes_and_values():
    from lamina_overlay.options import parse_options, parse_size

    o = parse_options(["mountopt=nodev", ".ignore_chown_errors=true", "overlay2.force_mask=shared",
                       "overlay.override_kernel_check=1", "Overlay.Skip_Mount_Home=1"])
    assert o.mount_options == "nodev" and o.ignore_chown_errors and o.force_mask == 0o755 and o.skip_mount_home
    assert parse_size("10G") == 10 << 30 and parse_size("512m") == 512 << 20 and parse_size("1.5KiB") == 1536


def test_check_host_refuses_overlay_backed_root(tmp_path, monkeypatch):
    for d in ("lower", "upper", "work", "merged"):
        (tmp_path / d).mkdir()
    _sys.mount("overlay", str(tmp_path / "merged"), "overlay", 0,
               f"lowerdir={tmp_path}/lower,upperdir={tmp_path}/upper,workdir={tmp_path}/work")
    try:
        monkeypatch.setattr(shutil, "which", lambda name: None)
        with pytest.raises(DriverNotSupported, match="not supported over overlayfs"):
            lamina_overlay.Driver.check_host(str(tmp_path / "merged" / "graph"))
        lamina_overlay.Driver.check_host(str(tmp_path))  # ext4 or the like: fine
    finally:
        _sys.umount(str(tmp_path / "merged"), _sys.MNT_DETACH)


def test_cached_probe_failure_is_reported(make_driver, tmp_path):
    (tmp_path / "r" / "overlay").mkdir(parents=True)
    (tmp_path / "r" / "overlay" / "overlay-false").write_text("kernel does not support overlay fs: test")
    from lamina.drivers import new_driver
    from lamina.types import DriverConfig

    config = DriverConfig("overlay", str(tmp_path / "g" / "overlay"), str(tmp_path / "r"))
    with pytest.raises(DriverNotSupported, match="kernel does not support overlay fs: test"):
        new_driver(config)
    assert not _sys.is_mountpoint(config.home), "a refused driver must not leave its home mounted"


# ---------------------------------------------------------------- mount_program (fuse-overlayfs)


FUSE = shutil.which("fuse-overlayfs")


@pytest.mark.skipif(FUSE is None or not os.path.exists("/dev/fuse"),
                    reason="fuse-overlayfs (Debian package fuse-overlayfs) or /dev/fuse missing")
def test_mount_program_keeps_aufs_whiteouts(make_driver, tmp_path):
    drv = make_driver(f"overlay.mount_program={FUSE}")
    assert open(f"{home_of(drv)}/.has-mount-program").read() == "true"
    assert ("Native Overlay Diff", "false") in drv.status()
    base_and_child(drv)
    diff = f"{home_of(drv)}/L2/diff"
    assert os.path.isfile(f"{diff}/dir1/.wh.a.txt")
    assert os.path.isfile(f"{diff}/opaque-dir/.wh..wh..opq")
    merged = drv.get("L2", MountOpts())
    try:
        assert mountinfo_line(merged).fstype.startswith("fuse")
        names = sorted(os.listdir(merged))
        assert names == ["dir1", "etc", "link-to-hello", "newfile.txt", "opaque-dir", "pipe"]
        assert os.listdir(os.path.join(merged, "dir1")) == ["b.txt", "suid"] or \
            sorted(os.listdir(os.path.join(merged, "dir1"))) == ["b.txt", "suid"]
        assert os.listdir(os.path.join(merged, "opaque-dir")) == ["new.txt"]
    finally:
        drv.put("L2")
    assert not overlay_mounts_under(str(tmp_path))
    changes = {(c.path, c.kind) for c in drv.changes("L2", "L1")}  # naive walk through fuse mounts
    assert ("/dir1/a.txt", ChangeKind.DELETE) in changes and ("/newfile.txt", ChangeKind.ADD) in changes


# ---------------------------------------------------------------- xfs project quotas


def _xfs_tools() -> bool:
    return shutil.which("mkfs.xfs") is not None and shutil.which("losetup") is not None


@pytest.mark.skipif(not _xfs_tools(), reason="mkfs.xfs (Debian package xfsprogs) not installed")
def test_xfs_project_quota(make_driver, tmp_path):
    image = tmp_path / "xfs.img"
    with open(image, "wb") as f:
        f.truncate(300 << 20)
    subprocess.run(["mkfs.xfs", "-q", str(image)], check=True)
    mnt = tmp_path / "xfs"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        # xfs without project quotas: a clear error for size, and no quota otherwise
        with pytest.raises(InvalidOption, match="Filesystem does not support Project Quota"):
            make_driver("overlay.size=1M", graph="xfs/plain")
        drv = make_driver(graph="xfs/plain2")
        assert drv.status()[0] == ("Backing Filesystem", "xfs")
        assert not os.path.exists(f"{home_of(drv)}/backingFsBlockDev")
        with pytest.raises(InvalidOption, match="only for overlay over xfs with 'pquota'"):
            drv.create("q", None, CreateOpts(storage_opt={"size": "1G"}))
        drv.cleanup()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    with_quota = subprocess.run(["mount", "-o", "loop,prjquota", str(image), str(mnt)], capture_output=True, text=True)
    if with_quota.returncode != 0:
        pytest.skip(f"this kernel cannot mount xfs with project quotas: {with_quota.stderr.strip()}")
    try:
        drv = make_driver("overlay.size=1M", graph="xfs/g")
        drv.create("q", None)
        root = drv.get("q", MountOpts())
        try:
            with pytest.raises(OSError) as err:
                with open(os.path.join(root, "big"), "wb") as f:
                    f.write(b"\0" * (4 << 20))
            assert err.value.errno in (errno.EDQUOT, errno.ENOSPC)
        finally:
            drv.put("q")
        drv.create("r", None, CreateOpts(storage_opt={"size": "8M"}))
        root = drv.get("r", MountOpts())
        try:
            with open(os.path.join(root, "big"), "wb") as f:
                f.write(b"\0" * (4 << 20))
        finally:
            drv.put("r")
        drv.cleanup()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.skipif(FUSE is None or not os.path.exists("/dev/fuse"),
                    reason="fuse-overlayfs (Debian package fuse-overlayfs) or /dev/fuse missing")
def test_force_mask_with_mount_program(make_driver):
    drv = make_driver(f"overlay.mount_program={FUSE}", "overlay.force_mask=0700")
    drv.create("a", None)
    assert mode_of(f"{home_of(drv)}/a/diff") == 0o700
    apply(drv, "a", None, [("file", "f", {"data": b"x", "mode": 0o644, "uid": 7, "gid": 8})])
    on_disk = f"{home_of(drv)}/a/diff/f"
    assert mode_of(on_disk) == 0o700
    assert os.getxattr(on_disk, "user.containers.override_stat") == b"7:8:0644"
    merged = drv.get("a", MountOpts())
    try:
        # as with 1.43, the mount shows the forced mode; the real one is kept for readers of the xattr
        assert open(os.path.join(merged, "f")).read() == "x"
        assert mode_of(os.path.join(merged, "f")) == 0o700
    finally:
        drv.put("a")
