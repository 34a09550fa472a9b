"""1.62's ``check [-q] [-r [-f]] [-m age] [-j]`` and ``gc``, on :mod:`lamina.check`.

Differences from containers-storage 1.62, on purpose (see docs/reliability.md):

* ``-j`` prints errors as their text (Go's encoder prints every error as ``{}``), and adds
  ``Orphans``/``Mounts`` (lamina's extra findings) and, with ``-r``, ``Actions``.
* ``-r`` prints one line per repair action on stdout (Go logs them at debug level only).
* ``-q`` skips reading layer contents altogether (Go's still rebuilds each diff and only skips
  comparing the mounted tree); ``-m`` also applies to orphans (files no record owns).
* Go's ``check`` ends with ``Shutdown(true)``, unmounting every layer; lamina leaves mounts alone.
* ``gc`` prints nothing on success, like Go; with ``-j`` it prints the list of what it removed.
"""

from __future__ import annotations

from typing import Any

from .common import fail
from .output import err, go_json, out

__all__ = ["check", "gc"]


def _action_json(action: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"action": action.action, "target": action.target, "ok": action.ok}
    if action.error:
        obj["error"] = action.error
    if action.removed_layers:
        obj["removed-layers"] = list(action.removed_layers)
    return obj


def check(ctx: Any) -> int:
    from lamina.check import CheckOptions, parse_duration

    f = ctx.flags
    repair = bool(f.get("repair")) or bool(f.get("force"))
    force = bool(f.get("force"))
    max_age: float | None = None
    text = f.get("max", "")
    if text:
        try:
            max_age = parse_duration(text)
        except ValueError as exc:
            err(f"{exc}\n")
            return 1
    options = CheckOptions.quick(max_age) if f.get("quick") else CheckOptions(max_age=max_age)
    try:
        report = ctx.store.check(options)
    except Exception as exc:
        return fail(exc)
    actions: list[Any] = []
    if repair and not report.clean:
        try:
            actions = ctx.store.repair(report, remove_containers=force)
        except Exception as exc:
            return fail(exc)
    if ctx.json:
        doc = report.to_json()
        if repair:
            doc["Actions"] = [_action_json(a) for a in actions]
        out(go_json(doc))
    else:
        out(report.text())
        out("".join(f"{a.message}\n" for a in actions if a.ok))
    failed = [a for a in actions if not a.ok]
    if failed:
        err("".join(f"{a.message}\n" for a in failed))
        return 1
    if not repair:
        if not report.clean:
            err(report.summary() + "\n")
            return 1
        return 0
    if report.ro_layers or report.ro_images or (not force and report.containers):
        if force:
            err(f"{len(report.ro_layers)} read-only layer errors, {len(report.ro_images)} read-only image errors\n")
        else:
            err(f"{len(report.ro_layers)} read-only layer errors, {len(report.ro_images)} read-only image errors, "
                f"{len(report.containers)} container errors\n")
        return 1
    return 0


def gc(ctx: Any) -> int:
    try:
        actions = ctx.store.garbage_collect()
    except Exception as exc:
        return fail(exc)
    if ctx.json:
        out(go_json([_action_json(a) for a in actions]))
    failed = [a for a in actions if not a.ok]
    if failed:
        err("".join(f"{a.message}\n" for a in failed))
        return 1
    return 0
