"""Store-level hostile-archive corpus: every case goes through ``Store.create_layer(diff=...)`` on
vfs and must be rejected (ArchiveError) or contained (written only inside the layer's folder).
Afterwards nothing outside the graph root changed, and a fresh Store load shows no incomplete layer:
only the good layers are listed, no ``vfs/dir/<id>`` or tar-split file is left for failed ones."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lamina import layercontent as lc
from lamina.errors import ArchiveError
from lamina.store import Store

T0 = 1_700_000_000
DEEP = "../" * 12  # from <graph>/vfs/dir/<id> this climbs well past the test's tmp dir


class Tar:
    """Hostile-archive writer (Python's tarfile plus raw edits)."""

    def __init__(self, fmt: int = tarfile.PAX_FORMAT) -> None:
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=fmt)

    def _add(self, name: str, type_: bytes, data: bytes = b"", mode: int = 0o644, linkname: str = "",
             pax: dict[str, str] | None = None, **attrs: Any) -> Tar:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime, ti.linkname = type_, mode, T0, linkname
        ti.size = len(data) if type_ == tarfile.REGTYPE else 0
        for k, v in attrs.items():
            setattr(ti, k, v)
        if pax:
            ti.pax_headers = pax
        self.tf.addfile(ti, io.BytesIO(data) if type_ == tarfile.REGTYPE else None)
        return self

    def file(self, name: str, data: bytes = b"x", **kw: Any) -> Tar:
        return self._add(name, tarfile.REGTYPE, data, **kw)

    def dir(self, name: str) -> Tar:
        return self._add(name, tarfile.DIRTYPE, mode=0o755)

    def symlink(self, name: str, target: str) -> Tar:
        return self._add(name, tarfile.SYMTYPE, mode=0o777, linkname=target)

    def hardlink(self, name: str, target: str, **kw: Any) -> Tar:
        return self._add(name, tarfile.LNKTYPE, linkname=target, **kw)

    def device(self, name: str, major: int = 1, minor: int = 3, type_: bytes = tarfile.CHRTYPE) -> Tar:
        return self._add(name, type_, mode=0o666, devmajor=major, devminor=minor)

    def bytes(self) -> bytes:
        self.tf.close()
        return self.buf.getvalue()


def _rechecksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block[:512])


def huge_size_header(size_field: bytes) -> bytes:
    data = bytearray(Tar().file("big", b"tiny").bytes())
    data[124:136] = size_field
    header = bytearray(data[:512])
    _rechecksum(header)
    data[:512] = header
    return bytes(data)


def bad_checksum() -> bytes:
    data = bytearray(Tar(tarfile.USTAR_FORMAT).file("a", b"1").file("b", b"2").bytes())
    data[1024 + 148:1024 + 156] = b"0000000\x00"  # second header, wrong checksum
    return bytes(data)


def malformed_pax() -> bytes:
    data = bytearray(Tar().file("x" * 120, b"1").bytes())  # name too long for ustar: a PAX header
    body = data[512:1024]
    body[0:2] = b"99"  # record length past the end of the extended header
    data[512:1024] = body
    return bytes(data)


def corrupt_gzip() -> bytes:
    blob = bytearray(gzip.compress(Tar().file("a", os.urandom(200_000)).file("b", b"b").bytes()))
    for i in range(len(blob) // 2, len(blob) // 2 + 64):
        blob[i] ^= 0xA5
    return bytes(blob)


# A case: (id, builder taking the sentinel dir, expected outcome, optional check of the layer dir)
#   "error" = must raise ArchiveError; "ok" = must succeed (contained); "any" = either, but contained.
Check = Callable[[Path, Path], None]


def _no_escape_file(layer: Path, sentinel: Path) -> None:
    assert not (sentinel / "pwned").exists()


def _absolute_made_relative(layer: Path, sentinel: Path) -> None:
    assert (layer / str(sentinel).lstrip("/") / "pwned").read_bytes() == b"x"


def _not_host_passwd(layer: Path, sentinel: Path) -> None:
    assert os.lstat(layer / "hl").st_ino != os.stat("/etc/passwd").st_ino
    assert (layer / "hl").read_bytes() == b"layer passwd"


def _device_inside(layer: Path, sentinel: Path) -> None:
    # the store applies with allow_devices=True (like Go as root): the node is created in the layer
    import stat
    if os.geteuid() == 0:
        assert stat.S_ISCHR(os.lstat(layer / "dev" / "mynull").st_mode)


CASES: list[tuple[str, Callable[[Path], bytes], str, Check | None]] = [
    # path traversal
    ("dotdot-file", lambda s: Tar().file(DEEP + s.name + "/pwned").bytes(), "error", None),
    ("dotdot-nested", lambda s: Tar().file("a/b/" + DEEP + s.name + "/pwned").bytes(), "error", None),
    ("dotdot-dir", lambda s: Tar().dir(DEEP + s.name + "/newdir").bytes(), "error", None),
    ("dotdot-symlink-name", lambda s: Tar().symlink(DEEP + s.name + "/ln", "/etc/passwd").bytes(), "error", None),
    ("dotdot-device-name", lambda s: Tar().device(DEEP + s.name + "/dev").bytes(), "error", None),
    ("file-named-dotdot", lambda s: Tar().file("..").bytes(), "error", None),
    ("file-named-dot", lambda s: Tar().file(".").bytes(), "error", None),
    ("absolute-name", lambda s: Tar().file(f"{s}/pwned").bytes(), "ok", _absolute_made_relative),
    # symlinked parents pointing outside
    ("symlink-abs-parent", lambda s: Tar().symlink("esc", str(s)).file("esc/pwned").bytes(), "any", None),
    ("symlink-rel-parent", lambda s: Tar().symlink("esc", DEEP + s.name).file("esc/pwned").bytes(), "any", None),
    # "outlink" is a symlink to the sentinel in the parent layer of the "child" variants
    ("inherited-symlink-parent", lambda s: Tar().file("outlink/pwned").dir("outlink/sub").bytes(), "any", None),
    ("inherited-symlink-whiteout", lambda s: Tar().file("outlink/.wh.victim").bytes(), "any", None),
    ("symlink-chain-parent", lambda s: Tar().symlink("a", "b").symlink("b", str(s)).file("a/pwned").bytes(),
     "any", None),
    ("symlink-deep-parent", lambda s: Tar().dir("d").symlink("d/esc", "../" + DEEP + s.name)
     .file("d/esc/sub/pwned").bytes(), "any", None),
    ("symlink-swapped-mid-archive", lambda s: Tar().dir("d").file("d/f").symlink("d", str(s))
     .file("d/pwned").bytes(), "any", None),
    ("symlink-leaf-replaced", lambda s: Tar().symlink("leaf", f"{s}/victim").file("leaf", b"replaced").bytes(),
     "error", None),  # tar-split (like Go) refuses duplicate paths
    # hardlinks
    # (in the child variants the parent holds etc/passwd: the link resolves to that copy)
    ("hardlink-etc-passwd", lambda s: Tar().hardlink("hl", "/etc/passwd").bytes(), "any", _not_host_passwd),
    ("hardlink-dotdot", lambda s: Tar().hardlink("hl", DEEP + s.name + "/victim").bytes(), "error", None),
    ("hardlink-through-symlink", lambda s: Tar().symlink("esc", str(s)).hardlink("hl", "esc/victim").bytes(),
     "error", None),
    ("hardlink-to-symlink-chmod", lambda s: Tar().symlink("ln", f"{s}/victim")
     .hardlink("hl", "ln", mode=0o777).bytes(), "any", None),
    ("hardlink-missing-target", lambda s: Tar().hardlink("hl", "nothing/here").bytes(), "error", None),
    # devices and special modes (the store allows devices, like Go running as root)
    ("device-node", lambda s: Tar().dir("dev").device("dev/mynull").bytes(), "ok", _device_inside),
    ("device-through-symlink", lambda s: Tar().symlink("esc", str(s)).device("esc/dev").bytes(), "any", None),
    ("setuid-file-through-symlink", lambda s: Tar().symlink("esc", str(s))
     .file("esc/victim", b"owned", mode=0o4777).bytes(), "any", None),
    # whiteouts
    ("whiteout-dotdot", lambda s: Tar().file(".wh..").bytes(), "error", None),
    ("whiteout-sub-dotdot", lambda s: Tar().dir("sub").file("sub/.wh..").bytes(), "error", None),
    ("whiteout-escaping-path", lambda s: Tar().file(DEEP + s.name + "/.wh.victim").bytes(), "error", None),
    ("whiteout-through-symlink", lambda s: Tar().symlink("esc", str(s)).file("esc/.wh.victim").bytes(),
     "any", None),
    ("opaque-through-symlink", lambda s: Tar().symlink("esc", str(s)).file("esc/.wh..wh..opq").bytes(),
     "any", None),
    # PAX / GNU name extensions
    ("pax-path-dotdot", lambda s: Tar().file("innocent", pax={"path": DEEP + s.name + "/pwned"}).bytes(),
     "error", None),
    ("pax-linkpath-dotdot", lambda s: Tar().hardlink("hl", "innocent",
                                                     pax={"linkpath": DEEP + s.name + "/victim"}).bytes(),
     "error", None),
    ("pax-malformed", lambda s: malformed_pax(), "error", None),
    ("gnu-longname-dotdot", lambda s: Tar(tarfile.GNU_FORMAT).file(DEEP + s.name + "/" + "p" * 120).bytes(),
     "error", None),
    ("gnu-longlink-dotdot", lambda s: Tar(tarfile.GNU_FORMAT).hardlink("hl", DEEP + s.name + "/victim" + "/." * 60)
     .bytes(), "error", None),
    # sizes, truncation, corruption
    ("huge-size-octal", lambda s: huge_size_header(b"77777777777\x00"), "error", None),
    ("huge-size-base256", lambda s: huge_size_header(b"\x80" + b"\x00" * 3 + b"\x7f" + b"\xff" * 7), "error", None),
    ("truncated-in-header", lambda s: Tar().file("a", b"1" * 600).file("b").bytes()[:1024 + 100], "error", None),
    ("truncated-in-body", lambda s: Tar().file("a", b"1" * 5000).bytes()[:512 + 1000], "error", None),
    ("bad-checksum", lambda s: bad_checksum(), "error", None),
    ("garbage", lambda s: os.urandom(4096), "error", None),
    ("gzip-corrupt", lambda s: corrupt_gzip(), "error", None),
    ("gzip-truncated", lambda s: gzip.compress(Tar().file("a", os.urandom(50_000)).bytes())[:20_000], "error",
     None),
    ("gzip-garbage", lambda s: b"\x1f\x8b\x08garbage" * 100, "error", None),
    ("bzip2-truncated", lambda s: bz2.compress(Tar().file("a", os.urandom(50_000)).bytes())[:20_000], "error",
     None),
    ("xz-truncated", lambda s: lzma.compress(Tar().file("a", os.urandom(50_000)).bytes())[:20_000], "error",
     None),
    # duplicates
    ("duplicate-paths", lambda s: Tar().file("dup", b"first").file("dup", b"second")
     .symlink("swap", f"{s}/victim").file("swap", b"after").bytes(), "error", None),
    ("dir-then-symlink-then-write", lambda s: Tar().dir("x").symlink("x", str(s)).dir("x/y")
     .file("x/y/pwned").bytes(), "any", None),
]


def _state(root: Path, skip: set[Path]) -> dict[str, tuple[int, int, int, str]]:
    out: dict[str, tuple[int, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = ""
            if os.path.isfile(p) and not os.path.islink(p):
                digest = hashlib.sha256(open(p, "rb").read()).hexdigest()
            out[p] = (st.st_mode, st.st_uid, st.st_mtime_ns, digest)
    return out


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "victim").write_bytes(b"secret")
    os.chmod(sentinel / "victim", 0o600)
    (sentinel / "keep").mkdir()
    return {"tmp": tmp_path, "graph": tmp_path / "graph", "run": tmp_path / "run", "sentinel": sentinel}


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("prefetch", [False, True], ids=["inline", "thread"])
@pytest.mark.parametrize("with_parent", [False, True], ids=["base", "child"])
@pytest.mark.parametrize("name,build,expect,check", CASES, ids=[c[0] for c in CASES])
def test_hostile_archive_rejected_or_contained(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                name: str, build: Callable[[Path], bytes], expect: str,
                                                check: Check | None, with_parent: bool, prefetch: bool) -> None:
    monkeypatch.setattr(lc, "PREFETCH_THREAD", prefetch)
    graph, run, sentinel = env["graph"], env["run"], env["sentinel"]
    store = Store(str(graph), str(run), driver_name="vfs")
    good: list[str] = []
    parent = None
    if with_parent:
        # a parent layer holding a symlink that points outside (the child inherits it on vfs)
        base = Tar().dir("etc").file("etc/passwd", b"layer passwd").symlink("outlink", str(sentinel)).bytes()
        parent = store.create_layer(diff=io.BytesIO(base)).id
        good.append(parent)
    before = _state(env["tmp"], {graph, run})
    host_before = open("/etc/passwd", "rb").read()
    threads_before = set(threading.enumerate())

    data = build(sentinel)
    layer = None
    error: BaseException | None = None
    try:
        layer = store.create_layer(parent=parent, diff=io.BytesIO(data))
    except ArchiveError as exc:
        error = exc
    if expect == "error":
        assert error is not None, f"{name}: accepted"
    elif expect == "ok":
        assert error is None, f"{name}: {error}"
    if layer is not None:
        good.append(layer.id)
        layer_dir = graph / "vfs" / "dir" / layer.id
        _no_escape_file(layer_dir, sentinel)
        if check is not None:
            check(layer_dir, sentinel)

    assert _state(env["tmp"], {graph, run}) == before, f"{name}: something outside the graph root changed"
    assert open("/etc/passwd", "rb").read() == host_before
    assert not [t for t in threading.enumerate() if t not in threads_before], "a producer thread leaked"

    fresh = Store(str(graph), str(run), driver_name="vfs")
    layers = fresh.layers()
    assert sorted(l.id for l in layers) == sorted(good)
    assert not [l for l in layers if l.flags.get("incomplete")]
    assert sorted(os.listdir(graph / "vfs" / "dir")) == sorted(good)
    split = sorted(n[: -len(".tar-split.gz")] for n in os.listdir(graph / "vfs-layers")
                   if n.endswith(".tar-split.gz"))
    assert split == sorted(good)


# ---------------------------------------------------------------- the decompressing producer thread


def _producer_threads() -> list[threading.Thread]:
    # the producer, and the hash thread it starts for large inputs like these
    return [t for t in threading.enumerate() if t.name.startswith("lamina-layer-input")]


def _big_gzip_tar(first: Tar) -> bytes:
    # many MiB after the first entry: the producer is still running (queue full) when it fails
    return gzip.compress(first.file("filler", os.urandom(24 << 20)).bytes(), compresslevel=1)


@pytest.mark.parametrize("case", ["ok", "unsafe-first-entry", "corrupt-gzip", "truncated-gzip",
                                  "driver-crash", "zstd-truncated"])
def test_producer_thread_is_joined_on_every_path(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                 case: str) -> None:
    monkeypatch.setattr(lc, "PREFETCH_THREAD", None)  # the default: a thread for every input
    store = Store(str(env["graph"]), str(env["run"]), driver_name="vfs")
    assert not _producer_threads()
    if case == "ok":
        data = _big_gzip_tar(Tar().file("a"))
    elif case == "unsafe-first-entry":
        data = _big_gzip_tar(Tar().file(DEEP + "sentinel/pwned"))
    elif case == "corrupt-gzip":
        blob = bytearray(_big_gzip_tar(Tar().file("a")))
        blob[len(blob) // 2:len(blob) // 2 + 256] = b"\x00" * 256
        data = bytes(blob)
    elif case == "truncated-gzip":
        data = _big_gzip_tar(Tar().file("a"))[: 12 << 20]
    elif case == "zstd-truncated":
        zstandard = pytest.importorskip("zstandard")
        data = zstandard.ZstdCompressor(level=1).compress(
            Tar().file("a").file("filler", os.urandom(8 << 20)).bytes())[: 4 << 20]
    else:  # the driver fails for a reason of its own while the producer is busy
        data = _big_gzip_tar(Tar().file("a"))
        from lamina import archive

        real = archive._TarReader.next
        calls = {"n": 0}

        def failing(self: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(28, "No space left on device")
            return real(self)

        monkeypatch.setattr(archive._TarReader, "next", failing)
    if case == "ok":
        layer = store.create_layer(diff=io.BytesIO(data))
        assert layer.compressed_digest == "sha256:" + hashlib.sha256(data).hexdigest()
    else:
        with pytest.raises((ArchiveError, OSError)) as info:
            store.create_layer(diff=io.BytesIO(data))
        if case in ("corrupt-gzip", "truncated-gzip", "zstd-truncated"):
            assert isinstance(info.value, ArchiveError) and "offset" in str(info.value)
            assert case == "zstd-truncated" or "filler" in str(info.value)
        assert Store(str(env["graph"]), str(env["run"]), driver_name="vfs").layers() == []
        assert os.listdir(env["graph"] / "vfs" / "dir") == []
    assert not _producer_threads(), "the producer thread was left running"
