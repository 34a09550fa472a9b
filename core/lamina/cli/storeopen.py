"""Opening the store the way containers-storage's ``storage.GetStore(options)`` does."""

from __future__ import annotations

import os
from typing import Any

from .output import go_error

__all__ = ["open_store"]


def _usable_drivers_hint(graph_root: str) -> str:
    """"; drivers that work here: vfs (choose one with --storage-driver/-s)", when there are some."""
    try:
        from lamina import drivers

        usable = [n for n in drivers.installed_driver_names() if drivers.support_reason(n, graph_root) is None]
    except Exception:
        return ""
    if not usable:
        return ""
    return f"; drivers that work here: {', '.join(usable)} (choose one with --storage-driver/-s or storage.conf)"


def open_store(o: Any) -> tuple[Any, str | None]:
    """(store, None), or (None, the text that follows ``error initializing: ``)."""
    graph, run = o.graph_root, o.run_root
    if graph:
        graph = os.path.abspath(graph)
    if run:
        run = os.path.abspath(run)
    if not graph and not run:
        if o.config_error:
            return None, o.config_error
        return None, "no storage runroot or graphroot specified: missing necessary StoreOptions"
    if not graph or not run:
        # GetStore fills the missing root from the configured defaults.
        from lamina.config import load_store_options
        from lamina.errors import ConfigError

        try:
            defaults = load_store_options()
        except ConfigError as exc:
            return None, str(exc)
        graph = graph or defaults.graph_root
        run = run or defaults.run_root
    from lamina.errors import LaminaError
    from lamina.store import Store

    if o.debug and o.driver:
        from .logs import logrus

        logrus("debug", f'[graphdriver] trying provided driver "{o.driver}"')

    try:
        store = Store(
            graph,
            run,
            driver_name=o.driver,
            driver_options=list(o.driver_opts),
            uid_map=tuple(o.uid_map),
            gid_map=tuple(o.gid_map),
            transient_store=bool(o.transient_store),
            image_store=os.path.abspath(o.image_store) if o.image_store else "",
        )
    except (LaminaError, OSError, ValueError) as exc:
        from lamina.errors import DriverNotSupported

        text = go_error(exc, "mkdir" if isinstance(exc, OSError) else "")
        if isinstance(exc, DriverNotSupported):
            text += _usable_drivers_hint(graph)
        return None, text
    o.graph_root, o.run_root = graph, run
    return store, None
