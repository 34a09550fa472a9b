"""Store-level layer content: ApplyDiff/PutLayer with compressed and uncompressed tars, Diff rebuilt
from tar-split or produced by the driver, Changes/DiffSize, corrupt input, and agreement with the Go
tool in both directions (lamina applies/Go diffs, Go applies/lamina diffs, identical records)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from lamina import layercontent as lc
from lamina.errors import ArchiveError, LayerUnknown
from lamina.store import Store
from lamina.tarsplit import iter_entries

GO = shutil.which("containers-storage")
needs_go = pytest.mark.skipif(GO is None, reason="Go containers-storage (Debian package) not installed")
needs_gnu_tar = pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def roots(tmp_path: Path) -> tuple[str, str]:
    return str(tmp_path / "graph"), str(tmp_path / "run")


@pytest.fixture
def store(roots: tuple[str, str]) -> Store:
    return Store(*roots, driver_name="vfs")


def go(roots: tuple[str, str], *args: str, input: bytes | None = None, check: bool = True) -> bytes:
    proc = subprocess.run([GO or "containers-storage", "--graph", roots[0], "--run", roots[1],
                           "--storage-driver", "vfs", *args], capture_output=True, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"containers-storage {' '.join(args)} failed: {proc.stderr.decode()}")
    return proc.stdout


def go_applydiff(roots: tuple[str, str], layer: str, blob: bytes, scratch: Path) -> None:
    """applydiff in the Go tool, reading *blob* from a file: from a pipe, how Go's buffered reader
    splits what follows the archive into tar-split segments depends on the pipe's timing."""
    path = scratch / "go-applydiff-input"
    path.write_bytes(blob)
    go(roots, "applydiff", "-f", str(path), layer)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, kind: str, name: str, data: bytes = b"", **attrs: Any) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = attrs.get("mtime", 1_700_000_000)
    info.uid, info.gid = attrs.get("uid", 0), attrs.get("gid", 0)
    info.mode = attrs.get("mode", 0o755 if kind == "dir" else 0o644)
    if kind == "dir":
        info.type = tarfile.DIRTYPE
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, data.decode()
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, data.decode()
    else:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if kind == "file" else None)


def base_tar() -> bytes:
    """The reference scenario's base layer (plus a larger file and a PAX-only name)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "dir", "etc")
        _add(tar, "file", "etc/hello.txt", b"hello\n")
        _add(tar, "hardlink", "etc/hello-hard", b"etc/hello.txt")
        _add(tar, "symlink", "link-to-hello", b"etc/hello.txt")
        _add(tar, "dir", "dir1")
        _add(tar, "file", "dir1/a.txt", b"a\n")
        _add(tar, "file", "dir1/b.txt", b"b\n", uid=1000, gid=1001)
        _add(tar, "dir", "opaque-dir")
        _add(tar, "file", "opaque-dir/old.txt", b"old\n")
        _add(tar, "file", "big.bin", random.Random(3).randbytes(300_000))
        _add(tar, "file", "ünïcode-" + "x" * 110, b"pax\n")
    return buf.getvalue()


def child_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, "dir", "dir1")
        _add(tar, "file", "dir1/.wh.a.txt", uid=42)
        _add(tar, "dir", "opaque-dir")
        _add(tar, "file", "opaque-dir/.wh..wh..opq")
        _add(tar, "file", "opaque-dir/new.txt", b"new\n")
        _add(tar, "file", "newfile.txt", b"hello\n")
    return buf.getvalue()


def compress(data: bytes, kind: int) -> bytes:
    if kind == lc.GZIP:
        return gzip.compress(data)
    if kind == lc.BZIP2:
        return bz2.compress(data)
    if kind == lc.XZ:
        return lzma.compress(data, format=lzma.FORMAT_XZ)
    if kind == lc.ZSTD:
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    return data


def decompress(data: bytes) -> bytes:
    kind = lc.detect_compression(data[:10])
    if kind == lc.GZIP:
        return gzip.decompress(data)
    if kind == lc.BZIP2:
        return bz2.decompress(data)
    if kind == lc.XZ:
        return lzma.decompress(data)
    if kind == lc.ZSTD:
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def read_diff(store: Store, key: str, compression: int | None = lc.UNCOMPRESSED, from_key: str | None = None) -> bytes:
    with store.diff(from_key, key, compression) as stream:
        return stream.read()


def layers_json(graph: str) -> list[dict[str, Any]]:
    with open(os.path.join(graph, "vfs-layers", "layers.json"), "rb") as f:
        return json.loads(f.read())


def content_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("id", "created", "parent", "names")}


ALL_KINDS = [lc.UNCOMPRESSED, lc.GZIP, lc.BZIP2, lc.XZ, lc.ZSTD]


# ---------------------------------------------------------------- applying


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_apply_records_digests_sizes_and_compression(store: Store, roots: tuple[str, str], kind: int) -> None:
    tar = base_tar()
    blob = compress(tar, kind)
    layer = store.create_layer(diff=io.BytesIO(blob))
    assert layer.compressed_digest == sha(blob) and layer.compressed_size == len(blob)
    assert layer.uncompressed_digest == sha(tar) and layer.uncompressed_size == len(tar)
    assert layer.compression == kind
    assert layer.uidset == [0, 1000] and layer.gidset == [0, 1001]
    record = [r for r in layers_json(roots[0]) if r["id"] == layer.id][0]
    assert record["diff-digest"] == sha(tar) and record.get("compression", 0) == kind
    assert "flags" not in record
    path = os.path.join(roots[0], "vfs-layers", f"{layer.id}.tar-split.gz")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_diff(store, layer.id) == tar
    # default compression is the recorded one; every kind can be asked for
    default = read_diff(store, layer.id, None)
    assert lc.detect_compression(default[:10]) == kind and decompress(default) == tar
    for other in ALL_KINDS:
        produced = read_diff(store, layer.id, other)
        assert lc.detect_compression(produced[:10]) == other and decompress(produced) == tar


def test_apply_extracts_and_skips_whiteouts_in_uidset(store: Store) -> None:
    base = store.create_layer(diff=io.BytesIO(base_tar()))
    child = store.create_layer(parent=base.id, diff=io.BytesIO(child_tar()))
    assert child.uidset == [0] and child.gidset == [0]  # the whiteout owned by 42 is not counted
    with store.mounted_layer(child.id) as root:
        assert open(os.path.join(root, "newfile.txt"), "rb").read() == b"hello\n"
        assert not os.path.exists(os.path.join(root, "dir1", "a.txt"))
        assert os.listdir(os.path.join(root, "opaque-dir")) == ["new.txt"]
        assert os.readlink(os.path.join(root, "link-to-hello")) == "etc/hello.txt"
    assert read_diff(store, child.id) == child_tar()
    assert read_diff(store, base.id) == base_tar()


def test_apply_diff_on_existing_layer_replaces_records(store: Store, roots: tuple[str, str]) -> None:
    layer = store.create_layer()
    assert store.apply_diff(layer.id, io.BytesIO(base_tar())) > 0
    first = store.layer(layer.id)
    assert first.uncompressed_digest == sha(base_tar())
    blob = gzip.compress(child_tar())
    store.apply_diff(layer.id, io.BytesIO(blob))
    second = store.layer(layer.id)
    assert second.compressed_digest == sha(blob) and second.compression == lc.GZIP
    assert second.uncompressed_digest == sha(child_tar())
    assert read_diff(store, layer.id) == child_tar()
    assert store.layers_by_compressed_digest(sha(blob))[0].id == layer.id


def test_failed_apply_diff_saves_nothing(store: Store, roots: tuple[str, str]) -> None:
    layer = store.create_layer(diff=io.BytesIO(base_tar()))
    ts = os.path.join(roots[0], "vfs-layers", f"{layer.id}.tar-split.gz")
    before_ts, before_json = open(ts, "rb").read(), layers_json(roots[0])
    broken = child_tar()[:1500]
    with pytest.raises(ArchiveError):
        store.apply_diff(layer.id, io.BytesIO(broken))
    assert open(ts, "rb").read() == before_ts
    assert layers_json(roots[0]) == before_json
    assert store.layer(layer.id).uncompressed_digest == sha(base_tar())


@pytest.mark.parametrize("cut,kind", [(700, lc.UNCOMPRESSED), (1100, lc.UNCOMPRESSED), (1100, lc.GZIP)])
def test_truncated_archive_fails_cleanly(store: Store, roots: tuple[str, str], cut: int, kind: int) -> None:
    tar = base_tar()
    # entry 2 (etc/hello.txt) has its PAX-less header at 512 and data at 1024
    blob = compress(tar[:cut], kind) if kind != lc.GZIP else gzip.compress(tar)[:cut]
    with pytest.raises(ArchiveError) as info:
        store.create_layer(names=["broken"], diff=io.BytesIO(blob))
    message = str(info.value)
    assert "offset" in message
    if kind == lc.UNCOMPRESSED:
        assert "etc" in message
    assert store.layers() == []
    assert layers_json(roots[0]) == []
    assert os.listdir(os.path.join(roots[0], "vfs", "dir")) == []
    assert not [n for n in os.listdir(os.path.join(roots[0], "vfs-layers")) if n.endswith(".tar-split.gz")]


def test_corrupt_header_names_entry_and_offset(store: Store) -> None:
    tar = bytearray(base_tar())
    tar[512 + 20] ^= 0x55  # damage the header of the second entry (etc/hello.txt)
    with pytest.raises(ArchiveError, match=r"invalid tar header.*'etc/'.*offset 512"):
        store.create_layer(diff=io.BytesIO(bytes(tar)))
    assert store.layers() == []


def test_input_is_streamed_not_buffered(store: Store) -> None:
    tar = base_tar()
    reads: list[int] = []

    class Source(io.RawIOBase):
        def __init__(self) -> None:
            self.inner = io.BytesIO(tar)

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            data = self.inner.read(min(len(b), 4096))
            reads.append(len(data))
            b[:len(data)] = data
            return len(data)

    layer = store.create_layer(diff=Source())  # type: ignore[arg-type]
    assert layer.uncompressed_digest == sha(tar)
    assert max(reads) <= 4096 and sum(reads) == len(tar)


# ---------------------------------------------------------------- diffs


def test_diff_without_tar_split_comes_from_the_driver(store: Store, roots: tuple[str, str]) -> None:
    base = store.create_layer(diff=io.BytesIO(base_tar()))
    top = store.create_layer(parent=base.id)
    with store.mounted_layer(top.id) as root:
        with open(os.path.join(root, "written.txt"), "wb") as f:
            f.write(b"written\n")
        os.remove(os.path.join(root, "etc", "hello.txt"))
    names = tarfile.open(fileobj=io.BytesIO(read_diff(store, top.id))).getnames()
    assert "written.txt" in names and "etc/.wh.hello.txt" in names
    gz = read_diff(store, top.id, lc.GZIP)
    assert lc.detect_compression(gz[:10]) == lc.GZIP
    assert tarfile.open(fileobj=io.BytesIO(gzip.decompress(gz))).getnames() == names
    # from something other than the real parent: the driver too, even with a tar-split present
    child = store.create_layer(parent=base.id, diff=io.BytesIO(child_tar()))
    assert read_diff(store, child.id, from_key=top.id) != child_tar()
    with pytest.raises(LayerUnknown):
        store.diff(None, "no-such-layer")


def test_diff_detects_changed_files(store: Store) -> None:
    layer = store.create_layer(diff=io.BytesIO(base_tar()))
    with store.mounted_layer(layer.id) as root:
        os.chmod(os.path.join(root, "etc"), 0o755)
        with open(os.path.join(root, "etc", "hello.txt"), "wb") as f:
            f.write(b"HELLO\n")
    with pytest.raises(ArchiveError, match="checksum failed for 'etc/hello.txt'"):
        read_diff(store, layer.id)
    with store.mounted_layer(layer.id) as root:
        with open(os.path.join(root, "etc", "hello.txt"), "wb") as f:
            f.write(b"hello\n")
        os.remove(os.path.join(root, "big.bin"))
    with pytest.raises(ArchiveError, match="big.bin"):
        read_diff(store, layer.id)


def test_diff_is_lazy_and_uses_a_diff_getter(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = store.create_layer(diff=io.BytesIO(base_tar()))
    root = store.driver.get(layer.id)
    opened: list[str] = []
    closed: list[bool] = []

    class Getter:
        def __call__(self, name: str) -> Any:
            opened.append(name)
            return open(os.path.join(root, name), "rb")

        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(store.driver, "diff_getter", lambda id: Getter())
    stream = store.diff(None, layer.id, lc.UNCOMPRESSED)
    assert opened == []  # nothing read yet
    first = stream.read(100)
    assert first == base_tar()[:100]
    assert stream.read() == base_tar()[100:]
    stream.close()
    assert opened == ["etc/hello.txt", "dir1/a.txt", "dir1/b.txt", "opaque-dir/old.txt", "big.bin",
                      "ünïcode-" + "x" * 110]
    assert closed == [True]


def test_changes_and_diff_size_of_reference_child(store: Store) -> None:
    base = store.create_layer(diff=io.BytesIO(base_tar()))
    child = store.create_layer(parent=base.id, diff=io.BytesIO(child_tar()))
    found = sorted((c.kind.label, c.path) for c in store.changes(None, child.id))
    assert found == [("Add", "/newfile.txt"), ("Add", "/opaque-dir/new.txt"), ("Delete", "/dir1/a.txt"),
                     ("Delete", "/opaque-dir/old.txt"), ("Modify", "/dir1"), ("Modify", "/opaque-dir")]
    assert store.diff_size(None, child.id) == 10


# ---------------------------------------------------------------- with the Go tool


def _go_layers(roots: tuple[str, str]) -> list[dict[str, Any]]:
    return json.loads(go(roots, "layers", "-j"))


@needs_go
def test_go_diffs_layers_lamina_applied(store: Store, roots: tuple[str, str]) -> None:
    base = store.create_layer(diff=io.BytesIO(base_tar()))
    child = store.create_layer(parent=base.id, diff=io.BytesIO(gzip.compress(child_tar())))
    assert go(roots, "diff", "-u", base.id) == base_tar()
    assert go(roots, "diff", "-u", child.id) == child_tar()
    assert gzip.decompress(go(roots, "diff", child.id)) == child_tar()  # recorded compression


@needs_go
def test_lamina_diffs_layers_go_applied(roots: tuple[str, str]) -> None:
    base_id = go(roots, "create-layer").decode().strip()
    go(roots, "applydiff", base_id, input=base_tar())
    child_id = go(roots, "import-layer", base_id, input=gzip.compress(child_tar())).decode().split()[0]
    store = Store(*roots, driver_name="vfs")
    assert read_diff(store, base_id) == base_tar()
    assert read_diff(store, child_id) == child_tar()
    assert decompress(read_diff(store, child_id, None)) == child_tar()


@needs_go
def test_records_and_tar_split_match_go(tmp_path: Path) -> None:
    ours, theirs = (str(tmp_path / "l-g"), str(tmp_path / "l-r")), (str(tmp_path / "g-g"), str(tmp_path / "g-r"))
    store = Store(*ours, driver_name="vfs")
    inputs = [base_tar(), child_tar()] + [compress(child_tar(), k) for k in ALL_KINDS[1:]] + [b""]
    parent = None
    go_parent: list[str] = []
    for blob in inputs:
        layer = store.create_layer(parent=parent, diff=io.BytesIO(blob))
        go_id = go(theirs, "create-layer", *go_parent).decode().strip()
        go_applydiff(theirs, go_id, blob, tmp_path)
        parent, go_parent = layer.id, [go_id]
        mine = [r for r in layers_json(ours[0]) if r["id"] == layer.id][0]
        their = [r for r in layers_json(theirs[0]) if r["id"] == go_id][0]
        assert list(mine) == list(their)
        assert content_fields(mine) == content_fields(their)
        ts_mine = gzip.decompress(open(os.path.join(ours[0], "vfs-layers", f"{layer.id}.tar-split.gz"), "rb").read())
        ts_go = gzip.decompress(open(os.path.join(theirs[0], "vfs-layers", f"{go_id}.tar-split.gz"), "rb").read())
        assert ts_mine == ts_go
        if lc.detect_compression(blob[:10]) not in (lc.XZ, lc.ZSTD):
            assert list(iter_entries([ts_mine]))[-1].payload == b""  # 1.43's trailing empty segment
    mine_json = [content_fields(r) for r in _go_layers(ours)]
    go_json = [content_fields(r) for r in _go_layers(theirs)]
    assert mine_json == go_json


def _tiny_tar(tail: int) -> bytes:
    """One file, the end-of-archive blocks, then *tail* zero bytes (tar writers pad differently)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, "file", "x", b"abc")
    return buf.getvalue()[:2048] + bytes(tail)


@needs_go
@pytest.mark.parametrize("tail", [0, 512, 70_000])
def test_tar_split_tail_matches_go_for_every_compression(tmp_path: Path, tail: int) -> None:
    store = Store(str(tmp_path / "l-g"), str(tmp_path / "l-r"), driver_name="vfs")
    theirs = (str(tmp_path / "g-g"), str(tmp_path / "g-r"))
    for kind in ALL_KINDS:
        blob = compress(_tiny_tar(tail), kind)
        layer = store.create_layer(diff=io.BytesIO(blob))
        go_id = go(theirs, "create-layer").decode().strip()
        go_applydiff(theirs, go_id, blob, tmp_path)
        ts_mine = gzip.decompress(open(os.path.join(str(tmp_path / "l-g"), "vfs-layers",
                                                   f"{layer.id}.tar-split.gz"), "rb").read())
        ts_go = gzip.decompress(open(os.path.join(theirs[0], "vfs-layers", f"{go_id}.tar-split.gz"), "rb").read())
        if kind == lc.UNCOMPRESSED and tail > 8192:
            # Go splits the tail where its 10240-byte sniffing buffer ends; the bytes are the same
            ts_go = b"".join(e.payload or b"" for e in iter_entries([ts_go]))
            ts_mine = b"".join(e.payload or b"" for e in iter_entries([ts_mine]))
        assert ts_mine == ts_go, kind
        assert read_diff(store, layer.id) == _tiny_tar(tail)


@needs_go
def test_corrupt_input_leaves_a_store_go_can_load(store: Store, roots: tuple[str, str]) -> None:
    keep = store.create_layer(names=["keep"], diff=io.BytesIO(base_tar()))
    for broken in (base_tar()[:1100], gzip.compress(base_tar())[:900], b"\x1f\x8b\x08garbage" * 100):
        with pytest.raises(ArchiveError):
            store.create_layer(parent=keep.id, diff=io.BytesIO(broken))
    assert [layer["id"] for layer in _go_layers(roots)] == [keep.id]
    assert go(roots, "diff", "-u", "keep") == base_tar()
    assert sorted(os.listdir(os.path.join(roots[0], "vfs", "dir"))) == [keep.id]


@needs_go
def test_changes_and_diff_size_match_go(store: Store, roots: tuple[str, str]) -> None:
    base = store.create_layer(diff=io.BytesIO(base_tar()))
    child = store.create_layer(parent=base.id, diff=io.BytesIO(child_tar()))
    for to, frm in ((child.id, None), (base.id, None), (base.id, child.id), (child.id, base.id)):
        args = [to] + ([frm] if frm else [])
        theirs = sorted(json.loads(go(roots, "changes", "-j", *args)) or [], key=lambda c: c["Path"])
        mine = sorted((c.to_json() for c in store.changes(frm, to)), key=lambda c: c["Path"])
        assert mine == theirs, args
        assert int(go(roots, "diffsize", *args)) == store.diff_size(frm, to), args


# ---------------------------------------------------------------- internals worth pinning down


def test_prefetch_thread_mode(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lc, "PREFETCH_THREAD", True)
    blob = gzip.compress(base_tar())
    layer = store.create_layer(diff=io.BytesIO(blob))
    assert layer.uncompressed_digest == sha(base_tar()) and layer.compressed_digest == sha(blob)
    assert read_diff(store, layer.id) == base_tar()
    with pytest.raises(ArchiveError, match="offset"):
        store.create_layer(diff=io.BytesIO(base_tar()[:5000]))
    assert [layer.id] == [x.id for x in store.layers()]



def test_hashing_moves_to_a_thread_once_the_input_is_large(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    def hash_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "lamina-layer-input-hash"]

    monkeypatch.setattr(lc, "_HASH_THREAD_AFTER", 1000)
    hashes, digest = lc._Hashes(), hashlib.sha256()
    hashes.update(digest, b"a" * 600)  # not started: inline
    hashes.start()
    hashes.update(digest, b"b" * 600)  # 600 bytes so far: still inline
    assert not hash_threads()
    hashes.update(digest, b"c" * 600)  # 1200: from now on in the thread, in order
    hashes.update(digest, b"d" * 600)
    assert len(hash_threads()) == 1
    hashes.close(discard=False)
    assert not hash_threads()
    assert digest.hexdigest() == hashlib.sha256(b"a" * 600 + b"b" * 600 + b"c" * 600 + b"d" * 600).hexdigest()


def test_tree_files_never_leave_the_layer(tmp_path: Path) -> None:
    root = tmp_path / "layer"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "inside").write_bytes(b"inside\n")
    os.symlink("/etc", root / "abs")
    os.symlink("../../../../etc", root / "rel")
    opener = lc._TreeFiles(str(root))
    try:
        assert opener("abs/inside").read() == b"inside\n"  # absolute links resolve inside the layer
        assert opener("rel/inside").read() == b"inside\n"
        assert opener("/etc/inside").read() == b"inside\n"
        for name in ("abs/hostname", "rel/passwd", "../etc/passwd"):
            with pytest.raises(OSError):
                opener(name).read()
    finally:
        opener.close()


def test_gzip_output_is_one_member_deflated_in_threads() -> None:
    import threading
    import zlib

    data = b"".join(os.urandom(1 << 16) + bytes(1 << 16) for _ in range(40))  # 5 MiB, half compressible
    chunks = [data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    before = set(threading.enumerate())
    out = b"".join(lc.compress_chunks(iter(chunks), lc.GZIP))
    d = zlib.decompressobj(31)
    assert d.decompress(out) == data and d.eof and not d.unused_data, "not exactly one gzip member"
    stream = lc.compress_chunks(iter(chunks), lc.GZIP)
    next(stream)
    stream.close()  # a reader that stops early: the compressing threads are still joined
    assert set(threading.enumerate()) <= before
