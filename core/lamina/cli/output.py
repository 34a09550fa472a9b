"""Writing like the Go tool: raw UTF-8 to the standard streams, Go's JSON encoding, Go's error text.

Everything is written straight to the byte buffers and flushed at once, so stdout and stderr
interleave on a terminal the way Go's unbuffered writes do. Names that are not valid UTF-8
(surrogate-escaped by Python) are written back as the original bytes.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["err", "go_error", "go_json", "out", "out_bytes"]


def _write(stream: Any, data: bytes) -> None:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        stream.flush()
        buffer.write(data)
        buffer.flush()
    else:  # a text-only stream (tests' StringIO)
        stream.write(data.decode("utf-8", "surrogateescape"))
        stream.flush()


def out(text: str) -> None:
    """Write *text* to stdout (Go's fmt.Printf)."""
    _write(sys.stdout, text.encode("utf-8", "surrogateescape"))


def out_bytes(data: bytes) -> None:
    _write(sys.stdout, data)


def err(text: str) -> None:
    """Write *text* to stderr (Go's fmt.Fprintf(os.Stderr, ...))."""
    _write(sys.stderr, text.encode("utf-8", "surrogateescape"))


# ---------------------------------------------------------------- JSON


def _plain(value: Any) -> Any:
    """*value* with records (anything with ``to_json``) replaced by their JSON objects."""
    if isinstance(value, (str, int, float)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    to_json = getattr(value, "json_object", None) or getattr(value, "to_json", None)
    if to_json is None:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")
    return to_json()


def go_json(value: Any) -> str:
    """``json.NewEncoder(w).Encode(value)``: compact, HTML-escaped, one trailing newline.

    Dicts are written in their own order: pass Go maps with sorted keys (:func:`go_map`).
    """
    if isinstance(value, list) and value and all(hasattr(v, "json_object") for v in value):
        # A list of records is what the store files hold: the same encoder, and each record's
        # cached JSON object (what was read is what is shown).
        from lamina.metastore import records_json

        return records_json(value).decode("utf-8", "surrogateescape") + "\n"
    from lamina.atomicio import go_json_dumps

    return go_json_dumps(_plain(value)) + "\n"


def go_map(value: dict[str, Any]) -> dict[str, Any]:
    """A Go map's JSON order: keys sorted (byte order)."""
    return {k: value[k] for k in sorted(value, key=lambda k: k.encode("utf-8", "surrogateescape"))}


# ---------------------------------------------------------------- errors


def go_error(exc: BaseException, op: str = "") -> str:
    """An error's text as Go's ``%v``/``%+v`` would show the equivalent Go error.

    OSError becomes ``<op> <path>: <errno text>`` (Go's *PathError), lamina errors keep their
    message (they already carry Go's text).
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        import os

        text = os.strerror(exc.errno)
        text = text[:1].lower() + text[1:]
        if exc.filename is not None:
            return f"{op + ' ' if op else ''}{exc.filename}: {text}"
        return text
    text = str(exc)
    if not text:
        text = type(exc).__name__
    return text
