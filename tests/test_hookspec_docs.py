"""Meta-tests that keep the driver contract's documentation and tests honest."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from lamina import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if name.startswith(("driver_", "store_"))}


def test_every_hook_is_documented_with_its_signature() -> None:
    doc = (ROOT / "docs" / "driver-contract.md").read_text()
    for name, fn in HOOKS.items():
        signature = f"{name}{inspect.signature(fn)}".replace("'", "")
        assert f"## `{name}`" in doc, f"{name} has no entry in docs/driver-contract.md"
        assert signature in doc, f"docs/driver-contract.md shows a stale signature for {name}"
        assert inspect.getdoc(fn), f"{name} has no docstring"


def test_every_hook_is_exercised_by_some_test() -> None:
    """Each hook is called through its DriverProxy method or fired as an event somewhere in the tests."""
    proxy_methods = {f"driver_{m}" for m in ("create", "remove", "get", "put", "exists", "status", "metadata",
                                             "cleanup", "additional_image_stores", "read_write_disk_usage",
                                             "diff", "changes", "apply_diff", "diff_size", "diff_getter",
                                             "update_layer_id_map", "supports_shifting", "create_from_template")}
    assert set(n for n in HOOKS if n.startswith("driver_")) == proxy_methods, "DriverProxy and the specs diverge"
    sources = "\n".join(p.read_text() for p in list((ROOT / "tests").rglob("*.py")) +
                        list((ROOT / "core" / "lamina" / "testing").rglob("*.py")) +
                        list((ROOT / "plugins").rglob("tests/*.py")))
    for name in HOOKS:
        if name.startswith("driver_"):
            method = name[len("driver_"):]
            assert re.search(rf"\.{method}\(", sources), f"no test calls {name} (via .{method}(...))"
        else:
            assert name in (ROOT / "core" / "lamina" / "store.py").read_text(), f"{name} is never fired"
