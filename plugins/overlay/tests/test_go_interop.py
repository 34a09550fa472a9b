"""overlay against the Go containers-storage tool (1.43): same layout, shared stores, shared mount counts."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from lamina.store import Store
from lamina.testing import BASE_TAR_ENTRIES, CHILD_TAR_ENTRIES, make_tar, mounts_under

from .conftest import overlay_mounts_under

GO = shutil.which("containers-storage")
pytestmark = [pytest.mark.needs_go,
              pytest.mark.skipif(GO is None, reason="Go containers-storage (Debian package) not installed")]

L1 = "a1" * 32  # IDs with no run of [A-Z2-7] that could look like a short link
L2 = "b1" * 32
L3 = "c1" * 32
LINK_RE = re.compile(r"[A-Z2-7]{26}")


class Go:
    """The Go tool on one store (overlay, no storage.conf)."""

    def __init__(self, graph: Path, run: Path) -> None:
        self.base = [GO or "containers-storage", "--graph", str(graph), "--run", str(run), "--storage-driver", "overlay"]

    def __call__(self, *args: str, stdin: bytes | None = None) -> str:
        proc = subprocess.run([*self.base, *args], input=stdin, capture_output=True, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"containers-storage {' '.join(args)} failed ({proc.returncode}): "
                                 f"{proc.stderr.decode(errors='replace')}{proc.stdout.decode(errors='replace')}")
        return proc.stdout.decode()


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Graph/run roots for Go and lamina; teardown shuts both down and checks for leftover mounts."""
    made: dict[str, Any] = {"go": [], "stores": []}

    def go(graph: Path, run: Path) -> Go:
        tool = Go(graph, run)
        made["go"].append(tool)
        return tool

    def store(graph: Path, run: Path) -> Store:
        s = Store(str(graph), str(run), driver_name="overlay")
        made["stores"].append(s)
        return s

    made["make_go"] = go
    made["make_store"] = store
    yield made
    for tool in made["go"]:
        subprocess.run([*tool.base, "shutdown", "-f"], capture_output=True, check=False)
    for s in made["stores"]:
        s.shutdown(force=True)
    assert not mounts_under(str(tmp_path)), f"mounts left behind: {mounts_under(str(tmp_path))}"


def _tars(tmp_path: Path) -> tuple[Path, Path]:
    base, child = tmp_path / "base.tar", tmp_path / "child.tar"
    base.write_bytes(make_tar(BASE_TAR_ENTRIES))
    child.write_bytes(make_tar(CHILD_TAR_ENTRIES))
    return base, child


def _shape(home: Path, roles: dict[str, str]) -> dict[str, tuple[Any, ...]]:
    """Every entry under an overlay home, IDs replaced by roles and short links by LINK."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(home):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, home)
            for id, role in roles.items():
                rel = rel.replace(id, role)
            st = os.lstat(full)
            extra: Any = None
            if stat.S_ISLNK(st.st_mode):
                extra = os.readlink(full)
                for id, role in roles.items():
                    extra = extra.replace(id, role)
                rel = f"l/(link to {extra})"  # short link names are random
            elif stat.S_ISREG(st.st_mode) and rel.endswith(("/link", "/lower")):
                extra = LINK_RE.sub("LINK", open(full).read())
            elif stat.S_ISCHR(st.st_mode):
                extra = st.st_rdev
            if stat.S_ISDIR(st.st_mode):
                try:
                    extra = os.getxattr(full, "trusted.overlay.opaque", follow_symlinks=False)
                except OSError:
                    extra = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size if not stat.S_ISDIR(st.st_mode) else 0, extra)
    return out


def test_layout_identical_to_go(roots, tmp_path):
    base, child = _tars(tmp_path)
    go = roots["make_go"](tmp_path / "go-g", tmp_path / "go-r")
    go("create-layer", "-i", L1)
    go("applydiff", "-f", str(base), L1)
    go("create-layer", "-i", L2, L1)
    go("applydiff", "-f", str(child), L2)
    go("create-layer", "-r", "-i", L3, L2)
    go("mount", L3)
    go("unmount", L3)

    store = roots["make_store"](tmp_path / "py-g", tmp_path / "py-r")
    store.create_layer(id=L1, diff=open(base, "rb"))
    store.create_layer(id=L2, parent=L1, diff=open(child, "rb"))
    store.create_layer(id=L3, parent=L2, writeable=False)
    store.mount(L3)
    store.unmount(L3)

    roles = {L1: "L1", L2: "L2", L3: "L3"}
    go_shape = _shape(tmp_path / "go-g" / "overlay", roles)
    py_shape = _shape(tmp_path / "py-g" / "overlay", roles)
    assert py_shape == go_shape
    # whiteouts as the reference describes them, in both
    assert go_shape["L2/diff/dir1/a.txt"][:2] == (stat.S_IFCHR, 0) and go_shape["L2/diff/dir1/a.txt"][5] == 0
    assert go_shape["L2/diff/opaque-dir"][5] == b"y"
    go_cache = set(os.listdir(tmp_path / "go-r" / "overlay")) - {"idmapped-lower-dir-true"}
    assert set(os.listdir(tmp_path / "py-r" / "overlay")) == go_cache
    # Go reads lamina's store and lamina reads Go's: same changes (native), same sizes
    go_py = roots["make_go"](tmp_path / "py-g", tmp_path / "py-r")
    assert go_py("changes", L2) == go("changes", L2)
    expected = ('Modify "/dir1"\nDelete "/dir1/a.txt"\nAdd "/newfile.txt"\nDelete "/opaque-dir"\n'
                'Add "/opaque-dir/new.txt"\n')
    assert go("changes", L2) == expected
    got = "".join(f'{c.kind.label} "{c.path}"\n' for c in store.changes(None, L2))
    assert got == expected
    assert store.diff_size(None, L2) == int(go("diffsize", L2)) == 10


def _listing(root: str) -> dict[str, bytes | str | None]:
    out: dict[str, bytes | str | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                out[rel] = os.readlink(full)
            elif os.path.isfile(full):
                out[rel] = open(full, "rb").read()
            else:
                out[rel] = None
    return out


EXPECTED_CONTAINER = {
    "etc": None, "etc/hello.txt": b"hello\n", "etc/hello-hard": b"hello\n", "link-to-hello": "etc/hello.txt",
    "dir1": None, "dir1/b.txt": b"bbbb", "dir1/suid": b"#!", "opaque-dir": None, "opaque-dir/new.txt": b"new\n",
    "pipe": None, "newfile.txt": b"fresh\n",
}


def _mount_count(run: Path, layer: str) -> int:
    entries = json.loads((run / "overlay-layers" / "mountpoints.json").read_text() or "[]")
    return next((e["count"] for e in entries if e["id"] == layer), 0)


def test_go_writes_lamina_reads_and_mounts(roots, tmp_path):
    base, child = _tars(tmp_path)
    g, r = tmp_path / "g", tmp_path / "r"
    go = roots["make_go"](g, r)
    go("create-layer", "-i", L1)
    go("applydiff", "-f", str(base), L1)
    go("create-layer", "-i", L2, L1)
    go("applydiff", "-f", str(child), L2)
    img = go("create-image", "-n", "example.com/test:latest", L2).split()[0]
    ctr = go("create-container", "-n", "ctr1", img).split()[0]
    go_path = go("mount", ctr).strip()
    with open(os.path.join(go_path, "written-by-go"), "w") as f:
        f.write("go")

    store = roots["make_store"](g, r)
    layer = store.container(ctr).layer
    assert [l.id for l in store.layers()][:2] == [L1, L2]
    path = store.mount(ctr)
    assert path == go_path
    assert store.mounted(ctr) == 2 == _mount_count(r, layer)
    assert _listing(path) == {**EXPECTED_CONTAINER, "written-by-go": b"go"}
    assert store.unmount(ctr) is True  # still mounted (by Go)
    assert _mount_count(r, layer) == 1 and os.path.ismount(path)
    go("unmount", ctr)
    assert _mount_count(r, layer) == 0
    assert not os.path.ismount(path), "the last unmount (by Go) must really unmount"
    # lamina mounts the image layers Go wrote, read-only, and rebuilds Go's diff from tar-split
    with store.mounted_layer(L2) as p2:
        assert _listing(p2) == EXPECTED_CONTAINER
    stream = store.diff(None, L2)
    try:
        assert stream.read() == child.read_bytes()
    finally:
        stream.close()
    assert not overlay_mounts_under(str(g))


def test_lamina_writes_go_reads_and_mounts(roots, tmp_path):
    base, child = _tars(tmp_path)
    g, r = tmp_path / "g", tmp_path / "r"
    store = roots["make_store"](g, r)
    store.create_layer(id=L1, diff=open(base, "rb"))
    store.create_layer(id=L2, parent=L1, diff=open(child, "rb"))
    image = store.create_image(top_layer=L2, names=["example.com/test:latest"])
    ctr = store.create_container(names=["ctr1"], image=image.id)
    path = store.mount(ctr.id)
    with open(os.path.join(path, "written-by-lamina"), "w") as f:
        f.write("py")

    go = roots["make_go"](g, r)
    assert L1 in go("layers") and L2 in go("layers")
    go_path = go("mount", ctr.id).strip()
    assert go_path == path
    assert _mount_count(r, ctr.layer) == 2
    assert _listing(go_path) == {**EXPECTED_CONTAINER, "written-by-lamina": b"py"}
    go("unmount", ctr.id)
    assert _mount_count(r, ctr.layer) == 1 and os.path.ismount(path)
    store.unmount(ctr.id)
    assert _mount_count(r, ctr.layer) == 0 and not os.path.ismount(path)

    # Go mounts on its own (fresh mount of lamina's layers) and sees the same files
    go_path = go("mount", ctr.id).strip()
    try:
        assert _listing(go_path) == {**EXPECTED_CONTAINER, "written-by-lamina": b"py"}
    finally:
        go("unmount", ctr.id)
    assert not os.path.ismount(go_path)
    # Go's diff of lamina's applied layer reproduces the input through tar-split and DiffGetter
    assert subprocess.run([*go.base, "diff", "-u", L2], capture_output=True, check=True).stdout == child.read_bytes()
    assert go("changes", ctr.layer) == 'Add "/written-by-lamina"\n'
    assert "Native Overlay Diff: true" in subprocess.run([*go.base, "status"], capture_output=True,
                                                         check=True).stderr.decode()
