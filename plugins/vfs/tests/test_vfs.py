"""vfs: the conformance suite plus the layout and options containers/storage's vfs has."""

from __future__ import annotations

import os
import stat

import pytest

from lamina.drivers import new_driver
from lamina.errors import InvalidOption
from lamina.graphdriver import build_driver
from lamina.testing import BASE_TAR_ENTRIES, DriverConformance, make_tar
from lamina.types import ApplyDiffOpts, DriverConfig, MountOpts


class TestVfsConformance(DriverConformance):
    driver_name = "vfs"
    deep_chain_length = 40


def _vfs(tmp_path, *options: str):
    config = DriverConfig("vfs", str(tmp_path / "g" / "vfs"), str(tmp_path / "r"), tuple(options))
    return build_driver(config, new_driver(config))


def test_layout_matches_containers_storage(tmp_path):
    drv = _vfs(tmp_path)
    drv.create("L1", None)
    path = drv.get("L1", MountOpts())
    assert path == str(tmp_path / "g" / "vfs" / "dir" / "L1")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o555
    drv.put("L1")


def test_child_is_a_full_copy(tmp_path):
    import io

    drv = _vfs(tmp_path)
    drv.create("L1", None)
    drv.apply_diff("L1", None, ApplyDiffOpts(diff=io.BytesIO(make_tar(BASE_TAR_ENTRIES))))
    drv.create("L2", "L1")
    a = os.lstat(drv.get("L1", MountOpts()) + "/etc/hello.txt")
    b = os.lstat(drv.get("L2", MountOpts()) + "/etc/hello.txt")
    assert a.st_ino != b.st_ino, "a vfs child must not share inodes with its parent"
    b2 = os.lstat(drv.get("L2", MountOpts()) + "/etc/hello-hard")
    assert b.st_ino == b2.st_ino, "hardlinks inside a layer must survive the copy"
    assert os.lstat(drv.get("L2", MountOpts()) + "/dir1/a.txt").st_uid == 1000


@pytest.mark.parametrize(
    "option, message",
    [
        ("vfs.mountopt=nodev", "vfs driver does not support mount options"),
        ("vfs.size=10G", "vfs driver does not support vfs.size options"),
        ("overlay.mountopt=nodev", "vfs driver does not support overlay.mountopt options"),
        ("vfs.ignore_chown_errors=maybe", "not a boolean"),
        ("novalue", "unable to parse key/value option"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, option, message):
    with pytest.raises(InvalidOption, match=message):
        _vfs(tmp_path, option)


def test_imagestore_layers_are_found(tmp_path):
    other = tmp_path / "other"
    (other / "vfs" / "dir" / "RO1").mkdir(parents=True)
    (other / "vfs" / "dir" / "RO1" / "f").write_text("from the image store")
    drv = _vfs(tmp_path, f"vfs.imagestore={other}")
    assert drv.additional_image_stores() == [str(other)]
    assert drv.exists("RO1")
    assert open(drv.get("RO1", MountOpts()) + "/f").read() == "from the image store"
    drv.create("child", "RO1")
    assert open(drv.get("child", MountOpts()) + "/f").read() == "from the image store"
    assert drv.get("child", MountOpts()).startswith(str(tmp_path / "g"))


def test_create_rejects_storage_opt(tmp_path):
    from lamina.types import CreateOpts

    drv = _vfs(tmp_path)
    with pytest.raises(InvalidOption, match="not supported for vfs"):
        drv.create("x", None, CreateOpts(storage_opt={"size": "1G"}))
    assert not drv.exists("x")
