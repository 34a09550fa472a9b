"""The Store API: records, names, big data, deletion rules, mounts, crash recovery, 1.62 layouts,
read-only image stores, and sharing one store live with the Go tool."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lamina.errors import (
    DuplicateName,
    ImageUnknown,
    ImageUsedByContainer,
    LayerHasChildren,
    LayerMounted,
    LayerUnknown,
    LayerUsedByContainer,
    LayerUsedByImage,
    StoreIsReadOnly,
)
from lamina.store import Store
from lamina.testing import BASE_TAR_ENTRIES, make_tar
from lamina.types import IDMap, IDMappings

GO = shutil.which("containers-storage")
needs_go = pytest.mark.skipif(GO is None, reason="Go containers-storage (Debian package) not installed")


@pytest.fixture
def roots(tmp_path: Path) -> tuple[str, str]:
    return str(tmp_path / "graph"), str(tmp_path / "run")


@pytest.fixture
def store(roots: tuple[str, str]) -> Store:
    return Store(*roots, driver_name="vfs")


def go(roots: tuple[str, str], *args: str, input: bytes | None = None, check: bool = True) -> str:
    proc = subprocess.run([GO or "containers-storage", "--graph", roots[0], "--run", roots[1],
                           "--storage-driver", "vfs", *args], capture_output=True, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"containers-storage {' '.join(args)} failed: {proc.stderr.decode()}")
    return proc.stdout.decode()


def read_json(path: str) -> object:
    with open(path, "rb") as f:
        return json.loads(f.read())


# ---------------------------------------------------------------- records and on-disk format


def test_layer_record_format(store: Store, roots: tuple[str, str]) -> None:
    base = store.create_layer(names=["base-layer", "base-layer"])
    child = store.create_layer(parent="base-layer", mount_label="lbl")
    raw = open(os.path.join(roots[0], "vfs-layers", "layers.json"), "rb").read()
    assert not raw.endswith(b"\n")
    data = json.loads(raw)
    assert [list(d) for d in data] == [["id", "names", "created"], ["id", "parent", "mountlabel", "created"]]
    assert data[0]["names"] == ["base-layer"]
    assert data[1]["parent"] == base.id and child.parent == base.id
    assert os.stat(os.path.join(roots[0], "vfs-layers", "layers.json")).st_mode & 0o777 == 0o600
    assert read_json(os.path.join(roots[1], "vfs-layers", "mountpoints.json")) == []
    assert len(open(os.path.join(roots[0], "vfs-layers", "layers.lock"), "rb").read()) == 64


def test_lookup_by_id_name_and_prefix(store: Store) -> None:
    layer = store.create_layer(names=["named"])
    assert store.layer(layer.id).id == layer.id
    assert store.layer("named").id == layer.id
    assert store.layer(layer.id[:12]).id == layer.id
    with pytest.raises(LayerUnknown):
        store.layer("nope")


def test_duplicate_names_refused_at_creation(store: Store) -> None:
    layer = store.create_layer()
    store.create_image(top_layer=layer.id, names=["img"])
    with pytest.raises(DuplicateName, match="already associated with image"):
        store.create_image(top_layer=layer.id, names=["img"])


def test_set_names_moves_names_and_keeps_history(store: Store, roots: tuple[str, str]) -> None:
    layer = store.create_layer()
    a = store.create_image(top_layer=layer.id, names=["img1"])
    b = store.create_image(top_layer=layer.id, names=["other"])
    store.set_names(a.id, ["img2"])
    store.add_names(b.id, ["img2", "third"])
    assert store.image(a.id).names == []
    assert store.image(b.id).names == ["other", "img2", "third"]
    assert store.image(a.id).names_history == ["img2"]
    store.add_names(a.id, ["x", "y"])
    assert store.image(a.id).names_history == ["y", "x", "img2"]  # Go prepends each name in turn
    store.remove_names(b.id, ["other"])
    assert store.names(b.id) == ["img2", "third"]


def test_image_digest_and_big_data(store: Store, roots: tuple[str, str]) -> None:
    layer = store.create_layer()
    image = store.create_image(top_layer=layer.id, names=["example.com/test:latest"], metadata='{"m":1}')
    manifest = b'{"schemaVersion":2}'
    store.set_big_data("image", image.id, "manifest", manifest)
    store.set_big_data("image", image.id, "sha256:0123", b"x" * 1000)
    img = store.image(image.id)
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert img.digest == digest and img.digests == [digest]
    assert img.big_data_sizes == {"manifest": len(manifest), "sha256:0123": 1000}
    assert store.images_by_digest(digest)[0].id == image.id
    files = sorted(os.listdir(os.path.join(roots[0], "vfs-images", image.id)))
    assert files == sorted(["manifest", "=" + base64.b64encode(b"sha256:0123").decode()])
    assert store.big_data("image", "example.com/test:latest", "manifest") == manifest
    store.set_big_data("layer", layer.id, "Some-Layer.Data", b"ld")
    assert os.path.exists(os.path.join(roots[0], "vfs-layers", layer.id, "=U29tZS1MYXllci5EYXRh"))
    assert store.list_big_data("layer", layer.id) == ["Some-Layer.Data"]


# ---------------------------------------------------------------- deletion rules


def test_delete_layer_safety_checks(store: Store) -> None:
    base = store.create_layer()
    child = store.create_layer(parent=base.id)
    with pytest.raises(LayerHasChildren, match=f"used by layer {child.id}"):
        store.delete_layer(base.id)
    image = store.create_image(top_layer=child.id)
    with pytest.raises(LayerUsedByImage):
        store.delete_layer(child.id)
    ctr = store.create_container(image=image.id)
    with pytest.raises(LayerUsedByContainer):
        store.delete_layer(ctr.layer)
    with pytest.raises(ImageUsedByContainer, match=f"image used by {ctr.id}"):
        store.delete_image(image.id)


def test_delete_image_cascade_and_dry_run(store: Store) -> None:
    base = store.create_layer()
    mid = store.create_layer(parent=base.id)
    top = store.create_layer(parent=mid.id)
    shared = store.create_image(top_layer=mid.id, names=["shared"])
    image = store.create_image(top_layer=top.id, names=["img"])
    assert store.delete_image(image.id, commit=False) == [top.id]
    assert store.image("img").id == image.id
    assert store.delete_image(image.id) == [top.id]
    with pytest.raises(ImageUnknown):
        store.image("img")
    assert store.delete_image(shared.id) == [mid.id, base.id]
    assert store.layers() == []


def test_delete_container_removes_layer_and_dirs(store: Store, roots: tuple[str, str]) -> None:
    image = store.create_image(top_layer=store.create_layer().id)
    ctr = store.create_container(names=["c"], image=image.id, metadata="meta")
    d1, d2 = store.container_directory("c"), store.container_run_directory("c")
    assert d1 == os.path.join(roots[0], "vfs-containers", ctr.id, "userdata") and os.path.isdir(d2)
    store.delete_container("c")
    assert not os.path.exists(os.path.dirname(d1)) and not os.path.exists(os.path.dirname(d2))
    assert [l.id for l in store.layers()] == [image.top_layer]


def test_wipe_and_shutdown(store: Store) -> None:
    image = store.create_image(top_layer=store.create_layer().id)
    ctr = store.create_container(image=image.id)
    store.mount(ctr.id)
    with pytest.raises(LayerMounted):
        store.shutdown()
    assert store.shutdown(force=True) == [ctr.layer]
    store.wipe()
    assert store.layers() == [] and store.images() == [] and store.containers() == []


# ---------------------------------------------------------------- mounts


def test_mount_counts(store: Store, roots: tuple[str, str]) -> None:
    layer = store.create_layer(names=["l"])
    path = store.mount("l")
    assert path == os.path.join(roots[0], "vfs", "dir", layer.id)
    store.mount(layer.id)
    assert read_json(os.path.join(roots[1], "vfs-layers", "mountpoints.json")) == [
        {"id": layer.id, "path": path, "count": 2}]
    assert store.unmount(path) is True
    assert store.mounted("l") == 1
    assert store.unmount("l") is False
    assert read_json(os.path.join(roots[1], "vfs-layers", "mountpoints.json")) == []


# ---------------------------------------------------------------- crash recovery


def test_incomplete_layer_removed_on_next_load(store: Store, roots: tuple[str, str]) -> None:
    layer = store.create_layer(diff=io.BytesIO(make_tar(BASE_TAR_ENTRIES)))
    store.set_big_data("layer", layer.id, "k", b"v")
    path = os.path.join(roots[0], "vfs-layers", "layers.json")
    data = json.loads(open(path).read())
    data[0]["flags"] = {"incomplete": True}
    open(path, "w").write(json.dumps(data))
    fresh = Store(*roots, driver_name="vfs")
    assert fresh.layers() == []
    assert read_json(path) == []
    assert not os.path.exists(os.path.join(roots[0], "vfs", "dir", layer.id))
    assert not os.path.exists(os.path.join(roots[0], "vfs-layers", layer.id))


def _canonical(path: str) -> bytes:
    """The bytes a fresh encoding of *path*'s records gives (what Go's json.Marshal writes)."""
    from lamina.metastore import records_json
    from lamina.records import Layer

    return records_json([Layer.from_json(r) for r in read_json(path)])


def test_saving_keeps_unchanged_records_bytes(store: Store, roots: tuple[str, str]) -> None:
    # A save that only adds records re-encodes only those; the file must equal a full encoding
    # after appends, changes to an old record, removals, and a reload by another object.
    path = os.path.join(roots[0], "vfs-layers", "layers.json")
    first = store.create_layer(names=["a"])
    for name in ("b", "c"):
        store.create_layer(names=[name], parent=first.id)
    assert open(path, "rb").read() == _canonical(path)
    store.set_names(first.id, ["a", "a2"])  # changes the first record: everything re-encoded
    other = Store(*roots, driver_name="vfs")
    other.create_layer(names=["d"])  # appends after a reload
    store.create_layer(names=["e"])
    store.delete_layer("c")
    data = open(path, "rb").read()
    assert data == _canonical(path)
    assert [l["names"] for l in json.loads(data)] == [["a", "a2"], ["b"], ["d"], ["e"]]


def test_saving_after_another_writers_formatting(store: Store, roots: tuple[str, str]) -> None:
    # Another writer's spacing is kept for the records it wrote; what lamina adds is valid JSON.
    path = os.path.join(roots[0], "vfs-layers", "layers.json")
    store.create_layer(names=["a"])
    records = read_json(path)
    with open(path, "w") as f:
        f.write(json.dumps(records, indent=2) + "\n")
    other = Store(*roots, driver_name="vfs")
    other.create_layer(names=["b"])
    assert [l["names"] for l in read_json(path)] == [["a"], ["b"]]
    assert [l.names for l in Store(*roots, driver_name="vfs").layers()] == [["a"], ["b"]]


def test_containers_with_id_maps_go_on_a_mapped_copy_of_the_top_layer(store: Store, roots: tuple[str, str]) -> None:
    maps = IDMappings((IDMap(0, 100000, 65536),), (IDMap(0, 100000, 65536),))
    top = store.create_layer(diff=io.BytesIO(make_tar(BASE_TAR_ENTRIES)), writeable=False)
    store.create_image(names=["img"], top_layer=top.id)
    first = store.create_container(image="img", id_mappings=maps)
    second = store.create_container(image="img", id_mappings=maps)
    plain = store.create_container(image="img")
    image = store.image("img")
    assert len(image.mapped_top_layers) == 1, "one copy per mapping, reused"
    mapped = store.layer(image.mapped_top_layers[0])
    assert store.layer(first.layer).parent == store.layer(second.layer).parent == mapped.id
    assert store.layer(plain.layer).parent == top.id
    assert (mapped.uidmap, mapped.gidmap) == (maps.uid_map, maps.gid_map) and not mapped.parent
    assert (mapped.uncompressed_digest, mapped.uncompressed_size, mapped.uidset) == (
        top.uncompressed_digest, top.uncompressed_size, top.uidset)
    with store.diff(None, mapped.id) as got, store.diff(None, top.id) as want:
        assert got.read() == want.read(), "the copy's tar-split rebuilds the same diff"
    hello = os.path.join("etc", "hello.txt")
    assert os.stat(os.path.join(roots[0], "vfs", "dir", mapped.id, hello)).st_uid == 100000
    assert os.stat(os.path.join(roots[0], "vfs", "dir", top.id, hello)).st_uid == 0
    for ctr in (first, second, plain):
        store.delete_container(ctr.id)
    store.delete_image("img")
    assert [l.id for l in store.layers()] == []


def test_other_object_sees_changes(store: Store, roots: tuple[str, str]) -> None:
    other = Store(*roots, driver_name="vfs")
    layer = store.create_layer(names=["seen"])
    assert other.layer("seen").id == layer.id
    other.set_names(layer.id, ["renamed"])
    assert store.names(layer.id) == ["renamed"]


# ---------------------------------------------------------------- 1.62 layouts


def test_volatile_files_are_read_and_written_back(roots: tuple[str, str]) -> None:
    store = Store(*roots, driver_name="vfs")
    image = store.create_image(top_layer=store.create_layer().id)
    ctr = store.create_container(image=image.id, volatile=True, names=["v"])
    assert store.container("v").flags == {"MountLabel": "", "ProcessLabel": "", "Volatile": True}
    # Default: stays in containers.json, which 1.43 can read.
    assert [c["id"] for c in read_json(os.path.join(roots[0], "vfs-containers", "containers.json"))] == [ctr.id]
    # Lay out what 1.62 writes: the container and its layer in the volatile files.
    cjson = os.path.join(roots[0], "vfs-containers", "containers.json")
    ljson = os.path.join(roots[0], "vfs-layers", "layers.json")
    ctrs, layers = read_json(cjson), read_json(ljson)
    vlayer = [l for l in layers if l["id"] == ctr.layer]
    open(cjson, "w").write("[]")
    open(ljson, "w").write(json.dumps([l for l in layers if l["id"] != ctr.layer]))
    open(os.path.join(roots[0], "vfs-containers", "volatile-containers.json"), "w").write(json.dumps(ctrs))
    open(os.path.join(roots[0], "vfs-layers", "volatile-layers.json"), "w").write(json.dumps(vlayer))
    fresh = Store(*roots, driver_name="vfs")
    assert fresh.container("v").layer == ctr.layer
    fresh.set_metadata("v", "changed")
    assert read_json(os.path.join(roots[0], "vfs-containers", "volatile-containers.json"))[0]["metadata"] == "changed"
    assert read_json(cjson) == []
    fresh.delete_container("v")
    assert read_json(os.path.join(roots[0], "vfs-layers", "volatile-layers.json")) == []


def test_transient_store_keeps_containers_in_run_root(roots: tuple[str, str]) -> None:
    store = Store(*roots, driver_name="vfs", transient_store=True)
    image = store.create_image(top_layer=store.create_layer().id)
    ctr = store.create_container(image=image.id)
    runfile = os.path.join(roots[1], "vfs-containers", "volatile-containers.json")
    assert [c["id"] for c in read_json(runfile)] == [ctr.id]
    assert [l["id"] for l in read_json(os.path.join(roots[1], "vfs-layers", "volatile-layers.json"))] == [ctr.layer]
    assert ctr.layer not in [l["id"] for l in read_json(os.path.join(roots[0], "vfs-layers", "layers.json"))]
    plain = Store(*roots, driver_name="vfs")
    assert plain.containers() == []


# ---------------------------------------------------------------- additional read-only image stores


def test_additional_image_store_is_read_only(tmp_path: Path) -> None:
    ro_roots = (str(tmp_path / "ro-graph"), str(tmp_path / "ro-run"))
    ro = Store(*ro_roots, driver_name="vfs")
    layer = ro.create_layer(diff=io.BytesIO(make_tar(BASE_TAR_ENTRIES)))
    image = ro.create_image(top_layer=layer.id, names=["ro-image"])
    main = Store(str(tmp_path / "g"), str(tmp_path / "r"), driver_name="vfs",
                 driver_options=[f"vfs.imagestore={ro_roots[0]}"])
    assert main.image("ro-image").id == image.id and main.image("ro-image").read_only
    assert main.layer(layer.id).read_only
    with pytest.raises(StoreIsReadOnly):
        main.set_names("ro-image", ["x"])
    with pytest.raises(StoreIsReadOnly):
        main.delete_image("ro-image")
    ctr = main.create_container(image="ro-image")
    with open(os.path.join(main.mount(ctr.id), "etc", "hello.txt")) as f:
        assert f.read() == "hello\n"
    main.unmount(ctr.id)


# ---------------------------------------------------------------- sharing with the Go tool


@needs_go
def test_go_reads_what_lamina_writes(store: Store, roots: tuple[str, str]) -> None:
    base = store.create_layer(names=["base-layer"], diff=io.BytesIO(make_tar(BASE_TAR_ENTRIES)))
    image = store.create_image(top_layer=base.id, names=["example.com/test:latest", "other"], metadata="m<&>")
    store.set_big_data("image", image.id, "manifest", b'{"schemaVersion":2}')
    store.set_big_data("image", image.id, "sha256:0123", os.urandom(3000))
    ctr = store.create_container(image=image.id, names=["ctr1"], metadata="container-meta")
    store.set_big_data("container", ctr.id, "config.json", b"{}")
    ours = {
        "layers": [l.to_json() for l in store.layers()],
        "images": [i.to_json() for i in store.images()],
        "containers": [c.to_json() for c in store.containers()],
    }
    for what in ours:
        assert json.loads(go(roots, what, "-j")) == ours[what], what
    assert go(roots, "metadata", "-q", image.id) == "m<&>\n"
    assert go(roots, "get-image-data-digest", image.id, "manifest").strip() == store.image(image.id).digest
    got = subprocess.run([GO or "", "--graph", roots[0], "--run", roots[1], "--storage-driver", "vfs",
                          "get-image-data", image.id, "sha256:0123"], capture_output=True).stdout
    assert got == store.big_data("image", image.id, "sha256:0123")
    assert go(roots, "get-names", "ctr1") == "ctr1\n"


@needs_go
def test_lamina_reads_what_go_writes(roots: tuple[str, str], tmp_path: Path) -> None:
    tar = tmp_path / "base.tar"
    tar.write_bytes(make_tar(BASE_TAR_ENTRIES))
    layer_id = go(roots, "create-layer", "-n", "gl").split()[0]
    go(roots, "applydiff", "-f", str(tar), layer_id)
    image_id = go(roots, "create-image", "-n", "gi", "-m", "meta", layer_id).split()[0]
    (tmp_path / "m").write_bytes(b'{"x":1}')
    go(roots, "set-image-data", "-f", str(tmp_path / "m"), image_id, "manifest")
    go(roots, "create-container", "-n", "gc", image_id)
    go(roots, "mount", "gc")
    store = Store(*roots, driver_name="vfs")
    for what, objs in (("layers", store.layers()), ("images", store.images()), ("containers", store.containers())):
        assert [o.to_json() for o in objs] == json.loads(go(roots, what, "-j")), what
    assert store.mounted("gc") == 1
    assert store.big_data("image", "gi", "manifest") == b'{"x":1}'
    store.unmount("gc")
    assert go(roots, "mounted", "gc", check=False) == ""


@needs_go
def test_interleaved_writes_lose_nothing(store: Store, roots: tuple[str, str]) -> None:
    made = []
    for i in range(5):
        made.append(store.create_layer(names=[f"lam{i}"]).id)
        made.append(go(roots, "create-layer", "-n", f"go{i}").split()[0])
    go(roots, "add-names", "-n", "extra", made[0])
    store.add_names(made[1], ["extra2"])
    ids = {l.id for l in store.layers()}
    assert ids == set(made)
    assert store.names(made[0]) == ["lam0", "extra"]
    assert json.loads(go(roots, "layers", "-j"))[1]["names"] == ["go0", "extra2"]


def test_split_image_store_layout(tmp_path: Path) -> None:
    """1.62's --image-store: images and read-only layers in a second root, container layers in the graph root."""
    graph, run, images = str(tmp_path / "g"), str(tmp_path / "r"), str(tmp_path / "images")
    store = Store(graph, run, driver_name="vfs", image_store=images)
    base = store.create_layer(writeable=False, diff=io.BytesIO(make_tar(BASE_TAR_ENTRIES)))
    image = store.create_image(top_layer=base.id, names=["split"])
    ctr = store.create_container(image="split", names=["c"])
    assert [l["id"] for l in read_json(os.path.join(images, "vfs-layers", "layers.json"))] == [base.id]
    assert [l["id"] for l in read_json(os.path.join(graph, "vfs-layers", "layers.json"))] == [ctr.layer]
    assert [i["id"] for i in read_json(os.path.join(images, "vfs-images", "images.json"))] == [image.id]
    assert os.path.isdir(os.path.join(images, "vfs", "dir", base.id))
    assert os.path.isdir(os.path.join(graph, "vfs", "dir", ctr.layer))
    assert len(open(os.path.join(images, "vfs-layers", "layers.lock"), "rb").read()) == 64
    with open(os.path.join(store.mount("c"), "etc", "hello.txt")) as f:
        assert f.read() == "hello\n"
    store.unmount("c")
    reopened = Store(graph, run, driver_name="vfs", image_store=images)
    assert {l.id for l in reopened.layers()} == {base.id, ctr.layer}
    if GO is not None:
        # 1.43 sees the split image store as an additional read-only store.
        out = subprocess.run([GO, "--graph", graph, "--run", run, "--storage-driver", "vfs",
                              "--storage-opt", f"vfs.imagestore={images}", "images", "-j"],
                             capture_output=True, text=True, check=True).stdout
        assert [i["id"] for i in json.loads(out)] == [image.id]
    reopened.delete_container("c")
    assert reopened.delete_image("split") == [base.id]
    assert not os.path.exists(os.path.join(images, "vfs", "dir", base.id))


def test_open_from_storage_conf_with_additional_image_store(tmp_path: Path) -> None:
    from lamina.config import load_store_options

    ro_roots = (str(tmp_path / "ro-g"), str(tmp_path / "ro-r"))
    ro = Store(*ro_roots, driver_name="vfs")
    ro.create_image(top_layer=ro.create_layer().id, names=["from-conf"])
    conf = tmp_path / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path / "g"}"\nrunroot = "{tmp_path / "r"}"\n'
        f'[storage.options]\nadditionalimagestores = ["{ro_roots[0]}"]\n'
    )
    opts = load_store_options(rootless=False, path=str(conf), environ={})
    store = Store.open(opts)
    assert store.driver_name == "vfs"
    assert store.image("from-conf").read_only
