"""check / repair / gc (lamina.check): a corpus of deliberately broken stores, one per kind of fault.

Each store is built fresh (vfs; overlay for its own faults when the host can mount it), broken in
one way, and then: ``check`` must name the fault; ``check -r`` must leave a store that lamina and
the Go tool both load; ``check -r -f`` must leave nothing for a second ``check`` to report.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from lamina.check import CheckOptions, CheckReport, parse_duration
from lamina.store import Store

GO = shutil.which("containers-storage")
EPOCH = 1704067200


def layer_tar(files: dict[str, bytes], extra: Callable[[tarfile.TarFile], None] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted({os.path.dirname(p) for p in files if os.path.dirname(p)}):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(data))
        if extra:
            extra(tar)
    return buf.getvalue()


def _links(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("etc/link")
    info.type, info.linkname, info.mtime = tarfile.SYMTYPE, "hello.txt", EPOCH
    tar.addfile(info)
    info = tarfile.TarInfo("etc/hard")
    info.type, info.linkname, info.mtime = tarfile.LNKTYPE, "etc/hello.txt", EPOCH
    tar.addfile(info)


class Built:
    """A small store: L1 (base, with a diff and layer big data) <- L2 (diff) <- image I (big data)
    <- container C (big data); L3 an empty layer; image I2 on L1."""

    def __init__(self, root: Path, driver: str = "vfs") -> None:
        self.graph, self.run, self.driver = str(root / "g"), str(root / "r"), driver
        s = self.store = Store(self.graph, self.run, driver_name=driver)
        self.l1 = s.create_layer(names=["base"], diff=io.BytesIO(layer_tar(
            {"etc/hello.txt": b"hello\n", "bin/tool": b"\x7fELF" + bytes(5000)}, _links))).id
        s.set_big_data("layer", self.l1, "Layer.Data", b"layer data")
        self.l2 = s.create_layer(parent=self.l1, names=["child"], diff=io.BytesIO(layer_tar(
            {"app/main.py": b"print('hi')\n" * 50, "etc/hello.txt": b"changed\n"}))).id
        self.l3 = s.create_layer(names=["empty"]).id
        self.img = s.create_image(top_layer=self.l2, names=["example.com/app:1"]).id
        s.set_big_data("image", self.img, "manifest", b'{"schemaVersion":2}')
        s.set_big_data("image", self.img, "config.json", b'{"config":{}}')
        self.img2 = s.create_image(top_layer=self.l1, names=["example.com/base:1"]).id
        c = s.create_container(image=self.img, names=["ctr"])
        self.ctr, self.ctr_layer = c.id, c.layer
        s.set_big_data("container", self.ctr, "state.json", b'{"running":false}')

    # paths
    def layer_dir(self, id: str) -> str:
        if self.driver == "overlay":
            return os.path.join(self.graph, "overlay", id, "diff")
        return os.path.join(self.graph, "vfs", "dir", id)

    def meta(self, kind: str) -> str:
        return os.path.join(self.graph, f"{self.driver}-{kind}s", f"{kind}s.json")

    def edit_json(self, kind: str, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
        path = self.meta(kind)
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(change(data), f)

    def reopen(self) -> Store:
        return Store(self.graph, self.run, driver_name=self.driver)


def old(*paths: str) -> None:
    """Make orphans two days old: check reports leftovers only once older than -m (24h)."""
    import time

    when = time.time() - 2 * 86400
    for path in paths:
        os.utime(path, (when, when), follow_symlinks=False)


def writable(path: str) -> None:
    os.chmod(os.path.dirname(path), 0o755)
    if os.path.exists(path):
        os.chmod(path, 0o644)


def go_loads(b: Built) -> None:
    if GO is None:
        return
    for what in ("layers", "images", "containers"):
        proc = subprocess.run([GO, "-g", b.graph, "-R", b.run, "-s", b.driver, what, "-j"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"Go {what}: {proc.stderr}"
        json.loads(proc.stdout or "null")


def _codes(report: CheckReport) -> set[str]:
    out = {p.code for t in (report.layers, report.ro_layers, report.images, report.ro_images, report.containers)
           for ps in t.values() for p in ps}
    out.update(f"orphan:{o.kind}" for o in report.orphans)
    out.update(f"mount:{m.reason}" for m in report.stale_mounts)
    return out


# ---------------------------------------------------------------- the faults


def f_content_changed(b: Built) -> None:
    p = os.path.join(b.layer_dir(b.l1), "bin", "tool")
    writable(p)
    with open(p, "r+b") as f:
        f.seek(100)
        f.write(b"X")


def f_content_truncated(b: Built) -> None:
    p = os.path.join(b.layer_dir(b.l2), "app", "main.py")
    writable(p)
    os.truncate(p, 3)


def f_content_deleted(b: Built) -> None:
    p = os.path.join(b.layer_dir(b.l2), "app", "main.py")
    writable(p)
    os.unlink(p)


def f_tar_split_missing(b: Built) -> None:
    os.unlink(os.path.join(b.graph, f"{b.driver}-layers", f"{b.l2}.tar-split.gz"))


def f_tar_split_corrupt(b: Built) -> None:
    with open(os.path.join(b.graph, f"{b.driver}-layers", f"{b.l2}.tar-split.gz"), "wb") as f:
        f.write(b"\x1f\x8b\x08\x00garbage")


def f_driver_data_missing(b: Built) -> None:
    path = os.path.join(b.graph, "vfs", "dir", b.l3) if b.driver == "vfs" else os.path.join(b.graph, "overlay", b.l3)
    subprocess.run(["chmod", "-R", "u+w", path], check=True)
    shutil.rmtree(path)


def f_layer_data_missing(b: Built) -> None:
    os.unlink(os.path.join(b.graph, f"{b.driver}-layers", b.l1, "=TGF5ZXIuRGF0YQ=="))


def f_parent_missing(b: Built) -> None:
    # L3 claims a parent nobody knows
    b.edit_json("layer", lambda ls: [{**l, "parent": "f" * 64} if l["id"] == b.l3 else l for l in ls])


def f_image_layer_missing(b: Built) -> None:
    b.edit_json("image", lambda im: [{**i, "layer": "e" * 64} if i["id"] == b.img2 else i for i in im])


def f_image_data_missing(b: Built) -> None:
    os.unlink(os.path.join(b.graph, f"{b.driver}-images", b.img, "config.json"))


def f_image_data_size(b: Built) -> None:
    with open(os.path.join(b.graph, f"{b.driver}-images", b.img, "config.json"), "ab") as f:
        f.write(b" ")


def f_image_data_digest(b: Built) -> None:
    with open(os.path.join(b.graph, f"{b.driver}-images", b.img, "config.json"), "r+b") as f:
        f.write(b"[")


def f_container_data_missing(b: Built) -> None:
    os.unlink(os.path.join(b.graph, f"{b.driver}-containers", b.ctr, "state.json"))


def f_container_data_size(b: Built) -> None:
    with open(os.path.join(b.graph, f"{b.driver}-containers", b.ctr, "state.json"), "wb") as f:
        f.write(b"{}")


def f_container_image_missing(b: Built) -> None:
    b.edit_json("container", lambda cs: [{**c, "image": "d" * 64} for c in cs])


def f_container_layer_missing(b: Built) -> None:
    b.edit_json("layer", lambda ls: [l for l in ls if l["id"] != b.ctr_layer])


def f_orphan_driver_layer(b: Built) -> None:
    os.makedirs(os.path.join(b.graph, "vfs", "dir", "a" * 64, "etc"))
    old(os.path.join(b.graph, "vfs", "dir", "a" * 64))


def f_orphan_staging(b: Built) -> None:
    os.makedirs(os.path.join(b.graph, "vfs", "dir", "b" * 64 + ".creating"))
    old(os.path.join(b.graph, "vfs", "dir", "b" * 64 + ".creating"))


def f_orphan_tar_split(b: Built) -> None:
    path = os.path.join(b.graph, f"{b.driver}-layers", "c" * 64 + ".tar-split.gz")
    shutil.copy(os.path.join(b.graph, f"{b.driver}-layers", f"{b.l1}.tar-split.gz"), path)
    old(path)


def f_orphan_layer_data(b: Built) -> None:
    os.makedirs(os.path.join(b.graph, f"{b.driver}-layers", "c" * 64))
    old(os.path.join(b.graph, f"{b.driver}-layers", "c" * 64))


def f_orphan_image_data(b: Built) -> None:
    os.makedirs(os.path.join(b.graph, f"{b.driver}-images", "d" * 64))
    with open(os.path.join(b.graph, f"{b.driver}-images", "d" * 64, "manifest"), "w") as f:
        f.write("{}")
    old(os.path.join(b.graph, f"{b.driver}-images", "d" * 64))


def f_orphan_image_file(b: Built) -> None:
    with open(os.path.join(b.graph, f"{b.driver}-images", b.img, "=bGVmdG92ZXI="), "w") as f:
        f.write("leftover")
    old(os.path.join(b.graph, f"{b.driver}-images", b.img, "=bGVmdG92ZXI="))


def f_orphan_container_dirs(b: Built) -> None:
    for root in (b.graph, b.run):
        os.makedirs(os.path.join(root, f"{b.driver}-containers", "e" * 64, "userdata"))
        old(os.path.join(root, f"{b.driver}-containers", "e" * 64))


def f_stale_mount(b: Built) -> None:
    with open(os.path.join(b.run, f"{b.driver}-layers", "mountpoints.json"), "w") as f:
        json.dump([{"id": "f" * 64, "path": "/nowhere", "count": 2}], f)


def f_unreferenced_old(b: Built) -> None:
    b.edit_json("layer", lambda ls: [{**l, "created": "2001-02-03T04:05:06Z"} if l["id"] == b.l3 else l for l in ls])


# (fault, codes check must report, what a second check after -r -f must still show (nothing))
FAULTS: list[tuple[Callable[[Built], None], set[str]]] = [
    (f_content_changed, {"layer-content-digest"}),
    (f_content_truncated, {"layer-content-size"}),
    (f_content_deleted, {"layer-content-missing"}),
    (f_tar_split_missing, {"layer-tar-split-missing"}),
    (f_tar_split_corrupt, {"layer-content-unreadable"}),
    (f_driver_data_missing, {"layer-driver-missing"}),
    (f_layer_data_missing, {"layer-data-missing"}),
    (f_parent_missing, {"layer-parent-missing"}),
    (f_image_layer_missing, {"image-layer-missing"}),
    (f_image_data_missing, {"image-data-missing"}),
    (f_image_data_size, {"image-data-size"}),
    (f_image_data_digest, {"image-data-digest"}),
    (f_container_data_missing, {"container-data-missing"}),
    (f_container_data_size, {"container-data-size"}),
    (f_container_image_missing, {"container-image-missing"}),
    (f_container_layer_missing, {"container-layer-missing"}),
    (f_orphan_driver_layer, {"layer-unaccounted"}),
    (f_orphan_staging, {"orphan:driver-staging"}),
    (f_orphan_tar_split, {"orphan:tar-split"}),
    (f_orphan_layer_data, {"orphan:layer-data"}),
    (f_orphan_image_data, {"orphan:image-data"}),
    (f_orphan_image_file, {"orphan:image-data"}),
    (f_orphan_container_dirs, {"orphan:container-run-dir", "orphan:container-data"}),
    (f_stale_mount, {"mount:layer-unknown"}),
    (f_unreferenced_old, {"layer-unreferenced"}),
]


@pytest.mark.parametrize("fault,codes", FAULTS, ids=[f.__name__[2:] for f, _ in FAULTS])
def test_check_finds_and_repair_fixes(tmp_path: Path, fault: Callable[[Built], None], codes: set[str]) -> None:
    b = Built(tmp_path)
    assert b.reopen().check().clean, "the freshly built store must check clean"
    fault(b)
    store = b.reopen()
    report = store.check()
    found = _codes(report)
    assert codes <= found, f"expected {codes}, found {found}:\n{report.text()}"
    assert report.text() and not report.clean
    # -r: what can be removed without touching containers is removed; the store stays loadable
    store.repair(report, remove_containers=False)
    b.reopen().layers()
    go_loads(b)
    # -r -f: nothing left to report
    store = b.reopen()
    again = store.check()
    store.repair(again, remove_containers=True)
    final = b.reopen().check()
    assert final.clean, final.text()
    go_loads(b)
    # what the fault did not damage is still there: L1, which the intact image I2 uses
    if fault not in (f_content_changed, f_layer_data_missing, f_image_layer_missing):
        assert b.l1 in {l.id for l in b.reopen().layers()}
        assert b.img2 in {i.id for i in b.reopen().images()}


def test_repair_keeps_intact_images_and_their_layers(tmp_path: Path) -> None:
    b = Built(tmp_path)
    f_image_data_missing(b)  # damages image I (used by container C); I2 on L1 is intact
    store = b.reopen()
    report = store.check()
    assert set(report.images) == {b.img} and set(report.containers) == {b.ctr}
    actions = store.repair(report)  # no -f: the container stays, so its image stays too
    failed = [a for a in actions if not a.ok]
    assert [a.target for a in failed] == [b.img] and "in use by a container" in failed[0].error
    assert {i.id for i in b.reopen().images()} == {b.img, b.img2}
    actions = store.repair(store.check(), remove_containers=True)
    assert [a.action for a in actions if a.ok][:2] == ["delete-container", "delete-image"]
    left = b.reopen()
    assert {i.id for i in left.images()} == {b.img2}
    assert b.l1 in {l.id for l in left.layers()}  # I2 still needs it
    assert left.check().clean


def test_quick_check_skips_content(tmp_path: Path) -> None:
    b = Built(tmp_path)
    f_content_changed(b)
    store = b.reopen()
    assert store.check(CheckOptions.quick()).clean
    assert not store.check().clean


def test_max_age(tmp_path: Path) -> None:
    b = Built(tmp_path)
    store = b.reopen()
    assert store.check().clean  # L3 is unreferenced but new
    report = store.check(CheckOptions(max_age=0))
    assert {p.code for p in report.layers.get(b.l3, [])} == {"layer-unreferenced"}
    assert store.check(CheckOptions(max_age=None)).clean
    os.makedirs(os.path.join(b.graph, "vfs-images", "d" * 64))
    assert not store.check().orphans  # an orphan younger than the maximum age is left alone...
    assert store.check(CheckOptions(max_age=0)).orphans  # ...unless -m 0
    assert [a.target for a in store.garbage_collect()] == [os.path.join(b.graph, "vfs-images", "d" * 64)]


def test_parse_duration() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("0") == 0
    assert parse_duration("250ms") == 0.25
    for bad in ("", "h", "10", "1d", "-"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_incomplete_layer_is_reported_and_finished(tmp_path: Path) -> None:
    b = Built(tmp_path)
    store = b.reopen()
    b.edit_json("layer", lambda ls: [{**l, "flags": {"incomplete": True}} if l["id"] == b.l3 else l for l in ls])
    report = store.check()
    assert report.incomplete_layers == [b.l3]
    assert b.l3 not in {l.id for l in store.layers()}
    assert not os.path.exists(os.path.join(b.graph, "vfs", "dir", b.l3))


def test_temp_files_are_orphans_and_open_sweeps_them(tmp_path: Path) -> None:
    b = Built(tmp_path)
    store = b.reopen()
    tmp = os.path.join(b.graph, "vfs-images", ".tmp-images.json12345")
    big = os.path.join(b.graph, "vfs-images", b.img, ".tmp-config.json999")
    for p in (tmp, big):
        with open(p, "w") as f:
            f.write("partial")
    assert {o.path for o in store.check(CheckOptions(max_age=0)).orphans} == {tmp, big}
    b.reopen()  # opening removes the top-level temp files of interrupted writes
    assert not os.path.exists(tmp) and os.path.exists(big)
    store.garbage_collect()
    assert not os.path.exists(big)


def test_gc_removes_only_what_no_record_owns(tmp_path: Path) -> None:
    b = Built(tmp_path)
    for fault in (f_orphan_driver_layer, f_orphan_staging, f_orphan_tar_split, f_orphan_layer_data,
                  f_orphan_image_data, f_orphan_image_file, f_orphan_container_dirs, f_stale_mount):
        fault(b)
    store = b.reopen()
    before = {(l.id, tuple(l.names)) for l in store.layers()}
    actions = store.garbage_collect()
    assert all(a.ok for a in actions) and len(actions) >= 9
    after = b.reopen()
    assert {(l.id, tuple(l.names)) for l in after.layers()} == before
    assert after.big_data("image", b.img, "config.json") == b'{"config":{}}'
    assert after.big_data("container", b.ctr, "state.json") == b'{"running":false}'
    assert after.check(CheckOptions(max_age=None)).clean
    go_loads(b)


def test_go_created_store_checks_clean(tmp_path: Path) -> None:
    if GO is None:
        pytest.skip("containers-storage (Go) is not installed")
    g, r = str(tmp_path / "g"), str(tmp_path / "r")
    tarpath = tmp_path / "l.tar"
    tarpath.write_bytes(layer_tar({"etc/hello.txt": b"go wrote this\n"}, _links))
    cs = [GO, "-g", g, "-R", r, "-s", "vfs"]
    layer = subprocess.run([*cs, "create-layer", "-n", "golayer"], capture_output=True, text=True, check=True).stdout.split()[0]
    subprocess.run([*cs, "applydiff", "-f", str(tarpath), layer], check=True)
    img = subprocess.run([*cs, "create-image", "-n", "goimg", layer], capture_output=True, text=True, check=True).stdout.split()[0]
    subprocess.run([*cs, "set-image-data", "-f", str(tarpath), img, "blob"], check=True)
    subprocess.run([*cs, "create-container", "-n", "goctr", img], check=True, capture_output=True)
    report = Store(g, r, driver_name="vfs").check(CheckOptions(max_age=0))
    assert report.clean, report.text()


# ---------------------------------------------------------------- overlay


def _overlay_reason(tmp_path: Path) -> str | None:
    from lamina import drivers

    try:
        return drivers.support_reason("overlay", str(tmp_path))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture
def overlay_built(tmp_path: Path) -> Any:
    why = _overlay_reason(tmp_path)
    if why:
        pytest.skip(f"overlay not usable here: {why}")
    b = Built(tmp_path, "overlay")
    yield b
    b.reopen().shutdown(force=True)
    assert not [m for m in _mounts() if m.startswith(str(tmp_path))]


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def test_overlay_damaged_parent_damages_descendants(overlay_built: Built) -> None:
    b = overlay_built
    f_content_changed(b)  # L1 changed: L2, the container layer and both images sit on it
    report = b.reopen().check()
    assert {p.code for p in report.layers[b.l2]} == {"layer-parent-damaged"}
    assert set(report.images) == {b.img, b.img2}
    b.reopen().repair(report, remove_containers=True)
    assert b.reopen().check().clean
    go_loads(b)


def test_overlay_orphans_and_stale_mounts(overlay_built: Built) -> None:
    b = overlay_built
    store = b.reopen()
    path = store.mount(b.l3)
    link = os.path.join(b.graph, "overlay", "l", "ZZZZZZZZZZZZZZZZZZZZZZZZZZ")
    os.symlink("../" + "a" * 64 + "/diff", link)
    os.makedirs(os.path.join(b.graph, "overlay", "b" * 64, "diff"))
    old(link, os.path.join(b.graph, "overlay", "b" * 64))
    subprocess.run(["umount", path], check=True)  # behind the store's back: the count is now stale
    report = store.check()
    assert {"orphan:overlay-link", "mount:not-mounted", "layer-unaccounted"} <= _codes(report), report.text()
    store.repair(report)
    after = b.reopen()
    assert after.check().clean
    assert after.mounted(b.l3) == 0
    go_loads(b)


def test_overlay_corpus_sample(tmp_path: Path) -> None:
    """A few of the generic faults on overlay (its layout: diff dirs, short links)."""
    if _overlay_reason(tmp_path):
        pytest.skip("overlay not usable here")
    for i, (fault, codes) in enumerate([(f_content_truncated, {"layer-content-size"}),
                                        (f_driver_data_missing, {"layer-driver-missing"}),
                                        (f_tar_split_missing, {"layer-tar-split-missing"})]):
        b = Built(tmp_path / str(i), "overlay")
        try:
            fault(b)
            store = b.reopen()
            report = store.check()
            assert codes <= _codes(report), report.text()
            store.repair(report, remove_containers=True)
            assert b.reopen().check().clean
            go_loads(b)
        finally:
            b.reopen().shutdown(force=True)


# ---------------------------------------------------------------- the CLI commands


def _ctx(store: Store, **flags: Any) -> SimpleNamespace:
    base = {"json": False, "max": "24h", "repair": False, "force": False, "quick": False}
    base.update(flags)
    return SimpleNamespace(store=store, flags=base, args=[], json=base["json"])


def test_cli_check_text_json_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lamina.cli import cmd_check

    b = Built(tmp_path)
    store = b.reopen()
    assert cmd_check.check(_ctx(store)) == 0
    assert capsys.readouterr().out == ""
    f_image_data_missing(b)
    assert cmd_check.check(_ctx(store)) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"image {b.img}:\n image {b.img}: data item \"config.json\": image data item is missing\n")
    assert f"container {b.ctr}:\n" in out
    assert err == "0 layer errors, 0 read-only layer errors, 1 image errors, 0 read-only image errors, 1 container errors\n"
    assert cmd_check.check(_ctx(store, json=True)) == 1
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == ["Layers", "ROLayers", "Images", "ROImages", "Containers", "Orphans", "Mounts"]
    assert doc["Images"][b.img] == [f'image {b.img}: data item "config.json": image data item is missing']
    # -r without -f: the container keeps its image: exit 1, reported on stderr
    assert cmd_check.check(_ctx(store, repair=True)) == 1
    out, err = capsys.readouterr()
    assert f"delete-image {b.img}: failed" in err
    # -r -f: container and image go, each action on stdout
    assert cmd_check.check(_ctx(store, repair=True, force=True, json=True)) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [a["action"] for a in doc["Actions"]][:2] == ["delete-container", "delete-image"]
    assert cmd_check.check(_ctx(store)) == 0
    assert cmd_check.check(_ctx(store, max="soon")) == 1
    assert "invalid duration" in capsys.readouterr().err


def test_cli_gc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lamina.cli import cmd_check

    b = Built(tmp_path)
    f_orphan_tar_split(b)
    store = b.reopen()
    assert cmd_check.gc(SimpleNamespace(store=store, flags={"json": False}, args=[], json=False)) == 0
    assert capsys.readouterr().out == ""
    assert not os.path.exists(os.path.join(b.graph, "vfs-layers", "c" * 64 + ".tar-split.gz"))
    f_orphan_image_data(b)
    assert cmd_check.gc(SimpleNamespace(store=store, flags={"json": True}, args=[], json=True)) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"action": "remove-orphan", "target": os.path.join(b.graph, "vfs-images", "d" * 64), "ok": True}]


def test_cli_registered(tmp_path: Path) -> None:
    """Through the real ``lamina`` command, once the CLI's table routes check/gc to cmd_check."""
    from lamina.cli.table import find

    command = find("check")
    if command is None or not command.target.endswith("cmd_check:check"):
        pytest.skip("check is not registered in lamina.cli.table yet")
    import sys

    b = Built(tmp_path)
    f_orphan_tar_split(b)
    base = [sys.executable, "-m", "lamina", "-g", b.graph, "-R", b.run, "-s", "vfs"]
    proc = subprocess.run([*base, "check", "-m", "0"], capture_output=True, text=True)
    assert proc.returncode == 1 and "orphan " in proc.stdout
    proc = subprocess.run([*base, "gc"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([*base, "check", "-m", "1h"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
