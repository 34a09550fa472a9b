"""changes, diffsize, diff, applydiff."""

from __future__ import annotations

from typing import Any

from .common import create_output, fail, open_input
from .flags import go_quote
from .output import go_json, out, out_bytes


def _pair(ctx: Any) -> tuple[str, str | None]:
    to = ctx.args[0]
    frm = ctx.args[1] if len(ctx.args) >= 2 else None
    return to, frm or None


def changes(ctx: Any) -> int:
    to, frm = _pair(ctx)
    try:
        found = ctx.store.changes(frm, to)
    except Exception as exc:
        return fail(exc)
    if ctx.json:
        out(go_json([c.to_json() for c in found] if found else None))
    else:
        labels = {0: "Modify", 1: "Add", 2: "Delete"}
        out("".join(f'{labels.get(int(c.kind), "?")} "{go_quote(c.path)}"\n' for c in found))
    return 0


def diffsize(ctx: Any) -> int:
    to, frm = _pair(ctx)
    try:
        size = ctx.store.diff_size(frm, to)
    except Exception as exc:
        return fail(exc)
    out(f"{size}\n")
    return 0


def diff(ctx: Any) -> int:
    from lamina import layercontent

    to, frm = _pair(ctx)
    f = ctx.flags
    output = None
    if f["file"]:
        try:
            output = create_output(f["file"])
        except OSError as exc:
            return fail(exc, "open")
    try:
        compression = None
        if f["uncompressed"] or f["gzip"] or f["bzip2"] or f["xz"]:
            compression = layercontent.UNCOMPRESSED
            if f["gzip"]:
                compression = layercontent.GZIP
            if f["bzip2"]:
                compression = layercontent.BZIP2
            if f["xz"]:
                compression = layercontent.XZ
        if compression in (layercontent.BZIP2, layercontent.XZ):
            # Go's archive.CompressStream cannot write these.
            ext = "tar.bz2" if compression == layercontent.BZIP2 else "tar.xz"
            from .output import err

            err(f"unsupported compression format {ext}\n")
            return 1
        try:
            stream = ctx.store.diff(frm, to, compression)
        except Exception as exc:
            return fail(exc)
        from .progress import progress_for

        progress = progress_for("diff")
        try:
            with stream:
                while True:
                    chunk = stream.read(1 << 20)
                    if not chunk:
                        break
                    if output is not None:
                        output.write(chunk)
                    else:
                        out_bytes(chunk)
                    if progress is not None:
                        progress.advance(len(chunk))
            if progress is not None:
                progress.finish()
        except OSError as exc:
            return fail(exc, "write")
    finally:
        if output is not None:
            output.close()
    return 0


def applydiff(ctx: Any) -> int:
    path = ctx.flags["file"]
    try:
        stream = open_input(path)
    except OSError as exc:
        return fail(exc, "open")
    from .progress import reading_with_progress

    counted = reading_with_progress(stream, "applydiff")
    try:
        ctx.store.apply_diff(ctx.args[0], counted)
    except Exception as exc:
        return fail(exc)
    finally:
        if counted is not stream:
            counted.close()
        if path:
            stream.close()
    return 0
