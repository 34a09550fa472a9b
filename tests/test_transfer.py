"""Images in and out (lamina.transfer): OCI layouts and docker archives, checked against skopeo and podman.

The interop tests run skopeo and podman as interop-smoke.sh does: inside a private mount and
network namespace with tmpfs over /run and /var/tmp, so nothing on the host is touched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest

from lamina.errors import ArchiveError
from lamina.store import Store
from lamina.testing.interop import sandbox
from lamina.transfer import (
    ImageFormatError,
    TransferError,
    chain_layer_ids,
    export_image,
    import_image,
    normalize_name,
    parse_reference,
)

MAKE_TEST_IMAGE = Path("/work/shared/tools/make-test-image.sh")
GO = shutil.which("containers-storage")
SKOPEO = shutil.which("skopeo")
PODMAN = shutil.which("podman")
UNSHARE = shutil.which("unshare")
IS_ROOT = os.geteuid() == 0

needs_go = pytest.mark.skipif(GO is None, reason="Go containers-storage not installed (apt-get install containers-storage)")
needs_sandbox = pytest.mark.skipif(not (IS_ROOT and UNSHARE),
                                   reason="the skopeo/podman sandbox needs root and unshare(1)")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed (apt-get install skopeo)")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = LAYER_TAR + "+gzip"
LAYER_ZSTD = LAYER_TAR + "+zstd"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def cjson(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# ---------------------------------------------------------------- building OCI layouts


@dataclass
class Layout:
    """An OCI layout on disk and what it holds (for building variants and checking results)."""

    dir: Path
    manifest_digest: str = ""
    config: bytes = b""
    diff_ids: list[str] = field(default_factory=list)
    layer_descs: list[dict[str, Any]] = field(default_factory=list)

    def blob(self, digest: str) -> Path:
        return self.dir / "blobs" / "sha256" / digest.split(":", 1)[1]

    def put(self, data: bytes) -> str:
        digest = sha256(data)
        path = self.blob(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return digest

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.blob(self.manifest_digest).read_bytes())

    @classmethod
    def read(cls, directory: Path, tag: str | None = None) -> "Layout":
        index = json.loads((directory / "index.json").read_bytes())
        entries = index["manifests"]
        if tag is not None:
            entries = [e for e in entries if (e.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag]
        out = cls(directory, entries[0]["digest"])
        manifest = out.manifest()
        out.config = out.blob(manifest["config"]["digest"]).read_bytes()
        out.diff_ids = json.loads(out.config)["rootfs"]["diff_ids"]
        out.layer_descs = manifest["layers"]
        return out


def write_layout(directory: Path, layers: list[tuple[str, bytes]], diff_ids: list[str], *, tag: str = "latest",
                 created: str = "2024-01-01T00:00:00Z", layer_media_override: dict[int, str] | None = None) -> Layout:
    """A one-image OCI layout from (media type, blob) pairs; returns its Layout."""
    out = Layout(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    descs = []
    for i, (media, blob) in enumerate(layers):
        media = (layer_media_override or {}).get(i, media)
        descs.append({"mediaType": media, "digest": out.put(blob), "size": len(blob)})
    config = cjson({"created": created, "architecture": GOARCH, "os": "linux",
                    "config": {"Cmd": ["/bin/sh"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    cdigest = out.put(config)
    manifest = cjson({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": len(config)}, "layers": descs})
    out.manifest_digest = out.put(manifest)
    (directory / "index.json").write_bytes(cjson({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": out.manifest_digest, "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    out.config, out.diff_ids, out.layer_descs = config, diff_ids, descs
    return out


def make_tar(files: dict[str, bytes], whiteouts: tuple[str, ...] = ()) -> bytes:
    """A small deterministic layer tar: directories for the parents, then the files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        dirs = sorted({os.path.dirname(p) for p in [*files, *whiteouts] if os.path.dirname(p)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1704067200
            tar.addfile(info)
        for name in whiteouts:
            wh = tarfile.TarInfo(os.path.join(os.path.dirname(name), ".wh." + os.path.basename(name)))
            wh.mtime = 1704067200
            tar.addfile(wh, io.BytesIO(b""))
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1704067200
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def layer_tars(layout: Layout) -> list[bytes]:
    """The uncompressed tars of a layout's layers."""
    out = []
    for desc in layout.layer_descs:
        blob = layout.blob(desc["digest"]).read_bytes()
        if blob[:2] == b"\x1f\x8b":
            blob = gzip.decompress(blob)
        elif blob[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard

            blob = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
        out.append(blob)
    return out


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def test_image(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """The image make-test-image.sh builds (busybox rootfs + a layer that adds, modifies, deletes)."""
    for tool in ("jq", "busybox"):
        if shutil.which(tool) is None:
            pytest.skip(f"make-test-image.sh needs {tool} (apt-get install jq busybox-static)")
    if not MAKE_TEST_IMAGE.exists():
        pytest.skip(f"{MAKE_TEST_IMAGE} is missing")
    out = tmp_path_factory.mktemp("testimage") / "img"
    env = dict(os.environ, BUSYBOX=shutil.which("busybox") or "/bin/busybox")
    subprocess.run(["bash", str(MAKE_TEST_IMAGE), str(out)], check=True, capture_output=True, env=env)
    return Layout.read(out)


@pytest.fixture(scope="session")
def second_image(test_image: Layout, tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """Another image on the same base layer, with a different second layer."""
    base = test_image.blob(test_image.layer_descs[0]["digest"]).read_bytes()
    top = make_tar({"etc/second": b"second image\n"}, whiteouts=("etc/motd",))
    return write_layout(tmp_path_factory.mktemp("second") / "img", [(LAYER_GZIP, base), (LAYER_GZIP, gz(top))],
                        [test_image.diff_ids[0], sha256(top)])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "graph"), str(tmp_path / "run"), driver_name="vfs")


def go_layers(store: Store) -> str:
    proc = subprocess.run([GO or "containers-storage", "--graph", store.graph_root, "--run", store.run_root,
                           "--storage-driver", "vfs", "layers"], capture_output=True, text=True, check=True)
    return proc.stdout


def snapshot(store: Store) -> tuple[list[tuple[str, str, str]], list[tuple[str, tuple[str, ...]]], list[str]]:
    """Layers, images and the vfs layer directories of a store."""
    layers = sorted((l.id, l.parent, l.uncompressed_digest) for l in store.layers())
    images = sorted((i.id, tuple(i.names)) for i in store.images())
    vfs_dir = Path(store.graph_root) / "vfs" / "dir"
    dirs = sorted(os.listdir(vfs_dir)) if vfs_dir.exists() else []
    return layers, images, dirs


# ---------------------------------------------------------------- the sandbox for skopeo and podman


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    proc = sandbox(SKOPEO or "skopeo", *args)
    assert proc.returncode == 0, f"skopeo {' '.join(args)} failed:\n{proc.stderr}"
    return proc


def cs_ref(store_or_roots: Any, name: str) -> str:
    g, r = ((store_or_roots.graph_root, store_or_roots.run_root) if isinstance(store_or_roots, Store)
            else store_or_roots)
    return f"containers-storage:[vfs@{g}+{r}]{name}"


# ---------------------------------------------------------------- references, names, IDs


def test_parse_reference() -> None:
    assert parse_reference("oci:/x/y:latest") == parse_reference("oci:/x/y:latest")
    ref = parse_reference("oci:/x/y:v1")
    assert (ref.transport, ref.path, ref.ref) == ("oci", "/x/y", "v1")
    assert parse_reference("oci:/x").ref == ""
    ref = parse_reference("docker-archive:/a.tar:foo/bar:1")
    assert (ref.transport, ref.path, ref.ref) == ("docker-archive", "/a.tar", "foo/bar:1")
    for bad in ("docker://busybox", "/just/a/path", "oci:", "dir:/x"):
        with pytest.raises(TransferError):
            parse_reference(bad)


@pytest.mark.parametrize("name,normal", [
    ("test", "docker.io/library/test:latest"),
    ("test:latest", "docker.io/library/test:latest"),
    ("foo/bar:1.0", "docker.io/foo/bar:1.0"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/x:y", "docker.io/library/x:y"),
    ("localhost/x", "localhost/x:latest"),
    ("localhost:5000/a/b:c", "localhost:5000/a/b:c"),
    ("quay.io/a/b", "quay.io/a/b:latest"),
    ("quay.io/a/b@sha256:" + "0" * 64, "quay.io/a/b@sha256:" + "0" * 64),
])
def test_normalize_name(name: str, normal: str) -> None:
    assert normalize_name(name) == normal


@pytest.mark.parametrize("bad", ["Test", "docker.io/Foo/bar", "a:b:c", "x:-tag", "quay.io/a@sha256:12", ""])
def test_normalize_name_rejects(bad: str) -> None:
    with pytest.raises(TransferError):
        normalize_name(bad)


def test_chain_layer_ids_matches_skopeo() -> None:
    # Recorded from `skopeo copy oci:... containers-storage:[vfs@...]` (skopeo 1.9.3) of the test image.
    d1 = "sha256:ad01dc57775d823db400de5065a8b6ca443e7fdb884bce663d56db6ac4ea4d46"
    d2 = "sha256:4588b6478f21d7deb03b7a61e2053a661c46d034719f2e3ad1e1d0422e86b567"
    assert chain_layer_ids([d1, d2]) == [
        "ad01dc57775d823db400de5065a8b6ca443e7fdb884bce663d56db6ac4ea4d46",
        "e15949f65ef4eac02c3aa1aa117e39d9e7b5434a17eef440c26175c8fdfa8716",
    ]


# ---------------------------------------------------------------- import


def check_tree(store: Store, image_id: str) -> None:
    """A container of the image sees layer 2's changes: etc/added, the new motd, no etc/deleteme."""
    ctr = store.create_container(image=image_id)
    try:
        with store.mounted_layer(ctr.id) as root:
            assert Path(root, "etc/added").read_text() == "added in layer2\n"
            assert Path(root, "etc/motd").read_text() == "layer2 motd\n"
            assert not os.path.lexists(os.path.join(root, "etc/deleteme"))
            assert os.path.isfile(os.path.join(root, "bin/busybox"))
            assert os.readlink(os.path.join(root, "bin/sh")) == "busybox"
    finally:
        store.delete_container(ctr.id)


def test_import_oci(store: Store, test_image: Layout) -> None:
    image = import_image(store, f"oci:{test_image.dir}:latest", "test:latest")
    config_digest = test_image.manifest()["config"]["digest"]
    assert image.id == config_digest.split(":")[1]
    assert image.names == ["docker.io/library/test:latest"]
    assert image.names_history == ["docker.io/library/test:latest"]
    assert image.digest == test_image.manifest_digest
    assert image.created == "2024-01-01T00:00:00Z"
    md = test_image.manifest_digest
    assert image.big_data_names == [config_digest, f"manifest-{md}", "manifest", f"signature-{md.split(':')[1]}"]
    assert store.big_data("image", image.id, config_digest) == test_image.config
    assert store.big_data("image", image.id, "manifest") == test_image.blob(md).read_bytes()
    assert store.big_data("image", image.id, f"signature-{md.split(':')[1]}") == b""
    assert json.loads(image.metadata) == {"signatures-sizes": {md: []}}
    ids = chain_layer_ids(test_image.diff_ids)
    assert image.top_layer == ids[-1]
    for layer_id, diff_id, desc in zip(ids, test_image.diff_ids, test_image.layer_descs):
        layer = store.layer(layer_id)
        assert layer.uncompressed_digest == diff_id
        assert layer.compressed_digest == desc["digest"]
        assert layer.compressed_size == desc["size"]
        assert layer.compression == 2
    assert store.layer(ids[1]).parent == ids[0]
    check_tree(store, image.id)


def test_import_twice_and_shared_base(store: Store, test_image: Layout, second_image: Layout) -> None:
    first = import_image(store, f"oci:{test_image.dir}", "test")
    base_id = chain_layer_ids(test_image.diff_ids)[0]
    base_created = store.layer(base_id).created
    again = import_image(store, f"oci:{test_image.dir}:latest", "localhost/again")
    assert again.id == first.id
    assert len(store.layers()) == 2 and len(store.images()) == 1
    assert again.names == ["localhost/again:latest", "docker.io/library/test:latest"]
    other = import_image(store, f"oci:{second_image.dir}", "second")
    assert other.id != first.id
    assert len(store.layers()) == 3, "the shared base layer must be stored once"
    assert store.layer(base_id).created == base_created, "the base layer was re-applied"
    assert store.layer(other.top_layer).parent == base_id
    ctr = store.create_container(image=other.id)
    try:
        with store.mounted_layer(ctr.id) as root:
            assert Path(root, "etc/second").read_text() == "second image\n"
            assert not os.path.lexists(os.path.join(root, "etc/motd"))
            assert Path(root, "etc/deleteme").exists()
    finally:
        store.delete_container(ctr.id)
    # deleting one image keeps the other's layers
    store.delete_image(first.id)
    assert {l.id for l in store.layers()} == {base_id, other.top_layer}


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_import_other_compressions(store: Store, test_image: Layout, tmp_path: Path, compression: str) -> None:
    tars = layer_tars(test_image)
    if compression == "none":
        layers = [(LAYER_TAR, t) for t in tars]
        expected = 0
    else:
        zstandard = pytest.importorskip("zstandard", reason="zstd layers need the zstandard package")
        layers = [(LAYER_ZSTD, zstandard.ZstdCompressor().compress(t)) for t in tars]
        expected = 4
    layout = write_layout(tmp_path / "img", layers, test_image.diff_ids)
    image = import_image(store, f"oci:{layout.dir}:latest", "recompressed")
    assert [l.id for l in store.layers()] == chain_layer_ids(test_image.diff_ids)
    for layer, desc in zip(store.layers(), layout.layer_descs):
        assert layer.compression == expected
        assert layer.compressed_digest == desc["digest"]
    check_tree(store, image.id)


def test_import_nested_index_picks_this_platform(store: Store, test_image: Layout, tmp_path: Path) -> None:
    layout = tmp_path / "multi"
    shutil.copytree(test_image.dir, layout)
    lay = Layout.read(layout)
    real = json.loads((layout / "index.json").read_bytes())["manifests"][0]
    other_arch = "arm64" if GOARCH != "arm64" else "amd64"
    inner = cjson({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 99,  # never read: other platform
         "platform": {"architecture": other_arch, "os": "linux"}},
        {"mediaType": OCI_MANIFEST, "digest": real["digest"], "size": real["size"],
         "platform": {"architecture": GOARCH, "os": "linux"}}]})
    list_digest = lay.put(inner)
    (layout / "index.json").write_bytes(cjson({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_INDEX, "digest": list_digest, "size": len(inner),
         "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}))
    image = import_image(store, f"oci:{layout}:multi", "multi")
    md = test_image.manifest_digest
    assert image.digest == list_digest
    assert image.big_data_names == [test_image.manifest()["config"]["digest"], f"manifest-{list_digest}",
                                    f"manifest-{md}", "manifest", f"signature-{md.split(':')[1]}"]
    assert store.big_data("image", image.id, f"manifest-{list_digest}") == inner
    assert json.loads(image.metadata) == {"signatures-sizes": {md: []}}
    check_tree(store, image.id)


def docker_archive(path: Path, layout: Layout, repo_tags: list[str], *, compress: bool = False,
                   legacy_dirs: bool = False) -> Path:
    """A `docker save`-style archive of *layout*'s image."""
    config_hex = sha256(layout.config).split(":")[1]
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        names = []
        for i, t in enumerate(layer_tars(layout)):
            if legacy_dirs:
                name = f"{i:064x}/layer.tar"
            else:
                name = sha256(t).split(":")[1] + ".tar"
            add(name, gz(t) if compress else t)
            names.append(name)
        add(f"{config_hex}.json", layout.config)
        add("manifest.json", cjson([{"Config": f"{config_hex}.json", "RepoTags": repo_tags, "Layers": names}]))
    return path


@pytest.mark.parametrize("variant", ["plain", "gzip-legacy"])
def test_import_docker_archive(store: Store, test_image: Layout, tmp_path: Path, variant: str) -> None:
    archive = docker_archive(tmp_path / "a.tar", test_image, ["foo/bar:v1", "localhost/x:2"],
                             compress=variant != "plain", legacy_dirs=variant != "plain")
    image = import_image(store, f"docker-archive:{archive}")
    assert image.id == sha256(test_image.config).split(":")[1]
    assert image.names == ["docker.io/foo/bar:v1", "localhost/x:2"]
    manifest = store.big_data("image", image.id, "manifest")
    assert image.digest == sha256(manifest)
    doc = json.loads(manifest)
    assert [l["digest"] for l in doc["layers"]] == test_image.diff_ids
    assert [l["size"] for l in doc["layers"]] == [len(t) for t in layer_tars(test_image)]
    for layer in store.layers():  # stored as containers/image hands them over: uncompressed
        assert layer.compression == 0
        assert layer.compressed_digest == layer.uncompressed_digest
    check_tree(store, image.id)
    named = import_image(store, f"docker-archive:{archive}:localhost/x:2", "picked")
    assert named.id == image.id and named.names[0] == "docker.io/library/picked:latest"


def test_import_unnamed_and_choice_errors(store: Store, test_image: Layout, second_image: Layout,
                                          tmp_path: Path) -> None:
    image = import_image(store, f"oci:{test_image.dir}")
    assert image.names == []
    with pytest.raises(TransferError, match="no image tagged"):
        import_image(store, f"oci:{test_image.dir}:nope")
    both = tmp_path / "both"
    shutil.copytree(test_image.dir, both)
    shutil.copytree(second_image.dir, both, dirs_exist_ok=True)
    index = {"schemaVersion": 2, "manifests": [
        json.loads((test_image.dir / "index.json").read_bytes())["manifests"][0],
        {**json.loads((second_image.dir / "index.json").read_bytes())["manifests"][0],
         "annotations": {"org.opencontainers.image.ref.name": "second"}}]}
    (both / "index.json").write_bytes(cjson(index))
    with pytest.raises(TransferError, match="holds 2 images"):
        import_image(store, f"oci:{both}")
    assert import_image(store, f"oci:{both}:second").id == sha256(second_image.config).split(":")[1]


# ---------------------------------------------------------------- bad input leaves nothing behind


def corrupt_missing_blob(lay: Layout) -> None:
    lay.blob(lay.layer_descs[1]["digest"]).unlink()


def corrupt_digest(lay: Layout) -> None:
    path = lay.blob(lay.layer_descs[1]["digest"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))


def corrupt_size(lay: Layout) -> None:
    path = lay.blob(lay.layer_descs[1]["digest"])
    path.write_bytes(path.read_bytes() + b"\0")


def corrupt_diff_id(lay: Layout) -> None:
    rewrite(lay, config_edit=lambda c: c["rootfs"]["diff_ids"].__setitem__(1, sha256(b"something else")))


def corrupt_media_type(lay: Layout) -> None:
    rewrite(lay, manifest_edit=lambda m: m["layers"][1].__setitem__("mediaType",
                                                                    "application/vnd.oci.image.layer.v1.tar+bzip2"))


def corrupt_config_media_type(lay: Layout) -> None:
    rewrite(lay, manifest_edit=lambda m: m["config"].__setitem__("mediaType", "application/vnd.example+json"))


def corrupt_truncated_gzip(lay: Layout) -> None:
    # The blob and its descriptor agree; only decompressing it fails.
    desc = lay.layer_descs[1]
    data = lay.blob(desc["digest"]).read_bytes()
    short = data[: len(data) // 2]
    new = lay.put(short)

    def edit(m: dict[str, Any]) -> None:
        m["layers"][1].update(digest=new, size=len(short))
    rewrite(lay, manifest_edit=edit)


def corrupt_truncated_tar(lay: Layout) -> None:
    # Valid gzip of a tar cut in the middle of a file body.
    desc = lay.layer_descs[1]
    tar = gzip.decompress(lay.blob(desc["digest"]).read_bytes())
    cut = gz(tar[:1536 + 7])
    new = lay.put(cut)
    rewrite(lay, manifest_edit=lambda m: m["layers"][1].update(digest=new, size=len(cut)))


def rewrite(lay: Layout, manifest_edit: Callable[[dict[str, Any]], None] | None = None,
            config_edit: Callable[[dict[str, Any]], None] | None = None) -> None:
    manifest = lay.manifest()
    if config_edit is not None:
        config = json.loads(lay.config)
        config_edit(config)
        data = cjson(config)
        manifest["config"].update(digest=lay.put(data), size=len(data))
    if manifest_edit is not None:
        manifest_edit(manifest)
    data = cjson(manifest)
    lay.manifest_digest = lay.put(data)
    index = json.loads((lay.dir / "index.json").read_bytes())
    index["manifests"][0].update(digest=lay.manifest_digest, size=len(data))
    (lay.dir / "index.json").write_bytes(cjson(index))


BAD_INPUTS = {
    "missing blob": (corrupt_missing_blob, "missing"),
    "digest mismatch": (corrupt_digest, "digest mismatch"),
    "size mismatch": (corrupt_size, "descriptor says"),
    "diff_id mismatch": (corrupt_diff_id, "diff_id"),
    "unsupported layer media type": (corrupt_media_type, "unsupported media type"),
    "unsupported config media type": (corrupt_config_media_type, "unsupported config media type"),
    "truncated gzip": (corrupt_truncated_gzip, "cannot be applied"),
    "truncated tar": (corrupt_truncated_tar, "cannot be applied"),
}


@needs_go
@pytest.mark.parametrize("prepopulated", [False, True], ids=["fresh-store", "base-already-stored"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_leaves_nothing(store: Store, test_image: Layout, second_image: Layout, tmp_path: Path,
                                  case: str, prepopulated: bool) -> None:
    corrupt, message = BAD_INPUTS[case]
    bad = tmp_path / "bad"
    shutil.copytree(second_image.dir, bad)
    lay = Layout.read(bad)
    corrupt(lay)
    if prepopulated:
        import_image(store, f"oci:{test_image.dir}", "test")
    before, go_before = snapshot(store), go_layers(store)
    with pytest.raises(ImageFormatError, match=message) as info:
        import_image(store, f"oci:{bad}:latest", "bad")
    assert isinstance(info.value, ArchiveError)
    assert snapshot(store) == before
    assert go_layers(store) == go_before
    leftovers = {p.name for p in (Path(store.graph_root) / "vfs-layers").glob("*.tar-split.gz")}
    assert leftovers == {f"{l[0]}.tar-split.gz" for l in before[0]}
    # the store still works and the good image imports afterwards
    image = import_image(store, f"oci:{second_image.dir}", "good")
    assert store.layer(image.top_layer).uncompressed_digest == second_image.diff_ids[1]


def test_bad_docker_archive(store: Store, test_image: Layout, tmp_path: Path) -> None:
    tars = layer_tars(test_image)
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("l1.tar", tars[0]), ("l2.tar", make_tar({"etc/other": b"not the layer the config describes"})),
                           ("c.json", test_image.config),
                           ("manifest.json", cjson([{"Config": "c.json", "RepoTags": ["x"],
                                                      "Layers": ["l1.tar", "l2.tar"]}]))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ImageFormatError, match="digest mismatch"):
        import_image(store, f"docker-archive:{path}")
    assert store.layers() == [] and store.images() == []
    missing = docker_archive(tmp_path / "m.tar", test_image, ["x"])
    with tarfile.open(missing) as src, tarfile.open(tmp_path / "m2.tar", "w") as dst:
        for member in src.getmembers():
            if member.name != sha256(tars[1]).split(":")[1] + ".tar":
                dst.addfile(member, src.extractfile(member))
    with pytest.raises(ImageFormatError, match="missing"):
        import_image(store, f"docker-archive:{tmp_path / 'm2.tar'}")
    assert store.layers() == []


# ---------------------------------------------------------------- export


def check_exported(out: Path, tag: str, test_image: Layout, media: str) -> Layout:
    """The exported layout has the same config bytes and diff_ids, and every blob hashes right."""
    lay = Layout.read(out, tag)
    assert lay.config == test_image.config
    assert lay.diff_ids == test_image.diff_ids
    manifest = lay.manifest()
    assert manifest["mediaType"] == OCI_MANIFEST
    assert sha256(lay.blob(lay.manifest_digest).read_bytes()) == lay.manifest_digest
    assert sha256(lay.config) == manifest["config"]["digest"]
    for desc in manifest["layers"]:
        blob = lay.blob(desc["digest"]).read_bytes()
        assert sha256(blob) == desc["digest"] and len(blob) == desc["size"]
        assert desc["mediaType"] == media
    assert [sha256(t) for t in layer_tars(lay)] == test_image.diff_ids
    index = json.loads((out / "index.json").read_bytes())
    assert any(e["digest"] == lay.manifest_digest and e["annotations"]["org.opencontainers.image.ref.name"] == tag
               for e in index["manifests"])
    assert json.loads((out / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    return lay


def test_export_round_trip(store: Store, test_image: Layout, tmp_path: Path) -> None:
    import_image(store, f"oci:{test_image.dir}", "test")
    out = tmp_path / "out"
    digest = export_image(store, "test", f"oci:{out}:latest")
    lay = check_exported(out, "latest", test_image, LAYER_TAR)
    assert digest == lay.manifest_digest
    assert [d["digest"] for d in lay.layer_descs] == test_image.diff_ids  # uncompressed: blob = diff_id
    export_image(store, "docker.io/library/test:latest", f"oci:{out}:gz", compression="gzip")
    check_exported(out, "gz", test_image, LAYER_GZIP)
    check_exported(out, "latest", test_image, LAYER_TAR)  # the other entry is still there
    pytest.importorskip("zstandard", reason="zstd export needs the zstandard package")
    export_image(store, "test", f"oci:{out}:zst", compression="zstd")
    check_exported(out, "zst", test_image, LAYER_ZSTD)
    # re-importing the export gives the same image
    fresh = Store(str(tmp_path / "g2"), str(tmp_path / "r2"), driver_name="vfs")
    for tag in ("latest", "gz", "zst"):
        again = import_image(fresh, f"oci:{out}:{tag}", f"again:{tag}")
        assert again.id == sha256(test_image.config).split(":")[1]
    assert [l.id for l in fresh.layers()] == chain_layer_ids(test_image.diff_ids)
    if SKOPEO and IS_ROOT and UNSHARE:
        for tag in ("latest", "gz"):
            inspected = json.loads(skopeo("inspect", f"oci:{out}:{tag}").stdout)
            assert inspected["Digest"] == Layout.read(out, tag).manifest_digest
        skopeo("copy", "-q", f"oci:{out}:latest", f"oci:{tmp_path / 'copied'}:latest")
        assert Layout.read(tmp_path / "copied").config == test_image.config


def test_export_docker_archive(store: Store, test_image: Layout, tmp_path: Path) -> None:
    import_image(store, f"oci:{test_image.dir}", "test")
    path = tmp_path / "out.tar"
    assert export_image(store, "test", f"docker-archive:{path}") == sha256(test_image.config)
    with tarfile.open(path) as tar:
        entries = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert entries[0]["RepoTags"] == ["docker.io/library/test:latest"]
        assert tar.extractfile(entries[0]["Config"]).read() == test_image.config  # type: ignore[union-attr]
        assert [sha256(tar.extractfile(n).read()) for n in entries[0]["Layers"]] == test_image.diff_ids  # type: ignore[union-attr]
    with pytest.raises(TransferError, match="exists"):
        export_image(store, "test", f"docker-archive:{path}")
    fresh = Store(str(tmp_path / "g2"), str(tmp_path / "r2"), driver_name="vfs")
    assert import_image(fresh, f"docker-archive:{path}").names == ["docker.io/library/test:latest"]


def test_export_errors(store: Store, test_image: Layout, tmp_path: Path) -> None:
    import_image(store, f"oci:{test_image.dir}", "test")
    with pytest.raises(TransferError, match="compression"):
        export_image(store, "test", f"oci:{tmp_path / 'o'}", compression="lz4")
    bare = store.create_image(top_layer=None, names=["localhost/bare"])
    with pytest.raises(TransferError, match="no schema 2 image manifest"):
        export_image(store, bare.id, f"oci:{tmp_path / 'o'}")
    (tmp_path / "notlayout").mkdir()
    (tmp_path / "notlayout" / "file").write_text("x")
    with pytest.raises(TransferError, match="not an OCI layout"):
        export_image(store, "test", f"oci:{tmp_path / 'notlayout'}")
    assert os.listdir(tmp_path / "notlayout") == ["file"]


# ---------------------------------------------------------------- CLI functions


def test_cli_functions(store: Store, test_image: Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lamina.cli import cmd_transfer

    ctx = SimpleNamespace(store=store, args=[f"oci:{test_image.dir}:latest", "test"], flags={})
    assert cmd_transfer.import_image(ctx) == 0
    assert capsys.readouterr().out == sha256(test_image.config).split(":")[1] + "\n"
    ctx = SimpleNamespace(store=store, args=["test", f"oci:{tmp_path / 'out'}:v1"], flags={"compression": "gzip"})
    assert cmd_transfer.export_image(ctx) == 0
    assert capsys.readouterr().out == Layout.read(tmp_path / "out", "v1").manifest_digest + "\n"
    check_exported(tmp_path / "out", "v1", test_image, LAYER_GZIP)
    ctx = SimpleNamespace(store=store, args=["nosuch", f"oci:{tmp_path / 'out2'}"], flags={})
    assert cmd_transfer.export_image(ctx) == 1
    assert capsys.readouterr().err == 'locating image with ID "nosuch": image not known\n'
    ctx = SimpleNamespace(store=store, args=[f"oci:{tmp_path / 'nothere'}"], flags={})
    assert cmd_transfer.import_image(ctx) == 1
    assert "not a directory" in capsys.readouterr().err


# ---------------------------------------------------------------- against skopeo


def records(graph: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    images = json.loads(Path(graph, "vfs-images", "images.json").read_bytes())
    layers = json.loads(Path(graph, "vfs-layers", "layers.json").read_bytes())
    for layer in layers:
        layer.pop("created")  # the time of creation differs, nothing else may
    return images, layers


@needs_sandbox
@needs_skopeo
class TestAgainstSkopeo:
    def test_store_records_match_skopeo(self, test_image: Layout, tmp_path: Path) -> None:
        go_roots = (str(tmp_path / "sg"), str(tmp_path / "sr"))
        skopeo("copy", "-q", f"oci:{test_image.dir}:latest", cs_ref(go_roots, "test:latest"))
        mine = Store(str(tmp_path / "lg"), str(tmp_path / "lr"), driver_name="vfs")
        import_image(mine, f"oci:{test_image.dir}:latest", "test:latest")
        assert records(mine.graph_root) == records(go_roots[0])
        image_id = sha256(test_image.config).split(":")[1]
        theirs = sorted(os.listdir(Path(go_roots[0], "vfs-images", image_id)))
        assert sorted(os.listdir(Path(mine.graph_root, "vfs-images", image_id))) == theirs
        for name in theirs:
            assert (Path(mine.graph_root, "vfs-images", image_id, name).read_bytes()
                    == Path(go_roots[0], "vfs-images", image_id, name).read_bytes())

    def test_docker_archive_records_match_skopeo(self, test_image: Layout, tmp_path: Path) -> None:
        archive = docker_archive(tmp_path / "a.tar", test_image, ["foo/bar:v1"])
        go_roots = (str(tmp_path / "sg"), str(tmp_path / "sr"))
        skopeo("copy", "-q", f"docker-archive:{archive}", cs_ref(go_roots, "foo/bar:v1"))
        mine = Store(str(tmp_path / "lg"), str(tmp_path / "lr"), driver_name="vfs")
        import_image(mine, f"docker-archive:{archive}")
        assert records(mine.graph_root) == records(go_roots[0])

    def test_skopeo_image_exported_by_lamina(self, test_image: Layout, tmp_path: Path) -> None:
        go_roots = (str(tmp_path / "sg"), str(tmp_path / "sr"))
        skopeo("copy", "-q", f"oci:{test_image.dir}:latest", cs_ref(go_roots, "test:latest"))
        shared = Store(*go_roots, driver_name="vfs")
        export_image(shared, "test", f"oci:{tmp_path / 'out'}:latest")
        check_exported(tmp_path / "out", "latest", test_image, LAYER_TAR)

    def test_lamina_image_copied_out_by_skopeo(self, test_image: Layout, tmp_path: Path) -> None:
        mine = Store(str(tmp_path / "lg"), str(tmp_path / "lr"), driver_name="vfs")
        import_image(mine, f"oci:{test_image.dir}:latest", "test")
        out = tmp_path / "out"
        skopeo("copy", "-q", "--dest-oci-accept-uncompressed-layers", cs_ref(mine, "test:latest"), f"oci:{out}:latest")
        lay = Layout.read(out)
        assert lay.config == test_image.config
        assert [sha256(t) for t in layer_tars(lay)] == test_image.diff_ids
        assert [d["digest"] for d in lay.layer_descs] == test_image.diff_ids

    def test_second_name_like_skopeo(self, test_image: Layout, tmp_path: Path) -> None:
        go_roots = (str(tmp_path / "sg"), str(tmp_path / "sr"))
        mine = Store(str(tmp_path / "lg"), str(tmp_path / "lr"), driver_name="vfs")
        for name in ("test:latest", "localhost/other"):
            skopeo("copy", "-q", f"oci:{test_image.dir}:latest", cs_ref(go_roots, name))
            import_image(mine, f"oci:{test_image.dir}:latest", name)
        theirs, mine_ = records(go_roots[0])[0][0], records(mine.graph_root)[0][0]
        assert mine_["names"] == theirs["names"] == ["localhost/other:latest", "docker.io/library/test:latest"]
        for key in ("digest", "metadata", "big-data-names", "big-data-digests", "layer"):
            assert mine_[key] == theirs[key]

    def test_names_history_like_skopeo(self, test_image: Layout, tmp_path: Path) -> None:
        go_roots = (str(tmp_path / "sg"), str(tmp_path / "sr"))
        mine = Store(str(tmp_path / "lg"), str(tmp_path / "lr"), driver_name="vfs")
        for name in ("test:latest", "localhost/other"):
            skopeo("copy", "-q", f"oci:{test_image.dir}:latest", cs_ref(go_roots, name))
            import_image(mine, f"oci:{test_image.dir}:latest", name)
        assert records(mine.graph_root)[0][0]["names-history"] == records(go_roots[0])[0][0]["names-history"]


# ---------------------------------------------------------------- podman runs what lamina imported


def podman_run(roots: tuple[str, str], image: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    conf = workdir / "containers.conf"
    conf.write_text(f"""[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
lock_type = "file"
tmp_dir = "{workdir}/libpod-tmp"
events_logger = "file"
events_logfile_path = "{workdir}/libpod-tmp/events.log"
cgroup_manager = "cgroupfs"
runtime = "crun"
[network]
network_config_dir = "{workdir}/netconf"
""")
    (workdir / "tmp").mkdir(exist_ok=True)
    env = dict(os.environ, CONTAINERS_CONF=str(conf), TMPDIR=str(workdir / "tmp"))
    script = "cat /etc/added /etc/motd; if ls /etc/deleteme; then echo DELETEME-PRESENT; else echo DELETEME-ABSENT; fi"
    return sandbox(PODMAN or "podman", "--root", roots[0], "--runroot", roots[1], "--storage-driver", "vfs",
                   "run", "--rm", "--network", "none", "--cgroups", "disabled", image, "/bin/sh", "-c", script,
                   env=env)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


@needs_sandbox
@pytest.mark.skipif(PODMAN is None, reason="podman is not installed (apt-get install podman crun)")
def test_podman_runs_lamina_import(test_image: Layout, tmp_path: Path, short_dir: Path) -> None:
    # podman refuses run roots longer than 50 characters, so the roots live in a short directory.
    mine = Store(str(short_dir / "lg"), str(short_dir / "lr"), driver_name="vfs")
    import_image(mine, f"oci:{test_image.dir}:latest", "test")
    proc = podman_run((mine.graph_root, mine.run_root), "docker.io/library/test:latest", tmp_path)
    if proc.returncode != 0 and SKOPEO:
        # Is it podman that cannot run here? Try the same image stored by skopeo.
        control = (str(short_dir / "sg"), str(short_dir / "sr"))
        skopeo("copy", "-q", f"oci:{test_image.dir}:latest", cs_ref(control, "test:latest"))
        ctl = podman_run(control, "docker.io/library/test:latest", tmp_path)
        if ctl.returncode != 0:
            pytest.skip(f"podman cannot run containers on this host: {ctl.stderr.strip()[-500:]}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "added in layer2" in lines and "layer2 motd" in lines
    assert "DELETEME-ABSENT" in lines and "DELETEME-PRESENT" not in lines
    # podman's own image list shows the name lamina gave it
    conf_env = dict(os.environ, CONTAINERS_CONF=str(tmp_path / "containers.conf"), TMPDIR=str(tmp_path / "tmp"))
    images = sandbox(PODMAN or "podman", "--root", mine.graph_root, "--runroot", mine.run_root, "--storage-driver",
                     "vfs", "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", env=conf_env)
    assert images.returncode == 0, images.stderr
    assert f"docker.io/library/test:latest {sha256(test_image.config).split(':')[1][:12]}" in images.stdout

