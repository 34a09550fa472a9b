"""A lamina worker for the fault campaigns: runs a plan of store operations and keeps a ledger.

Usage: python worker.py PLAN.json

The plan names the store and a list of operations with every ID, name and data seed chosen in
advance. For each operation the worker prints (and flushes) ``START i`` before and
``DONE i <result json>`` after it succeeded, so whoever reads stdout knows exactly which
operations completed before the process died. ``CALLS i n`` reports how many instrumented calls
operation *i* made.

With ``"kill": {"op": k, "n": N, "when": "before"|"after"}`` the worker SIGKILLs itself at the
N-th instrumented call (os.rename/replace/write/fsync/fdatasync/unlink/open/mkdir/rmdir/symlink/
chmod/chown, shutil.rmtree and the driver's create/remove/apply_diff) made during operation k,
just before or just after that call runs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import gen_bytes, gen_tar  # noqa: E402

_OS_CALLS = ("rename", "replace", "write", "fsync", "fdatasync", "unlink", "open", "mkdir", "rmdir",
             "symlink", "chmod", "chown")
_DRIVER_CALLS = ("create", "remove", "apply_diff")
_KILL = os.kill
_GETPID = os.getpid


class Tripwire:
    """Counts instrumented calls while armed; SIGKILLs the process at call number *n*."""

    def __init__(self) -> None:
        self.count = 0
        self.armed = False
        self.kill_at = 0
        self.when = "before"
        self._saved: list[tuple[Any, str, Any]] = []

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.armed:
                return fn(*args, **kwargs)
            self.count += 1
            hit = self.kill_at and self.count == self.kill_at
            if hit and self.when == "before":
                _KILL(_GETPID(), signal.SIGKILL)
            result = fn(*args, **kwargs)
            if hit:
                _KILL(_GETPID(), signal.SIGKILL)
            return result

        return wrapper

    def install(self, driver: Any) -> None:
        for name in _OS_CALLS:
            self._patch(os, name)
        self._patch(shutil, "rmtree")
        for name in _DRIVER_CALLS:
            self._patch(driver, name)

    def _patch(self, obj: Any, name: str) -> None:
        original = getattr(obj, name)
        self._saved.append((obj, name, original))
        setattr(obj, name, self._wrap(original))


def _diff_stream(spec: dict[str, Any]) -> io.BytesIO:
    raw, _ = gen_tar(spec["seed"], spec["files"], spec["size"], spec.get("gzip", False))
    return io.BytesIO(raw)


def run_op(store: Any, op: dict[str, Any]) -> dict[str, Any]:
    kind = op["op"]
    if kind == "create-layer":
        diff = _diff_stream(op["diff"]) if op.get("diff") else None
        store.create_layer(id=op["id"], parent=op.get("parent") or None, names=op["names"], diff=diff)
    elif kind == "applydiff":
        store.apply_diff(op["layer"], _diff_stream(op["diff"]))
    elif kind == "create-image":
        store.create_image(id=op["id"], top_layer=op["top"], names=op["names"])
    elif kind == "set-names":
        store.set_names(op["target"], op["names"])
    elif kind == "set-image-data":
        store.set_big_data("image", op["image"], op["key"], gen_bytes(op["data"]["seed"], op["data"]["size"]))
    elif kind == "create-container":
        ctr = store.create_container(id=op["id"], image=op["image"], names=op["names"])
        return {"layer": ctr.layer}
    elif kind == "delete-image":
        return {"layers": store.delete_image(op["image"])}
    elif kind == "delete-container":
        store.delete_container(op["container"])
    else:
        raise ValueError(f"unknown op {kind}")
    return {}


def main(plan_path: str) -> int:
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)
    from lamina.store import Store

    if os.environ.get("LAMINA_CAMPAIGN_NO_INTENTS") == "1":
        # sensitivity check of the campaign: without intents it must find damage and leaks
        import contextlib

        import lamina.check

        lamina.check.intent = lambda *a, **k: contextlib.nullcontext()  # type: ignore[assignment]
    store = Store(plan["graph"], plan["run"], driver_name=plan["driver"])
    print("READY", flush=True)
    wire = Tripwire()
    wire.install(store.driver)
    kill = plan.get("kill") or {}
    for i, op in enumerate(plan["ops"]):
        print(f"START {i}", flush=True)
        wire.count = 0
        wire.kill_at = kill.get("n", 0) if kill.get("op") == i else 0
        wire.when = kill.get("when", "before")
        wire.armed = True
        try:
            result = run_op(store, op)
        except Exception as exc:  # reported on the ledger: the campaign counts it as a failure
            wire.armed = False
            print(f"FAIL {i} {type(exc).__name__}: {exc}", flush=True)
            return 3
        wire.armed = False
        print(f"DONE {i} {json.dumps(result)}", flush=True)
        print(f"CALLS {i} {wire.count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
