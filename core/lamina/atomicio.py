"""Atomic file replacement and Go-compatible JSON encoding.

``write_file_atomic`` follows containers/storage's ``ioutils.AtomicWriteFile``: the data goes to a
temporary file ``.tmp-<basename><random decimal digits>`` next to the target, is ``fdatasync``-ed,
chmod-ed to the requested mode and renamed over the target. A reader therefore sees either the old or
the new file, never a mix. Like Go, the directory is not fsync-ed unless ``sync_dir=True``.

``go_json_dumps`` produces the same bytes as Go's ``encoding/json.Marshal`` (Go 1.19, the toolchain of
containers-storage 1.43) for JSON-like Python values, so metadata files written by lamina are
byte-identical to the ones the Go tools write.
"""

from __future__ import annotations

import base64
import errno
import json
import math
import re
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "go_json_dumps",
    "write_file_atomic",
    "write_json_atomic",
]

_TEMP_ATTEMPTS = 10000  # Go's os.CreateTemp gives up after this many name collisions


def _open_temp(directory: str, prefix: str, mode: int) -> tuple[int, str]:
    """Create and open a new, unique temp file ``<directory>/<prefix><digits>`` (O_EXCL)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for _ in range(_TEMP_ATTEMPTS):
        # Go: strconv.Itoa(uint32 random) -> 1 to 10 decimal digits.
        name = os.path.join(directory, f"{prefix}{int.from_bytes(os.urandom(4), 'little')}")
        try:
            return os.open(name, flags, mode), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a unique temporary file", directory)


def _fsync_dir(directory: str) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_file_atomic(path: str, data: bytes, mode: int = 0o600, *, sync_dir: bool = False) -> None:
    """Atomically replace ``path`` with ``data``; the file ends with permission bits exactly ``mode``.

    Steps (as Go's ``ioutils.AtomicWriteFile``): create ``.tmp-<basename><digits>`` in the target's
    directory with ``O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC``, write everything, ``fdatasync``, ``fchmod``
    to ``mode`` (so the umask does not matter), close, ``rename`` over ``path``. On any failure the
    temp file is removed and the exception propagates; ``path`` is then untouched. With
    ``sync_dir=True`` the directory is also fsync-ed after the rename (Go does not do this).
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = _open_temp(directory, ".tmp-" + os.path.basename(path), mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:  # pragma: no cover - os.write raises instead
                    raise OSError(errno.EIO, "short write", tmp)
                view = view[written:]
            os.fdatasync(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync_dir:
        _fsync_dir(directory)


def write_json_atomic(path: str, obj: Any, mode: int = 0o600, *, sync_dir: bool = False) -> None:
    """Serialize ``obj`` with :func:`go_json_dumps` (no trailing newline) and write it atomically.

    Serialization happens before any file is created, so an unserializable ``obj`` leaves no trace.
    """
    data = go_json_dumps(obj).encode("utf-8")
    write_file_atomic(path, data, mode, sync_dir=sync_dir)


# ----------------------------------------------------------------------------------- Go JSON

# Go 1.19 encodeState.string with escapeHTML=true: '"' and '\\' get a backslash, \n \r \t their short
# forms, every other control character (including \b and \f; the short forms came in Go 1.22) and
# < > & U+2028 U+2029 become \u00XX / \u20XX. DEL (0x7f), '/' and all other non-ASCII are emitted raw.
_ESCAPES: dict[int, str] = {c: f"\\u{c:04x}" for c in range(0x20)}
_ESCAPES.update(
    {
        ord('"'): '\\"',
        ord("\\"): "\\\\",
        ord("\n"): "\\n",
        ord("\r"): "\\r",
        ord("\t"): "\\t",
        ord("<"): "\\u003c",
        ord(">"): "\\u003e",
        ord("&"): "\\u0026",
        0x2028: "\\u2028",
        0x2029: "\\u2029",
    }
)
# Lone surrogates cannot be UTF-8; Go replaces invalid UTF-8 with U+FFFD.
_ESCAPES.update({c: "\ufffd" for c in range(0xD800, 0xE000)})


def _go_string(s: str) -> str:
    return '"' + s.translate(_ESCAPES) + '"'


def _go_float(f: float) -> str:
    """Format like Go's encoding/json floatEncoder (bits=64, shortest round-trip digits)."""
    if math.isnan(f) or math.isinf(f):
        raise ValueError(f"json: unsupported value: {f!r}")
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    import decimal

    sign, digit_tuple, exp = decimal.Decimal(repr(f)).as_tuple()
    assert isinstance(exp, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    exp += len("".join(map(str, digit_tuple))) - len(digits)
    # value = 0.<digits> * 10**point
    point = len(digits) + exp
    neg = "-" if sign else ""
    a = abs(f)
    if a < 1e-6 or a >= 1e21:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        e = point - 1
        # Go's 'e' format uses at least two exponent digits, then json trims "e-0X" to "e-X".
        if e < 0:
            es = f"e-{-e:02d}"
            if es.startswith("e-0"):
                es = "e-" + es[3:]
        else:
            es = f"e+{e:02d}"
        return neg + mant + es
    if point <= 0:
        return neg + "0." + "0" * (-point) + digits
    if point >= len(digits):
        return neg + digits + "0" * (point - len(digits))
    return neg + digits[:point] + "." + digits[point:]


def _encode(obj: Any, out: list[str], sort_keys: bool) -> None:
    if obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, str):
        out.append(_go_string(obj))
    elif isinstance(obj, int):
        out.append(int.__repr__(obj))
    elif isinstance(obj, float):
        out.append(_go_float(obj))
    elif (dec := sys.modules.get("decimal")) is not None and isinstance(obj, dec.Decimal):
        # (no Decimal can exist before the module is imported, so it is not imported here)
        out.append(_go_float(float(obj)))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        # Go encodes []byte as a standard base64 string.
        out.append('"' + base64.b64encode(bytes(obj)).decode("ascii") + '"')
    elif isinstance(obj, Mapping):
        items = list(obj.items())
        for key, _ in items:
            if not isinstance(key, str):
                raise TypeError(f"json: unsupported map key type {type(key).__name__}")
        if sort_keys:
            # Go sorts map keys by their (UTF-8) bytes.
            items.sort(key=lambda kv: kv[0].encode("utf-8", "surrogatepass"))
        out.append("{")
        for i, (key, value) in enumerate(items):
            if i:
                out.append(",")
            out.append(_go_string(key))
            out.append(":")
            _encode(value, out, sort_keys)
        out.append("}")
    elif isinstance(obj, Sequence):
        out.append("[")
        for i, value in enumerate(obj):
            if i:
                out.append(",")
            _encode(value, out, sort_keys)
        out.append("]")
    else:
        raise TypeError(f"json: unsupported type: {type(obj).__name__}")


def go_json_dumps(obj: Any, *, sort_keys: bool = False) -> str:
    """Return ``obj`` as compact JSON, byte-for-byte what Go 1.19's ``json.Marshal`` would produce.

    Supports None, bool, int, float, str, bytes (base64, like Go ``[]byte``), mappings with str keys
    and sequences. Dict order is kept (Go structs keep declaration order); pass ``sort_keys=True`` to
    mimic a Go ``map`` (keys sorted bytewise). Strings are escaped like Go with HTML escaping:
    ``<`` ``>`` ``&`` U+2028 U+2029 and control characters other than ``\\n\\r\\t`` become ``\\uXXXX``;
    other non-ASCII is emitted as raw UTF-8. NaN/Inf raise ValueError, other types TypeError.
    """
    if not sort_keys:
        fast = _fast_dumps(obj)
        if fast is not None:
            return fast
    out: list[str] = []
    _encode(obj, out, sort_keys)
    return "".join(out)


# What the C encoder writes differently from Go: HTML-escaped characters, the \b and \f short
# forms and lone surrogates (found by a scan of the output), and floats (Go formats them
# differently; found by walking the containers, which also rejects non-string keys).
_SUSPECT_CHARS = ("<", ">", "&", "\u2028", "\u2029", "\\b", "\\f")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_floats(obj: Any) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and (type(v) in (str, int, bool) or v is None or _no_floats(v))
                   for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(type(v) in (str, int, bool) or v is None or _no_floats(v) for v in obj)
    return False


def _fast_dumps(obj: Any) -> str | None:
    """The C encoder's output when it is provably what Go would write, else None."""
    if not isinstance(obj, list) or not _no_floats(obj):
        return None
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if any(c in text for c in _SUSPECT_CHARS) or _SURROGATE.search(text):
        return None
    return text

