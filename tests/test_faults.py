"""Faults: processes killed mid-operation, concurrent writers, a full disk.

* samples of the campaigns in scripts/campaigns (crash.py: SIGKILLed workers; concurrency.py:
  lamina processes and the Go tool writing one store), small enough for the default run;
* deterministic crash points: a forked child runs one operation and dies (``os._exit``) right
  at a chosen step; reopening the store must complete or undo that operation exactly;
* a diff bigger than the free space of a small tmpfs or loop-mounted ext4 graph root.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from lamina.check import CheckOptions
from lamina.errors import ArchiveError
from lamina.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "campaigns"))

import common  # noqa: E402

GO = shutil.which("containers-storage")


def _clean(store: Store) -> None:
    report = store.check(CheckOptions(max_age=None))
    assert report.clean, report.text()


# ---------------------------------------------------------------- campaign samples


def test_crash_campaign_sample_vfs(tmp_path: Path) -> None:
    import crash

    figs = crash.campaign("vfs", 10, seed=20260101, workdir=str(tmp_path), go_copy_every=5, progress=False)
    assert figs.trials == 10
    assert figs.failures == [], "\n".join(figs.failures)
    assert figs.kills >= 1


def test_concurrency_campaign_sample(tmp_path: Path) -> None:
    import concurrency

    figs = concurrency.campaign(str(tmp_path), seconds=4, writers=2, driver="vfs", seed=7, use_go=GO is not None)
    try:
        assert figs["failures"] == [], "\n".join(figs["failures"])
        assert figs["updates"] > 20
        assert figs["reader"]["raw_reads"] > 0 and figs["reader"]["raw_bad"] == 0
    finally:
        common.go_shutdown(str(tmp_path / "graph"), str(tmp_path / "run"), "vfs")


# ---------------------------------------------------------------- deterministic crash points


def die_at(obj: Any, attr: str, when: str = "after", match: Callable[..., bool] | None = None) -> Callable[[], None]:
    """Patch ``obj.attr`` so that the process exits at once before or after the (first matching) call."""
    original = getattr(obj, attr)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if match is not None and not match(*args, **kwargs):
            return original(*args, **kwargs)
        if when == "before":
            os._exit(0)
        result = original(*args, **kwargs)
        os._exit(0)
        return result

    setattr(obj, attr, wrapper)
    return lambda: setattr(obj, attr, original)


def crash_in_child(action: Callable[[], None]) -> None:
    """Run *action* in a forked child and wait for it; the child must not return normally."""
    pid = os.fork()
    if pid == 0:
        try:
            action()
        finally:
            os._exit(3)  # reached only if the crash point was never hit
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the crash point was not reached"


@pytest.fixture
def built(tmp_path: Path) -> Iterator[tuple[str, str]]:
    g, r = str(tmp_path / "g"), str(tmp_path / "r")
    s = Store(g, r, driver_name="vfs")
    raw, _ = common.gen_tar(1, 4, 5000)
    layer = s.create_layer(names=["base"], diff=io.BytesIO(raw))
    image = s.create_image(top_layer=layer.id, names=["img"])
    s.set_big_data("image", image.id, "config.json", b"old config")
    yield g, r


def _open(roots: tuple[str, str]) -> Store:
    return Store(*roots, driver_name="vfs")


def test_crash_after_big_data_file_before_record_rolls_forward(built: tuple[str, str]) -> None:
    def act() -> None:
        s = _open(built)
        die_at(s.image_store, "save", "before")
        s.set_big_data("image", "img", "config.json", b"new config, longer")

    crash_in_child(act)
    s = _open(built)
    image = s.image("img")
    assert s.big_data("image", "img", "config.json") == b"new config, longer"
    assert image.big_data_sizes["config.json"] == len(b"new config, longer")
    _clean(s)
    assert not os.listdir(os.path.join(built[0], "vfs-intents"))


def test_crash_before_big_data_rename_rolls_back(built: tuple[str, str]) -> None:
    def act() -> None:
        s = _open(built)
        die_at(os, "rename", "before", match=lambda src, dst, *a, **k: "config.json" in str(dst))
        s.set_big_data("image", "img", "config.json", b"never written")

    crash_in_child(act)
    image_dir = os.path.join(built[0], "vfs-images", _open(built).image("img").id)
    s = _open(built)
    assert s.big_data("image", "img", "config.json") == b"old config"
    assert not [n for n in os.listdir(image_dir) if n.startswith(".tmp-")]
    _clean(s)


def test_crash_new_big_data_key_leaves_no_orphan(built: tuple[str, str]) -> None:
    def act() -> None:
        s = _open(built)
        die_at(s.image_store, "save", "before")
        s.set_big_data("image", "img", "manifest", b'{"schemaVersion":2}')

    crash_in_child(act)
    s = _open(built)
    assert "manifest" in s.image("img").big_data_names
    assert s.image("img").digest  # the manifest became the image digest, as a completed write does
    _clean(s)


def test_crash_in_delete_image_finishes_it(built: tuple[str, str]) -> None:
    def act() -> None:
        s = _open(built)
        die_at(s.image_store, "save", "after")
        s.delete_image("img")

    crash_in_child(act)
    s = _open(built)
    assert s.images() == [] and s.layers() == []
    assert sorted(os.listdir(os.path.join(built[0], "vfs-images"))) == ["images.json", "images.lock"]
    _clean(s)


def test_crash_in_create_container_leaks_no_layer(built: tuple[str, str]) -> None:
    def act() -> None:
        s = _open(built)
        die_at(s.container_store, "save", "before")
        s.create_container(image="img", names=["c"])

    crash_in_child(act)
    s = _open(built)
    assert s.containers() == []
    assert [l.names for l in s.layers()] == [["base"]]
    _clean(s)


def test_crash_in_delete_container_finishes_it(built: tuple[str, str]) -> None:
    s = _open(built)
    ctr = s.create_container(image="img", names=["c"])
    s.set_big_data("container", ctr.id, "state", b"x")
    s.container_directory(ctr.id)

    def act() -> None:
        s = _open(built)
        die_at(s.container_store, "save", "before")
        s.delete_container("c")

    crash_in_child(act)
    s = _open(built)
    assert s.containers() == []
    assert [l.names for l in s.layers()] == [["base"]]
    assert not os.path.exists(os.path.join(built[0], "vfs-containers", ctr.id))
    _clean(s)


def test_crash_while_applying_a_new_layer_leaves_nothing(built: tuple[str, str]) -> None:
    raw, _ = common.gen_tar(2, 30, 2_000_000)

    def act() -> None:
        s = _open(built)
        writes = [0]

        def count(*a: Any, **k: Any) -> bool:
            writes[0] += 1
            return writes[0] == 12

        die_at(os, "write", "after", match=count)
        s.create_layer(parent="base", names=["new"], diff=io.BytesIO(raw))

    crash_in_child(act)
    s = _open(built)
    assert [l.names for l in s.layers()] == [["base"]]
    assert len(os.listdir(os.path.join(built[0], "vfs", "dir"))) == 1
    _clean(s)


def test_crash_mid_metadata_write_leaves_no_temp_file(built: tuple[str, str]) -> None:
    def act() -> None:
        s = _open(built)
        die_at(os, "rename", "before", match=lambda src, dst, *a, **k: str(dst).endswith("images.json"))
        s.set_names("img", ["renamed"])

    crash_in_child(act)
    s = _open(built)
    assert s.image("img").names == ["img"]
    assert not [n for n in os.listdir(os.path.join(built[0], "vfs-images")) if n.startswith(".tmp-")]
    _clean(s)


def test_failed_recovery_does_not_stop_the_store_from_opening(built: tuple[str, str]) -> None:
    intents = os.path.join(built[0], "vfs-intents")
    os.makedirs(intents, exist_ok=True)
    with open(os.path.join(intents, "bogus-1.json"), "w") as f:
        f.write('{"op": "no-such-op"}')
    with open(os.path.join(intents, "torn-2.json"), "w") as f:
        f.write('{"op": "set-big')
    s = _open(built)  # logs and keeps the unknown intent, drops the torn one
    assert os.listdir(intents) == ["bogus-1.json"]
    assert s.image("img").names == ["img"]


# ---------------------------------------------------------------- a full disk


def _small_fs(kind: str, where: Path) -> Any:
    if kind == "tmpfs":
        class Tmpfs:
            def __enter__(self) -> str:
                where.mkdir(parents=True, exist_ok=True)
                common.run("mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(where))
                return str(where)

            def __exit__(self, *exc: object) -> None:
                common.unmount_all(str(where))

        return Tmpfs()

    class Ext4:
        def __enter__(self) -> str:
            self.fs = common.LoopFS(str(where), "ext4", 16)
            return self.fs.__enter__().mount

        def __exit__(self, *exc: object) -> None:
            self.fs.__exit__(*exc)

    return Ext4()


@pytest.mark.parametrize("fs,driver", [("tmpfs", "vfs"), ("ext4", "vfs"), ("tmpfs", "overlay")])
def test_disk_full_during_apply(tmp_path: Path, fs: str, driver: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small filesystem")
    if fs == "ext4" and common.loop_fs_available("ext4"):
        pytest.skip(common.loop_fs_available("ext4") or "")
    with _small_fs(fs, tmp_path / "fs") as root:
        why = common.driver_available(driver, root)
        if why:
            pytest.skip(f"{driver}: {why}")
        g, r = os.path.join(root, "g"), os.path.join(root, "r")
        s = Store(g, r, driver_name=driver)
        try:
            small, _ = common.gen_tar(1, 3, 20000)
            base = s.create_layer(names=["small"], diff=io.BytesIO(small))
            image = s.create_image(top_layer=base.id, names=["img"])
            s.set_big_data("image", image.id, "manifest", b"{}")
            empty = s.create_layer(parent=base.id, names=["empty"])
            used_before = shutil.disk_usage(root).used
            big, _ = common.gen_tar(2, 20, 40_000_000)
            with pytest.raises(ArchiveError, match="No space left on device"):
                s.create_layer(parent=base.id, names=["big"], diff=io.BytesIO(big))
            # the failed layer is gone, with its data: the space is free again
            assert sorted(n for l in s.layers() for n in l.names) == ["empty", "small"]
            assert shutil.disk_usage(root).used <= used_before + 256 * 1024
            _clean(s)
            # applying into an existing layer fails as clearly; its record is left as it was
            with pytest.raises(ArchiveError, match="No space left on device"):
                s.apply_diff(empty.id, io.BytesIO(big))
            assert s.layer("empty").uncompressed_digest == ""
            # (its partly written files stay, as in containers/storage: deleting the layer frees them)
            s.delete_layer(empty.id)
            assert shutil.disk_usage(root).used <= used_before + 256 * 1024
            reopened = Store(g, r, driver_name=driver)
            assert reopened.big_data("image", "img", "manifest") == b"{}"
            _clean(reopened)
            if GO:
                lists = common.go_lists(g, r, driver)
                assert [l["id"] for l in lists["layers"]] == [base.id]
                assert [i["id"] for i in lists["images"]] == [image.id]
        finally:
            s.shutdown(force=True)
            common.go_shutdown(g, r, driver)
    assert not common.mounts_under(str(tmp_path))
