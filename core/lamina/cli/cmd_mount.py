"""mount, unmount (umount), mounted.

``mount -o/--opt`` is parsed and ignored, as in Go. ``unmount -j`` and ``mounted -j`` print
their text lines *and* the JSON, as Go does.
"""

from __future__ import annotations

from typing import Any

from .output import err, go_error, go_json, out


def mount(ctx: Any) -> int:
    f = ctx.flags
    results = []
    for arg in ctx.args:
        try:
            if f["ro"]:
                path = ctx.store.mount_image(arg, ("noexec", "nosuid"), f["label"])
            else:
                path = ctx.store.mount(arg, f["label"])
            results.append({"id": arg, "mountpoint": path, "error": ""})
        except Exception as exc:
            results.append({"id": arg, "mountpoint": "", "error": go_error(exc)})
    return _report(ctx, results, "while mounting", show="mountpoint")


def _report(ctx: Any, results: list[dict[str, str]], doing: str, after: str = "",
            show: str = "") -> int:
    """Go's ending of mount/unmount/mounted: the JSON list with -j, else each error on stderr
    (``<error> <doing> <id><after>``), each followed by the result's *show* field on stdout
    when one is named; returns the exit code."""
    if ctx.json:
        out(go_json(results))
    else:
        for r in results:
            if r["error"]:
                err(f"{r['error']} {doing} {r['id']}{after}\n")
            if show:
                out(f"{r[show]}\n")
    return 1 if any(r["error"] for r in results) else 0


def unmount(ctx: Any) -> int:
    store = ctx.store
    results = []
    for arg in ctx.args:
        text = ""
        try:
            # Go tries Unmount (a layer or container) first and UnmountImage after; only the
            # first one reports "unmounted". lamina's Store.unmount does both.
            is_layer, _is_image, is_container = store.exists(arg)
            still = store.unmount(arg, bool(ctx.flags["force"]))
            if (is_layer or is_container) and not still:
                out(f"{arg} mountpoint unmounted\n")
        except Exception as exc:
            text = go_error(exc)
        results.append({"id": arg, "error": text})
    return _report(ctx, results, "while unmounting")


def mounted(ctx: Any) -> int:
    results = []
    for arg in ctx.args:
        text = ""
        try:
            if ctx.store.mounted(arg) > 0:
                out(f"{arg} mounted\n")
        except Exception as exc:
            text = go_error(exc)
        results.append({"id": arg, "error": text})
    return _report(ctx, results, "checking if", " is mounted")
