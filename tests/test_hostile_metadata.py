"""Hostile input, property-based (hypothesis): metadata files, lock files, mountpoints.json, layer tars.

Whatever is on disk, the Store API either works or raises a lamina error (StoreCorrupt naming
the file, LayerUnknown, ...): never a KeyError/TypeError/AttributeError/UnicodeError, never a
write outside the store, and a store that was fine stays byte-for-byte the same when loaded.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lamina.check import CheckOptions
from lamina.errors import LaminaError, StoreCorrupt
from lamina.store import Store

GO = shutil.which("containers-storage")
EPOCH = 1704067200
#: examples per property (the default keeps the suite quick; LAMINA_HYPOTHESIS_EXAMPLES=1000 for a deep run)
EXAMPLES = int(os.environ.get("LAMINA_HYPOTHESIS_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# ---------------------------------------------------------------- a good store, copied per example


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("hostile-base")
    g, r = str(root / "g"), str(root / "r")
    s = Store(g, r, driver_name="vfs")
    l1 = s.create_layer(names=["base"], diff=io.BytesIO(layer_tar({"etc/a": b"a\n", "b": b"bb"})))
    s.set_big_data("layer", l1.id, "Layer-Data", b"ld")
    l2 = s.create_layer(parent=l1.id, names=["child", "<&>"])
    image = s.create_image(top_layer=l2.id, names=["img", "ünïcode"], metadata='{"m":1}')
    s.set_big_data("image", image.id, "manifest", b'{"schemaVersion":2}')
    s.set_big_data("image", image.id, "sha256:" + "ab" * 32, b"blob")
    ctr = s.create_container(image=image.id, names=["ctr"], metadata="meta")
    s.set_big_data("container", ctr.id, "config.json", b"{}")
    s.mount(l1.id)
    return str(root)


FILES = {
    "layers": "g/vfs-layers/layers.json",
    "images": "g/vfs-images/images.json",
    "containers": "g/vfs-containers/containers.json",
    "mounts": "r/vfs-layers/mountpoints.json",
    "volatile-layers": "g/vfs-layers/volatile-layers.json",
}
LOCKS = ["g/vfs-layers/layers.lock", "g/vfs-images/images.lock", "g/vfs-containers/containers.lock",
         "r/vfs-layers/mountpoints.lock", "g/storage.lock", "g/userns.lock"]


class Sandbox:
    """A copy of the base store inside a directory whose other contents must never change."""

    def __init__(self, base: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="hostile-")
        self.root = os.path.join(self.dir, "store", "deep")
        shutil.copytree(base, self.root, symlinks=True)
        with open(os.path.join(self.dir, "sentinel"), "w") as f:
            f.write("outside the store")
        self.before = self._outside()

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def _outside(self) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.dir):
            if dirpath == self.root:
                dirnames[:] = []
                continue
            found.extend(os.path.join(dirpath, n) for n in dirnames + filenames)
        return sorted(found)

    def close(self) -> None:
        assert self._outside() == self.before, "something was written outside the store"
        subprocess.run(["chmod", "-R", "u+w", self.dir], check=False)
        shutil.rmtree(self.dir)


@pytest.fixture
def tolerant_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile but tolerated values (``"names": null``) are written back as they were read, by
    design of the record cache; the test suite's cache verification assumes canonical input, so
    it is off for the mutation tests (production never runs it)."""
    import lamina.metastore

    monkeypatch.setattr(lamina.metastore, "_VERIFY_CACHE", False)


def exercise(box: Sandbox) -> list[LaminaError]:
    """Drive the Store API over the (possibly broken) store; lamina errors are collected,
    anything else fails the test with its traceback."""
    errors: list[LaminaError] = []
    g, r = box.path("g"), box.path("r")

    def step(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except LaminaError as exc:
            errors.append(exc)
            return None
        except Exception:  # the property under test: nothing but lamina errors escape
            pytest.fail(f"non-lamina exception escaped the Store API:\n{traceback.format_exc()}")

    store = step(lambda: Store(g, r, driver_name="vfs"))
    if store is None:
        return errors
    layers = step(store.layers) or []
    images = step(store.images) or []
    ctrs = step(store.containers) or []
    for l in layers[:4]:
        step(lambda: store.layer(l.id))
        step(lambda: store.mounted(l.id))
        step(lambda: store.list_big_data("layer", l.id))
        step(lambda: [store.big_data("layer", l.id, k) for k in l.big_data_names])
        step(lambda: store.names(l.id))
    for i in images[:4]:
        step(lambda: store.image(i.id))
        step(lambda: [store.big_data("image", i.id, k) for k in i.big_data_names])
        step(lambda: [store.big_data_size("image", i.id, k) for k in i.big_data_names])
        step(lambda: store.set_big_data("image", i.id, "hostile", b"x"))
        step(lambda: store.images_by_digest(i.digest or "sha256:" + "0" * 64))
    for c in ctrs[:4]:
        step(lambda: store.container(c.id))
        step(lambda: store.metadata(c.id))
    for key in ("base", "img", "ctr", "child", "missing"):
        step(lambda: store.exists(key))
    step(lambda: store.check(CheckOptions(max_age=0)))
    new = step(lambda: store.create_layer(names=["hostile-new"]))
    if new is not None:
        step(lambda: store.set_names(new.id, ["hostile-renamed"]))
        img = step(lambda: store.create_image(top_layer=new.id, names=["hostile-img"]))
        if img is not None:
            step(lambda: store.delete_image(img.id))
        step(lambda: store.mount(new.id))
        step(lambda: store.unmount(new.id))
    for c in ctrs[:2]:
        step(lambda: store.delete_container(c.id))
    step(store.garbage_collect)
    return errors


def assert_errors_name_files(box: Sandbox, errors: list[LaminaError]) -> None:
    for exc in errors:
        if isinstance(exc, StoreCorrupt):
            assert box.root in str(exc), f"StoreCorrupt does not name the file: {exc}"


# ---------------------------------------------------------------- strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
    | st.sampled_from(["", ".", "..", "../../escape", "a/b", "\udcff", "\x00", "f" * 64]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6)

KEYS = ["id", "names", "parent", "layer", "metadata", "created", "flags", "big-data-names", "big-data-sizes",
        "big-data-digests", "diff-digest", "diff-size", "compression", "uidset", "uidmap", "gidmap", "digest",
        "names-history", "mapped-layers", "image", "path", "count", "mountlabel"]


@st.composite
def byte_mutations(draw: Any) -> tuple[str, Callable[[bytes], bytes]]:
    which = draw(st.sampled_from(sorted(FILES)))
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "replace"]))
    seed = draw(st.integers(0, 2 ** 32))
    blob = draw(st.binary(min_size=1, max_size=40))

    def mutate(data: bytes) -> bytes:
        import random

        rng = random.Random(seed)
        if kind == "truncate":
            return data[:rng.randrange(len(data) + 1)]
        if kind == "flip" and data:
            b = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            return bytes(b)
        if kind == "insert":
            pos = rng.randrange(len(data) + 1)
            return data[:pos] + blob + data[pos:]
        return blob

    return which, mutate


@st.composite
def field_mutations(draw: Any) -> tuple[str, int, str, Any]:
    return (draw(st.sampled_from(sorted(FILES))), draw(st.integers(0, 3)), draw(st.sampled_from(KEYS)),
            draw(json_values))


def _read(box: Sandbox, which: str) -> bytes:
    try:
        with open(box.path(FILES[which]), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b"[]"


def _write(box: Sandbox, which: str, data: bytes) -> None:
    with open(box.path(FILES[which]), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- the properties


@SETTINGS
@given(mutation=byte_mutations())
def test_corrupt_or_truncated_metadata(base_store: str, tolerant_cache: None, mutation: tuple[str, Callable[[bytes], bytes]]) -> None:
    which, mutate = mutation
    box = Sandbox(base_store)
    try:
        _write(box, which, mutate(_read(box, which)))
        assert_errors_name_files(box, exercise(box))
    finally:
        box.close()


@SETTINGS
@given(mutation=field_mutations())
def test_wrong_types_and_hostile_values(base_store: str, tolerant_cache: None, mutation: tuple[str, int, str, Any]) -> None:
    which, index, key, value = mutation
    box = Sandbox(base_store)
    try:
        records = json.loads(_read(box, which))
        if records:
            records[index % len(records)][key] = value
        else:
            records = [{key: value}]
        _write(box, which, json.dumps(records).encode("utf-8", "surrogatepass"))
        assert_errors_name_files(box, exercise(box))
    finally:
        box.close()


@SETTINGS
@given(which=st.sampled_from(["layers", "images", "containers"]), dup=st.integers(0, 3),
       parent=st.sampled_from(["", "f" * 64, "self"]))
def test_duplicate_ids_and_dangling_parents(base_store: str, tolerant_cache: None, which: str, dup: int, parent: str) -> None:
    """Documented recovery: a duplicated ID keeps its first record; a dangling parent loads and
    ``check`` reports it."""
    box = Sandbox(base_store)
    try:
        records = json.loads(_read(box, which))
        records.append(dict(records[dup % len(records)], names=["dup-name"]))
        if which == "layers" and parent:
            records[0]["parent"] = records[0]["id"] if parent == "self" else parent
        _write(box, which, json.dumps(records).encode())
        errors = exercise(box)
        assert not [e for e in errors if isinstance(e, StoreCorrupt)]
        store = Store(box.path("g"), box.path("r"), driver_name="vfs")
        listed = {"layers": store.layers, "images": store.images, "containers": store.containers}[which]()
        assert len({x.id for x in listed}) == len(listed)
        if which == "layers" and parent == "f" * 64:
            report = store.check()
            assert any(p.code == "layer-parent-missing" for ps in report.layers.values() for p in ps)
    finally:
        box.close()


@SETTINGS
@given(lock=st.sampled_from(LOCKS), junk=st.one_of(st.binary(max_size=200), st.binary(min_size=60, max_size=70),
                                                   st.integers(64 * 1024, 300 * 1024).map(lambda n: os.urandom(n))))
def test_junk_lock_files(base_store: str, tolerant_cache: None, lock: str, junk: bytes) -> None:
    """Short, huge or binary lock files: the store opens, reads and writes as usual."""
    box = Sandbox(base_store)
    try:
        with open(box.path(lock), "wb") as f:
            f.write(junk)
        errors = exercise(box)
        assert errors == [] or all(not isinstance(e, StoreCorrupt) for e in errors)
        store = Store(box.path("g"), box.path("r"), driver_name="vfs")
        assert store.layer("base") and store.image("img")
    finally:
        box.close()


@SETTINGS
@given(content=st.one_of(json_values.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
                         st.binary(max_size=80),
                         st.lists(st.fixed_dictionaries({"id": json_values, "path": json_values, "count": json_values}),
                                  max_size=3).map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass"))))
def test_junk_mountpoints(base_store: str, tolerant_cache: None, content: bytes) -> None:
    box = Sandbox(base_store)
    try:
        _write(box, "mounts", content)
        errors = exercise(box)
        assert_errors_name_files(box, errors)
        for e in errors:
            if isinstance(e, StoreCorrupt):
                assert "mountpoints.json" in str(e)
    finally:
        box.close()


# ---------------------------------------------------------------- good stores stay untouched


def _metadata_state(g: str, r: str) -> dict[str, tuple[bytes, int]]:
    out = {}
    for path in [*(os.path.join(g, p) for p in ("vfs-layers/layers.json", "vfs-images/images.json",
                                                 "vfs-containers/containers.json")),
                 os.path.join(r, "vfs-layers/mountpoints.json")]:
        if os.path.exists(path):
            with open(path, "rb") as f:
                out[path] = (f.read(), os.stat(path).st_mtime_ns)
    return out


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10)


@SETTINGS
@given(layer_names=st.lists(names, max_size=3, unique=True), image_names=st.lists(names, max_size=3, unique=True),
       metadata=st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
       key=names, data=st.binary(max_size=50))
def test_loading_never_rewrites_a_good_store(tmp_path: Path, layer_names: list[str], image_names: list[str],
                                             metadata: str, key: str, data: bytes) -> None:
    from lamina.errors import InvalidBigDataName
    from lamina.metastore import big_data_file_name

    try:
        big_data_file_name(key)
    except InvalidBigDataName:
        assume(False)  # a key whose file name would contain '/': refused, as Go fails to store it
    work = tempfile.mkdtemp(dir=tmp_path)
    g, r = os.path.join(work, "g"), os.path.join(work, "r")
    s = Store(g, r, driver_name="vfs")
    layer = s.create_layer(names=layer_names)
    image = s.create_image(top_layer=layer.id, names=image_names, metadata=metadata)
    s.set_big_data("image", image.id, key, data)
    s.create_container(image=image.id, names=[n + "-c" for n in image_names])
    s.mount(layer.id)
    before = _metadata_state(g, r)
    again = Store(g, r, driver_name="vfs")
    again.layers(), again.images(), again.containers(), again.check()
    again.image(image.id), again.big_data("image", image.id, key), again.mounted(layer.id)
    assert _metadata_state(g, r) == before
    subprocess.run(["chmod", "-R", "u+w", work], check=False)
    shutil.rmtree(work)


def test_loading_never_rewrites_a_go_store(tmp_path: Path) -> None:
    if GO is None:
        pytest.skip("containers-storage (Go) is not installed")
    g, r = str(tmp_path / "g"), str(tmp_path / "r")
    cs = [GO, "-g", g, "-R", r, "-s", "vfs"]
    layer = subprocess.run([*cs, "create-layer", "-n", "ünï <&> \u2028"], capture_output=True, text=True,
                           check=True).stdout.split()[0]
    img = subprocess.run([*cs, "create-image", "-n", "a/b:c", "-m", '{"x":"<y>"}', layer], capture_output=True,
                         text=True, check=True).stdout.split()[0]
    subprocess.run([*cs, "create-container", "-n", "c", img], capture_output=True, check=True)
    subprocess.run([*cs, "mount", layer], capture_output=True, check=True)
    before = _metadata_state(g, r)
    s = Store(g, r, driver_name="vfs")
    s.layers(), s.images(), s.containers(), s.check(), s.mounted(layer)
    assert _metadata_state(g, r) == before


# ---------------------------------------------------------------- the tar path


def _base_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add(name: str, type: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: Any) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mode, info.mtime = type, len(data), 0o644, EPOCH
            for k, v in kw.items():
                setattr(info, k, v)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("dir", tarfile.DIRTYPE, mode=0o755)
        add("dir/file", data=b"hello world\n" * 10)
        add("dir/up", tarfile.SYMTYPE, linkname="../../outside")
        add("abs", tarfile.SYMTYPE, linkname="/etc")
        add("dir/hard", tarfile.LNKTYPE, linkname="dir/file")
        add("dir/.wh.gone")
        add("x" * 150 + "/long", data=b"long name")
        add("fifo", tarfile.FIFOTYPE)
        add("pax", data=b"p", pax_headers={"path": "paxpath"})
    return buf.getvalue()


BASE_TAR = _base_tar()


@st.composite
def tar_mutations(draw: Any) -> bytes:
    data = bytearray(BASE_TAR)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["header", "header", "header", "cut", "insert"]))
        if len(data) < 1024:
            data += bytes(1024)
        if kind == "header":
            block = draw(st.integers(0, len(data) // 512 - 1))
            data[block * 512 + draw(st.integers(0, 511))] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[draw(st.integers(0, len(data) - 1)):]
        else:
            pos = draw(st.integers(0, len(data)))
            data[pos:pos] = draw(st.binary(min_size=1, max_size=600))
    return bytes(data)


@pytest.fixture(scope="module")
def tar_sandbox(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Store]:
    root = tmp_path_factory.mktemp("tar-sandbox")
    (root / "outside").mkdir()
    (root / "outside" / "target").write_text("keep")
    return str(root), Store(str(root / "g"), str(root / "r"), driver_name="vfs")


def _tree_outside_layers(root: str) -> dict[str, tuple[int, int, int]]:
    out = {}
    skip = {os.path.join(root, "g", "vfs", "dir"), os.path.join(root, "g", "vfs-layers"), os.path.join(root, "r")}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if name == "storage.lock":
                continue
            st_ = os.lstat(p)
            out[p] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return out


@settings(max_examples=2 * EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tar=tar_mutations())
def test_mutated_tars_fail_cleanly_or_stay_inside_the_layer(tar_sandbox: tuple[str, Store], tar: bytes) -> None:
    root, store = tar_sandbox
    before = _tree_outside_layers(root)
    layers_before = {l.id for l in store.layers()}
    try:
        layer = store.create_layer(diff=io.BytesIO(tar))
    except LaminaError:
        layer = None  # ArchiveError (or another lamina error): the layer must be gone entirely
    except Exception:
        pytest.fail(f"non-lamina exception from a mutated tar:\n{traceback.format_exc()}")
    assert _tree_outside_layers(root) == before, "a mutated tar changed something outside its layer"
    if layer is None:
        assert {l.id for l in store.layers()} == layers_before
        assert sorted(os.listdir(os.path.join(root, "g", "vfs", "dir"))) == sorted(layers_before)
    else:
        assert store.check(CheckOptions(max_age=None)).clean
        store.delete_layer(layer.id)
