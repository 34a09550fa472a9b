"""Big data of layers, images and containers: list-, get-, get-…-size, get-…-digest, set-…-data.

The kind comes from the command's name (``list-image-data`` works on images).
"""

from __future__ import annotations

from typing import Any

from .common import create_output, fail, read_input
from .flags import go_quote
from .output import err, go_error, go_json, out, out_bytes


def _is_missing(exc: BaseException) -> bool:
    from lamina.errors import BigDataUnknown

    return isinstance(exc, (BigDataUnknown, FileNotFoundError))


def _kind(ctx: Any) -> str:
    name = ctx.command.names[0]
    for kind in ("container", "image", "layer"):
        if f"-{kind}-" in f"-{name}-":
            return kind
    raise AssertionError(name)


def _record(ctx: Any) -> Any:
    kind = _kind(ctx)
    if kind == "image":
        from .common import lookup_image

        return kind, lookup_image(ctx.store, ctx.args[0])
    return kind, getattr(ctx.store, kind)(ctx.args[0])


def _missing_item(ctx: Any, kind: str, record: Any, key: str) -> str:
    """Go's text for a big-data item that does not exist (Store.*BigData)."""
    if kind == "image":
        return (f'locating item named "{go_quote(key)}" for image with ID "{record.id}" '
                "(consider removing the image to resolve the issue): file does not exist")
    if kind == "layer":
        return f'locating item named "{go_quote(key)}" for layer with ID "{record.id}": file does not exist'
    try:  # containers: the bare os.ReadFile error
        path = ctx.store.container_store.big_data_path(record.id, key)
    except Exception:
        path = key
    return f"open {path}: no such file or directory"


def list_data(ctx: Any) -> int:
    try:
        kind, record = _record(ctx)
        names = ctx.store.list_big_data(kind, record.id)
    except Exception as exc:
        return fail(exc)
    if ctx.json:
        out(go_json(names))
    else:
        out("".join(f"{n}\n" for n in names))
    return 0


_INVALID = "not a valid name for a big data item"


def get_data(ctx: Any) -> int:
    try:
        kind, record = _record(ctx)
    except Exception as exc:
        return fail(exc)
    if kind == "container" and ctx.args[1] == "":
        err(f"can't retrieve container big data value for empty name: {_INVALID}\n")
        return 1
    path = ctx.flags.get("file", "")
    output = None
    if path:
        try:
            output = create_output(path)
        except OSError as exc:
            err(go_error(exc, "open") + "\n")
            return 1
    try:
        try:
            data = ctx.store.big_data(kind, record.id, ctx.args[1])
        except Exception as exc:
            if _is_missing(exc):
                err(_missing_item(ctx, kind, record, ctx.args[1]) + "\n")
                return 1
            return fail(exc)
        if output is not None:
            output.write(data)
        else:
            out_bytes(data)
    finally:
        if output is not None:
            output.close()
    return 0


def get_data_size(ctx: Any) -> int:
    try:
        kind, record = _record(ctx)
    except Exception as exc:
        return fail(exc)
    try:
        size = ctx.store.big_data_size(kind, record.id, ctx.args[1])
    except Exception as exc:
        if _is_missing(exc):
            err("size is not known\n")  # Go's ErrSizeUnknown
            return 1
        return fail(exc)
    out(f"{size}\n")
    return 0


def get_data_digest(ctx: Any) -> int:
    from .cmd_images import validate_digest

    try:
        kind, record = _record(ctx)
    except Exception as exc:
        return fail(exc)
    try:
        digest = ctx.store.big_data_digest(kind, record.id, ctx.args[1])
    except Exception as exc:
        if _is_missing(exc):
            err("could not compute digest of item\n")  # Go's ErrDigestUnknown
            return 1
        return fail(exc)
    problem = validate_digest(digest)
    if problem is not None:
        err(f"{problem}\n")
        return 1
    out(f"{digest}\n")
    return 0


def set_data(ctx: Any) -> int:
    try:
        kind, record = _record(ctx)
    except Exception as exc:
        # Go's set-image-data prints this one with %v; the text is the same.
        return fail(exc)
    try:
        data = read_input(ctx.flags.get("file", ""))
    except OSError as exc:
        err(go_error(exc, "open") + "\n")
        return 1
    if ctx.args[1] == "":
        err(f"can't set empty name for {kind} big data item: {_INVALID}\n")
        return 1
    try:
        ctx.store.set_big_data(kind, record.id, ctx.args[1], data)
    except Exception as exc:
        return fail(exc)
    return 0
