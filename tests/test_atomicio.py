"""Tests for lamina.atomicio: atomic replacement like Go's ioutils.AtomicWriteFile and JSON bytes
identical to Go's encoding/json."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lamina import atomicio
from lamina.atomicio import go_json_dumps, write_file_atomic, write_json_atomic

GO = shutil.which("containers-storage")
needs_go = pytest.mark.skipif(GO is None, reason="Go containers-storage (Debian package) not installed")


def mode_of(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ------------------------------------------------------------------- atomic write


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_write_mode_and_content(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "layers.json"
    old = os.umask(umask)
    try:
        write_file_atomic(str(target), b"abc")
        assert mode_of(target) == 0o600
        write_file_atomic(str(target), b"xyz!", 0o644)
        assert mode_of(target) == 0o644
    finally:
        os.umask(old)
    assert target.read_bytes() == b"xyz!"
    assert os.listdir(tmp_path) == ["layers.json"]


def test_replaces_atomically_new_inode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    ino = target.stat().st_ino
    with open(target, "rb") as reader:
        write_file_atomic(str(target), b"new")
        assert reader.read() == b"old"  # an open reader keeps the old file
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != ino


def test_temp_name_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "mountpoints.json"
    seen: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy_open(path: str, flags: int, mode: int = 0o777, **kw: Any) -> int:
        seen.append((path, flags, mode))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(atomicio.os, "open", spy_open)
    write_file_atomic(str(target), b"{}")
    (path, flags, mode) = seen[0]
    assert os.path.dirname(path) == str(tmp_path)
    assert re.fullmatch(r"\.tmp-mountpoints\.json\d{1,10}", os.path.basename(path))
    want = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    assert flags & want == want
    assert mode == 0o600


def test_rename_failure_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "images.json"
    target.write_bytes(b"old")

    def boom(src: str, dst: str) -> None:
        assert os.path.exists(src)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomicio.os, "rename", boom)
    with pytest.raises(OSError):
        write_file_atomic(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["images.json"]


def test_sync_failure_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomicio.os, "fdatasync", boom)
    with pytest.raises(OSError):
        write_file_atomic(str(tmp_path / "x"), b"data")
    assert os.listdir(tmp_path) == []


def test_missing_dir_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_file_atomic(str(tmp_path / "nope" / "x"), b"")
    assert os.listdir(tmp_path) == []


def test_sync_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(atomicio.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    write_file_atomic(str(tmp_path / "a"), b"1")
    assert synced == []  # like Go: no directory fsync by default
    write_file_atomic(str(tmp_path / "a"), b"2", sync_dir=True)
    assert len(synced) == 1
    assert (tmp_path / "a").read_bytes() == b"2"


def test_write_json(tmp_path: Path) -> None:
    target = tmp_path / "containers.json"
    obj = [{"id": "abc", "names": ["a<b"], "metadata": "x&y", "n": 3}]
    write_json_atomic(str(target), obj)
    raw = target.read_bytes()
    assert raw == b'[{"id":"abc","names":["a\\u003cb"],"metadata":"x\\u0026y","n":3}]'
    assert not raw.endswith(b"\n")
    assert mode_of(target) == 0o600
    assert json.loads(raw) == obj


def test_write_json_unserializable_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "layers.json"
    target.write_bytes(b"[]")
    with pytest.raises(TypeError):
        write_json_atomic(str(target), [{"bad": object()}])
    with pytest.raises(ValueError):
        write_json_atomic(str(target), [float("nan")])
    assert target.read_bytes() == b"[]"
    assert os.listdir(tmp_path) == ["layers.json"]


# ------------------------------------------------------------------- Go JSON encoding


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a<b>&c", r'"a\u003cb\u003e\u0026c"'),
        ("\u2028\u2029", r'"\u2028\u2029"'),
        ("\b\f\t\n\r\x01\x1f", r'"\u0008\u000c\t\n\r\u0001\u001f"'),
        ('"\\/', r'"\"\\/"'),
        ("\x7fé€😀", '"\x7fé€😀"'),
        ("\ud800", '"\ufffd"'),
        ("", '""'),
    ],
)
def test_go_string_escaping(value: str, expected: str) -> None:
    assert go_json_dumps(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (0.1, "0.1"),
        (-0.0, "-0"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (-2.5e300, "-2.5e+300"),
        (123456789.125, "123456789.125"),
        (5e-324, "5e-324"),
    ],
)
def test_go_floats(value: float, expected: str) -> None:
    assert go_json_dumps(value) == expected


def test_go_structures() -> None:
    obj = {"z": [1, True, False, None], "a": {"k": b"\x00\xff"}, "e": [], "m": {}}
    assert go_json_dumps(obj) == '{"z":[1,true,false,null],"a":{"k":"AP8="},"e":[],"m":{}}'
    assert go_json_dumps({"b": 1, "a": 2, "é": 3, "Z": 4}, sort_keys=True) == '{"Z":4,"a":2,"b":1,"é":3}'
    assert go_json_dumps((1, 2)) == "[1,2]"
    with pytest.raises(TypeError):
        go_json_dumps({1: 2})
    with pytest.raises(ValueError):
        go_json_dumps(float("inf"))


def test_matches_python_json_modulo_escapes() -> None:
    obj = {"names": ["plain", "ünï", "q\"b\\s"], "size": 12345, "flag": True}
    assert go_json_dumps(obj) == json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


NASTY_NAMES = [
    "a<b>&c",
    "line\u2028sep\u2029para",
    "ctl\b\f\t\n\r\x01\x1f\x7f",
    'quote"back\\slash/',
    "utf8 é € 😀",
]


@needs_go
def test_go_written_layers_json_roundtrips_bytewise(tmp_path: Path) -> None:
    assert GO is not None
    graph, run = tmp_path / "g", tmp_path / "r"
    cmd = [GO, "--graph", str(graph), "--run", str(run), "--storage-driver", "vfs", "create-layer"]
    for name in NASTY_NAMES:
        cmd += ["-n", name]
    proc = subprocess.run(cmd, capture_output=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    layers_json = graph / "vfs-layers" / "layers.json"
    raw = layers_json.read_bytes()
    assert not raw.endswith(b"\n")
    assert mode_of(layers_json) == 0o600
    parsed = json.loads(raw)
    assert parsed[0]["names"] == NASTY_NAMES
    # Go's exact escaping of each name appears in the file...
    for name in NASTY_NAMES:
        assert go_json_dumps(name).encode() in raw
    assert rb"a\u003cb\u003e\u0026c" in raw and rb"\u0008\u000c\t\n\r\u0001\u001f" in raw
    # ...and re-encoding the whole document reproduces Go's bytes exactly.
    assert go_json_dumps(parsed).encode() == raw
    # Rewriting it with lamina is a byte-for-byte no-op, and Go still reads it.
    write_json_atomic(str(layers_json), parsed)
    assert layers_json.read_bytes() == raw
    out = subprocess.run(
        [GO, "--graph", str(graph), "--run", str(run), "--storage-driver", "vfs", "layers", "-j"],
        capture_output=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["names"] == NASTY_NAMES
