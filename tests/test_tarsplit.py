"""tar-split records: CRC-64/ISO, the exact JSON lines, the streaming splitter's entry boundaries and
errors, reassembly, and byte-for-byte agreement with the files containers-storage 1.43 writes."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from lamina import crc64
from lamina.errors import ArchiveError
from lamina.tarsplit import (
    FILE_TYPE,
    SEGMENT_TYPE,
    Entry,
    JSONPacker,
    TarFormatError,
    TarSplitter,
    assemble,
    clean_path,
    decode_entry,
    encode_entry,
    go_json_string,
    iter_entries,
    read_tar_split,
)

GO = shutil.which("containers-storage")
needs_go = pytest.mark.skipif(GO is None, reason="Go containers-storage (Debian package) not installed")


# ---------------------------------------------------------------- helpers


def build_tar(entries: list[tuple], fmt: int = tarfile.GNU_FORMAT, **kw: object) -> bytes:
    """(kind, name, data-or-target, attrs) tuples -> tar bytes (tarfile pads to 10240)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kw) as tar:  # type: ignore[call-overload]
        for kind, name, data, attrs in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            info.uid, info.gid = attrs.get("uid", 0), attrs.get("gid", 0)
            info.mode = attrs.get("mode", 0o644)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, data
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return buf.getvalue()


def split(data: bytes, chunk: int | None = None) -> tuple[bytes, TarSplitter]:
    out: list[bytes] = []
    splitter = TarSplitter(JSONPacker(out.append))
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        splitter.feed(data[i:i + step])
    splitter.close()
    return b"".join(out), splitter


def records(ndjson: bytes) -> list[Entry]:
    return list(iter_entries([ndjson]))


def shape(entries: list[Entry]) -> list[tuple]:
    return [("seg", len(e.payload or b"")) if e.type == SEGMENT_TYPE else (e.name.decode(), e.size)
            for e in entries]


CHILD = [  # the reference's L2 tar (6 entries)
    ("dir", "dir1/", b"", {}),
    ("file", "dir1/.wh.a.txt", b"", {}),
    ("dir", "opaque-dir/", b"", {}),
    ("file", "opaque-dir/.wh..wh..opq", b"", {}),
    ("file", "opaque-dir/new.txt", b"new\n", {}),
    ("file", "newfile.txt", b"hello\n", {}),
]


# ---------------------------------------------------------------- CRC and JSON


def test_crc64_iso_matches_go() -> None:
    assert crc64.update(b"hello\n") == 0x614C3EEEE2D81000
    assert crc64.digest(crc64.update(b"hello\n")) == bytes.fromhex("614c3eeee2d81000")
    assert crc64.update(b"lo\n", crc64.update(b"hel")) == 0x614C3EEEE2D81000
    assert crc64.update(b"") == 0


def test_crc64_fallback_agrees() -> None:
    data = random.Random(1).randbytes(5000)
    assert crc64._pure_update(data) == crc64.update(data)
    assert crc64._pure_update(data[100:], crc64._pure_update(data[:100])) == crc64.update(data)


def test_json_lines_are_go_encoder_output() -> None:
    line = encode_entry(Entry(FILE_TYPE, b"etc/hello.txt", 6, bytes.fromhex("614c3eeee2d81000"), 5))
    assert line == b'{"type":1,"name":"etc/hello.txt","size":6,"payload":"YUw+7uLYEAA=","position":5}\n'
    assert encode_entry(Entry(FILE_TYPE, b"dir1/", 0, None, 1)) == b'{"type":1,"name":"dir1/","payload":null,"position":1}\n'
    assert encode_entry(Entry(SEGMENT_TYPE, b"", 0, b"", 24)) == b'{"type":2,"payload":"","position":24}\n'
    assert encode_entry(Entry(FILE_TYPE, b"caf\xe9", 1, b"\0" * 8, 1)).startswith(b'{"type":1,"name_raw":"Y2Fm6Q==",')
    assert go_json_string('ok<&>\u2028\x01"\\\n\b') == b'"ok\\u003c\\u0026\\u003e\\u2028\\u0001\\"\\\\\\n\\u0008"'
    assert go_json_string("ü.txt") == '"ü.txt"'.encode()


def test_decode_round_trip_and_errors() -> None:
    for entry in (Entry(FILE_TYPE, b"caf\xe9/x", 3, b"12345678", 7), Entry(SEGMENT_TYPE, b"", 0, b"\0" * 700, 2),
                  Entry(FILE_TYPE, "ok<&>\u2028".encode(), 0, None, 0)):
        assert decode_entry(encode_entry(entry)) == entry
    with pytest.raises(ArchiveError):
        decode_entry(b'{"type":1,"payload":"!!"}')
    with pytest.raises(ArchiveError):
        decode_entry(b"not json")


@pytest.mark.parametrize("path,clean", [
    (b"", b"."), (b"./", b"."), (b"./a//b/", b"a/b"), (b"a/../..", b".."), (b"/../a", b"/a"),
    (b"//a/./b/..", b"/a"), (b"a/b/../c", b"a/c"),
])
def test_clean_path_is_go_filepath_clean(path: bytes, clean: bytes) -> None:
    assert clean_path(path) == clean


# ---------------------------------------------------------------- the splitter


def test_reference_child_layer_records() -> None:
    data = build_tar(CHILD)
    assert len(data) == 10240
    ndjson, splitter = split(data)
    entries = records(ndjson)
    assert shape(entries) == [
        ("seg", 512), ("dir1/", 0), ("seg", 512), ("dir1/.wh.a.txt", 0), ("seg", 512), ("opaque-dir/", 0),
        ("seg", 512), ("opaque-dir/.wh..wh..opq", 0), ("seg", 512), ("opaque-dir/new.txt", 4), ("seg", 1020),
        ("newfile.txt", 6), ("seg", 1530), ("seg", 5120), ("seg", 0),
    ]
    assert [e.position for e in entries] == list(range(15))
    assert entries[11].payload == bytes.fromhex("614c3eeee2d81000")
    assert entries[1].payload is None and entries[3].payload is None
    assert splitter.uids == {0} and splitter.gids == {0} and splitter.entries == 6


def test_chunking_does_not_change_records() -> None:
    data = build_tar([("file", "a" * 150 + "/" + "b" * 120, b"x" * 700, {}), *CHILD], fmt=tarfile.GNU_FORMAT)
    whole, _ = split(data)
    for chunk in (1, 7, 511, 512, 513, 4096):
        assert split(data, chunk)[0] == whole


def test_meta_entries_stay_in_the_segment_before_their_file() -> None:
    long = "d" * 150 + "/" + "e" * 120
    gnu = records(split(build_tar([("file", long, b"long", {})], fmt=tarfile.GNU_FORMAT))[0])
    assert shape(gnu)[:2] == [("seg", 1536), (long, 4)]  # 'L' header + name block + real header
    pax = records(split(build_tar([("file", long, b"long", {}), ("file", "ü.txt", b"u", {})],
                                  fmt=tarfile.PAX_FORMAT))[0])
    assert shape(pax)[:4] == [("seg", 1536), (long, 4), ("seg", 2044), ("ü.txt", 1)]


def test_global_header_is_an_entry_of_its_own() -> None:
    data = build_tar([("file", "x", b"abc", {"uid": 5})], fmt=tarfile.PAX_FORMAT, pax_headers={"comment": "hi"})
    ndjson, splitter = split(data)
    assert shape(records(ndjson))[:4] == [("seg", 526), ("././@PaxHeader", 0), ("seg", 1010), ("x", 3)]
    assert splitter.uids == {0, 5}  # Go logs the global header as an entry owned by 0


def test_non_utf8_names_use_name_raw() -> None:
    data = build_tar([("file", b"caf\xe9".decode("utf-8", "surrogateescape"), b"x", {})],
                     encoding="utf-8", errors="surrogateescape")
    ndjson, _ = split(data)
    line = ndjson.split(b"\n")[1]
    assert json.loads(line)["name_raw"] == "Y2Fm6Q==" and b'"name"' not in line
    assert records(ndjson)[1].name == b"caf\xe9"


def test_uid_gid_sets_skip_whiteouts_and_follow_pax() -> None:
    data = build_tar([
        ("file", "a", b"1", {"uid": 1000, "gid": 1001}),
        ("file", "d/.wh.gone", b"", {"uid": 7, "gid": 7}),
        ("dir", ".wh.dir/", b"", {"uid": 8, "gid": 8}),
        ("file", "big", b"2", {"uid": 3_000_000, "gid": 2_500_000}),  # needs PAX or base-256
    ], fmt=tarfile.PAX_FORMAT)
    _, splitter = split(data)
    assert splitter.uids == {1000, 3_000_000} and splitter.gids == {1001, 2_500_000}
    gnu = build_tar([("file", "big", b"2", {"uid": 3_000_000, "gid": 0o7777777 + 1})], fmt=tarfile.GNU_FORMAT)
    assert split(gnu)[1].uids == {3_000_000}


def test_trailing_data_and_missing_end_marker() -> None:
    data = build_tar(CHILD)
    garbage = records(split(data + b"garbage!" * 10)[0])
    assert shape(garbage)[-3:] == [("seg", 1530), ("seg", 5200), ("seg", 0)]
    no_end = records(split(build_tar([("file", "x", b"abc", {})])[:1024])[0])
    assert shape(no_end) == [("seg", 512), ("x", 3), ("seg", 509), ("seg", 0)]
    assert shape(records(split(b"")[0])) == [("seg", 0)]


def _fails(data: bytes) -> TarFormatError:
    with pytest.raises(TarFormatError) as info:
        split(data)
    return info.value


def test_truncated_and_corrupt_archives_name_entry_and_offset() -> None:
    data = build_tar([("file", "first.txt", b"x" * 100, {}), ("file", "second.txt", b"y" * 700, {})])
    body = _fails(data[:512 + 50])
    assert body.entry == "first.txt" and body.offset == 562 and "unexpected EOF" in str(body)
    assert "first.txt" in str(body) and "562" in str(body)
    header = _fails(data[:1024 + 100])
    assert header.offset == 1024 and "first.txt" in str(header)
    bad = bytearray(data)
    bad[1024 + 10] ^= 0xFF
    corrupt = _fails(bytes(bad))
    assert "invalid tar header" in str(corrupt) and corrupt.offset == 1024 and corrupt.entry == "first.txt"
    zero_then_data = data[:1024] + bytes(512) + data[1024:]
    assert "zero block" in str(_fails(zero_then_data))
    # EOF inside padding is accepted, as Go's reader accepts it
    ndjson, _ = split(data[:512 + 100 + 10])
    assert shape(records(ndjson))[-2:] == [("seg", 10), ("seg", 0)]


def test_duplicate_paths_are_refused_like_tar_split() -> None:
    data = build_tar([("file", "a", b"x", {}), ("file", "./a", b"y", {})])
    err = _fails(data)
    assert "duplicates of file paths not supported" in str(err) and err.entry == "./a"


def test_bad_pax_records_are_refused() -> None:
    data = bytearray(build_tar([("file", "ü", b"x", {})], fmt=tarfile.PAX_FORMAT))
    assert data[512:515] == b"11 "  # "11 path=ü\n" (ü is two bytes)
    data[512:514] = b"99"
    assert "invalid tar header" in str(_fails(bytes(data)))


# ---------------------------------------------------------------- reassembly


def _opener(files: dict[str, bytes]):  # type: ignore[no-untyped-def]
    return lambda name: io.BytesIO(files[name])


def test_assemble_reproduces_the_archive() -> None:
    data = build_tar([("file", "a.txt", b"a" * 3000, {}), ("dir", "d/", b"", {}), ("symlink", "l", "a.txt", {}),
                      ("hardlink", "h", "a.txt", {}), ("file", "d/empty", b"", {}), *CHILD[4:]])
    ndjson, _ = split(data)
    files = {"a.txt": b"a" * 3000, "opaque-dir/new.txt": b"new\n", "newfile.txt": b"hello\n"}
    assert b"".join(assemble(records(ndjson), _opener(files), chunk_size=1000)) == data
    packed = gzip.compress(ndjson)
    assert b"".join(assemble(read_tar_split(io.BytesIO(packed), 100), _opener(files))) == data
    without_last = ndjson[:ndjson.rindex(b'{"type":2,"payload":""')]  # as 1.62 writes them
    assert b"".join(assemble(records(without_last), _opener(files))) == data


def test_assemble_checks_size_and_crc() -> None:
    ndjson, _ = split(build_tar([("file", "a.txt", b"abc", {})]))
    with pytest.raises(ArchiveError, match="checksum failed"):
        b"".join(assemble(records(ndjson), _opener({"a.txt": b"abd"})))
    with pytest.raises(ArchiveError, match="shorter"):
        b"".join(assemble(records(ndjson), _opener({"a.txt": b"ab"})))
    with pytest.raises(ArchiveError, match="longer"):
        b"".join(assemble(records(ndjson), _opener({"a.txt": b"abcd"})))
    with pytest.raises(ArchiveError, match="a.txt"):
        b"".join(assemble(records(ndjson), lambda name: open("/nonexistent/" + name, "rb")))


# ---------------------------------------------------------------- agreement with containers-storage 1.43


def _go_tar_split(tmp: Path, data: bytes) -> tuple[int, bytes | None]:
    base = ["containers-storage", "--graph", str(tmp / "g"), "--run", str(tmp / "r"), "--storage-driver", "vfs"]
    layer = subprocess.run(base + ["create-layer"], capture_output=True, text=True, check=True).stdout.strip()
    # from a file: from a pipe, Go's segments after the archive depend on the pipe's timing
    source = tmp / "go-applydiff-input"
    source.write_bytes(data)
    rc = subprocess.run(base + ["applydiff", "-f", str(source), layer], capture_output=True).returncode
    path = tmp / "g" / "vfs-layers" / f"{layer}.tar-split.gz"
    return rc, gzip.decompress(path.read_bytes()) if path.exists() else None


def _gnu_tar(tmp: Path) -> bytes:
    src = tmp / "src"
    (src / "etc").mkdir(parents=True)
    (src / "dir1").mkdir()
    (src / "etc" / "hello.txt").write_bytes(b"hello\n")
    os.link(src / "etc" / "hello.txt", src / "etc" / "hello-hard")
    os.symlink("etc/hello.txt", src / "link-to-hello")
    (src / "dir1" / "b.txt").write_bytes(b"b\n")
    os.chown(src / "dir1" / "b.txt", 1000, 1001)
    (src / "big").write_bytes(random.Random(2).randbytes(70_000))
    (src / ("n" * 120)).write_bytes(b"long name\n")
    return subprocess.run(["tar", "-C", str(src), "--sort=name", "-cf", "-", "."], capture_output=True,
                          check=True).stdout


def _with_size_field(data: bytes, entry: int, size: int) -> bytes:
    """*data* with the size field of its *entry*-th header block (one-block entries before it)
    set to *size* and the checksum made right again."""
    out = bytearray(data)
    at = entry * 512
    out[at + 124:at + 136] = b"%011o\0" % size
    out[at + 148:at + 156] = b" " * 8
    out[at + 148:at + 156] = b"%06o\0 " % sum(out[at:at + 512])
    return bytes(out)


@needs_go
def test_records_equal_what_go_writes(tmp_path: Path) -> None:
    corpus = {
        "child": build_tar(CHILD),
        "pax": build_tar([("file", "d" * 150 + "/" + "e" * 120, b"long", {"uid": 3_000_000}),
                          ("file", "ü<&>.txt", b"u", {})], fmt=tarfile.PAX_FORMAT),
        "global": build_tar([("file", "x", b"abc", {})], fmt=tarfile.PAX_FORMAT, pax_headers={"comment": "hi"}),
        "raw-name": build_tar([("file", b"caf\xe9".decode("utf-8", "surrogateescape"), b"x", {})],
                              encoding="utf-8", errors="surrogateescape"),
        "ustar": build_tar([("dir", "p" * 120 + "/", b"", {}),
                            ("file", "p" * 120 + "/" + "q" * 50, b"prefixed", {"uid": 7, "gid": 8}),
                            ("file", "./dot/x", b"unclean name", {}), ("symlink", "./dot/s", "x", {}),
                            ("hardlink", "./dot/h", "./dot/x", {}), ("file", "empty", b"", {})],
                           fmt=tarfile.USTAR_FORMAT),
        # a directory and a symlink whose headers give a size (their data sections stay empty)
        "header-only-sized": _with_size_field(_with_size_field(build_tar(
            [("dir", "d/", b"", {}), ("symlink", "l", "d", {}), ("file", "f", b"x", {})],
            fmt=tarfile.USTAR_FORMAT), 0, 7), 1, 600),
        "no-end": build_tar([("file", "x", b"abc", {})])[:1024],
        "empty": b"",
    }
    if shutil.which("tar"):
        corpus["gnu"] = _gnu_tar(tmp_path)
    for name, data in corpus.items():
        rc, theirs = _go_tar_split(tmp_path, data)
        assert rc == 0 and theirs is not None, name
        assert split(data)[0] == theirs, name
        assert split(data, 333)[0] == theirs, name


@needs_go
def test_go_refuses_what_the_splitter_refuses(tmp_path: Path) -> None:
    data = build_tar([("file", "first.txt", b"x" * 100, {}), ("file", "second.txt", b"y" * 700, {})])
    bad = bytearray(data)
    bad[1024 + 10] ^= 0xFF
    for broken in (data[:562], data[:1124], bytes(bad), data[:1024] + bytes(512) + data[1024:],
                   build_tar([("file", "a", b"x", {}), ("file", "./a", b"y", {})])):
        rc, _ = _go_tar_split(tmp_path, broken)
        assert rc != 0
        with pytest.raises(TarFormatError):
            split(broken)


def test_no_final_empty_segment_when_the_reader_ends_with_data() -> None:
    data = build_tar(CHILD)
    out: list[bytes] = []
    splitter = TarSplitter(JSONPacker(out.append))
    splitter.feed(data)
    splitter.close(eof_with_data=True)
    assert shape(records(b"".join(out)))[-2:] == [("seg", 1530), ("seg", 5120)]
    out.clear()
    splitter = TarSplitter(JSONPacker(out.append))
    splitter.feed(build_tar([("file", "x", b"abc", {})])[:2048])  # nothing after the end blocks
    splitter.close(eof_with_data=True)
    assert shape(records(b"".join(out))) == [("seg", 512), ("x", 3), ("seg", 1533), ("seg", 0)]


def test_damaged_tar_split_files_are_archive_errors() -> None:
    ndjson, _ = split(build_tar(CHILD))
    packed = gzip.compress(ndjson)
    with pytest.raises(ArchiveError, match="truncated"):
        list(read_tar_split(io.BytesIO(packed[:-6])))
    with pytest.raises(ArchiveError, match="not valid gzip"):
        list(read_tar_split(io.BytesIO(packed[:10] + b"garbage" * 20)))
    with pytest.raises(ArchiveError, match="malformed"):
        list(read_tar_split(io.BytesIO(gzip.compress(b'{"type":1,"name":\n'))))
