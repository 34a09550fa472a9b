"""exists, metadata, set-metadata, *-names, shutdown, status, version, wipe; 1.62's config;
lamina's drivers and --version."""

from __future__ import annotations

from typing import Any

from .common import fail
from .flags import go_list, tabwrite
from .output import err, go_error, go_json, go_map, out

# ---------------------------------------------------------------- exists, metadata


def exists(ctx: Any) -> int:
    store = ctx.store
    f = ctx.flags
    found: dict[str, bool] = {}
    any_missing = False
    for what in ctx.args:
        try:
            is_layer, is_image, is_container = store.exists(what)
        except Exception:
            is_layer = is_image = is_container = False
        present = is_layer or is_image or is_container
        found[what] = present
        if f["container"] and not is_container:
            present = False
        if f["image"] and not is_image:
            present = False
        if f["layer"] and not is_layer:
            present = False
        if not present:
            any_missing = True
    if ctx.json:
        out(go_json(go_map(found)))
    elif not f["quiet"]:
        # Go ranges over a map here: its order is random. lamina keeps the arguments' order.
        out("".join(f"{what}: {'true' if value else 'false'}\n" for what, value in found.items()))
    return 1 if any_missing else 0


def metadata(ctx: Any) -> int:
    values: dict[str, str] = {}
    missing = False
    for what in ctx.args:
        try:
            text = ctx.store.metadata(what)
        except Exception:
            missing = True
            continue
        values[what] = text[:-1] if text.endswith("\n") else text
    if ctx.json:
        out(go_json(go_map(values)))
    else:
        quiet = ctx.flags["quiet"]
        out("".join(f"{values.get(w, '')}\n" if quiet else f"{w}: {values.get(w, '')}\n" for w in ctx.args))
    return 1 if missing else 0


def set_metadata(ctx: Any) -> int:
    f = ctx.flags
    value = f["metadata"]
    if not f["metadata_file"] and not value:
        err("no new metadata provided\n")
        return 1
    if f["metadata_file"]:
        try:
            with open(f["metadata_file"], "rb") as fh:
                value = fh.read().decode("utf-8", "surrogateescape")
        except OSError as exc:
            err(go_error(exc, "open") + "\n")
            return 1
    from lamina.errors import NotKnown

    try:
        ctx.store.set_metadata(ctx.args[0], value)
    except NotKnown:
        err("identifier is not a layer, image, or container\n")  # Go's ErrNotAnID
        return 1
    except Exception as exc:
        return fail(exc)
    return 0


# ---------------------------------------------------------------- names


def lookup_id(store: Any, key: str) -> str:
    """Go's Store.Lookup: the ID of the layer, else image, else container named *key*."""
    from lamina.errors import LayerUnknown, NotKnown

    for kind in ("layer", "image", "container"):
        try:
            return getattr(store, kind)(key).id
        except NotKnown:
            continue
    raise LayerUnknown(key)


def get_names(ctx: Any) -> int:
    try:
        names = ctx.store.names(lookup_id(ctx.store, ctx.args[0]))
    except Exception as exc:
        return fail(exc)
    if ctx.json:
        out(go_json(list(names)))
    else:
        out("".join(f"{n}\n" for n in names))
    return 0


def _names_after(ctx: Any, change: Any) -> int:
    store = ctx.store
    try:
        key = lookup_id(store, ctx.args[0])
        change(key)
        names = store.names(key)
    except Exception as exc:
        return fail(exc)
    if ctx.json:
        out(go_json(list(names) or None))  # Go's record has a nil slice once every name is gone
    return 0


def add_names(ctx: Any) -> int:
    store = ctx.store
    new = list(ctx.flags["name"])

    def change(key: str) -> None:
        # 1.43's add-names is Names() + the new names, then SetNames().
        store.set_names(key, list(store.names(key)) + new)

    return _names_after(ctx, change)


def set_names(ctx: Any) -> int:
    names = list(ctx.flags["name"])
    return _names_after(ctx, lambda key: ctx.store.set_names(key, names))


def remove_names(ctx: Any) -> int:
    names = list(ctx.flags["name"])
    return _names_after(ctx, lambda key: ctx.store.remove_names(key, names))


# ---------------------------------------------------------------- store-wide


_MOUNTED = "a layer is mounted: layer is in use by a container"


def shutdown(ctx: Any) -> int:
    from lamina.errors import LayerMounted

    problem: str | None = None
    try:
        unmounted = ctx.store.shutdown(bool(ctx.flags["force"]))
        if unmounted:
            # Go unmounts them but still reports the error (and skips the driver cleanup).
            problem = _MOUNTED
    except LayerMounted:
        problem = _MOUNTED
    except Exception as exc:
        problem = go_error(exc)
    if ctx.json:
        out('""\n' if problem is None else "{}\n")  # Go encodes the error value: no exported fields
    elif problem is not None:
        err(f"{ctx.name}: {problem}\n")
    return 0 if problem is None else 1


def status(ctx: Any) -> int:
    store = ctx.store
    try:
        pairs = list(store.status())
    except Exception as exc:
        err(f"status: {go_error(exc)}\n")
        return 1
    basics = [("Root", store.graph_root), ("Run Root", store.run_root), ("Driver Name", store.driver_name),
              ("Driver Options", go_list(list(store.driver_options)))]
    pairs = basics + pairs
    if ctx.json:
        out(go_json([[k, v] for k, v in pairs]))
    else:
        err("".join(f"{k}: {v}\n" for k, v in pairs))
    return 0


def version(ctx: Any) -> int:
    # containers/storage's Store.Version() returns no pairs at all.
    if ctx.json:
        out("[]\n")
    return 0


def wipe(ctx: Any) -> int:
    problem = None
    try:
        ctx.store.wipe()
    except Exception as exc:
        problem = go_error(exc)
    if ctx.json:
        out('""\n' if problem is None else "{}\n")
    elif problem is not None:
        err(f"{ctx.name}: {problem}\n")
    return 0 if problem is None else 1


# ---------------------------------------------------------------- 1.62 and lamina additions


def config(ctx: Any) -> int:
    from lamina.config import load_store_options, to_config_json
    from lamina.errors import ConfigError

    try:
        options = load_store_options(path=ctx.args[0] if ctx.args else None)
    except ConfigError as exc:
        err(f"{'reload' if ctx.args else 'default'}: {exc}\n")
        return 1
    out(go_json(to_config_json(options)))
    return 0


def _driver_entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return sorted(entry_points(group="lamina.drivers"), key=lambda ep: (ep.name, ep.value))


def _fast_graph_root() -> str | None:
    """The configured graph root for the common rootful case, without importing lamina.config
    (None when anything is unusual: rootless, variables in the path, a file that does not parse)."""
    import os

    if os.geteuid() != 0 or os.environ.get("_CONTAINERS_ROOTLESS_UID"):
        return None
    path = os.environ.get("CONTAINERS_STORAGE_CONF") or (
        "/etc/containers/storage.conf" if os.path.exists("/etc/containers/storage.conf")
        else "/usr/share/containers/storage.conf")
    try:
        import tomllib

        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return "/var/lib/containers/storage"
    except Exception:
        return None
    storage = data.get("storage", {})
    value = storage.get("graphroot", "") if isinstance(storage, dict) else None
    if not isinstance(value, str) or "$" in value or (value and not value.startswith("/")):
        return None
    return value or "/var/lib/containers/storage"


def _drivers_graph_root(o: Any) -> str:
    import os

    if o.graph_root:
        return os.path.abspath(o.graph_root)
    fast = _fast_graph_root()
    if fast is not None:
        return fast
    from lamina.config import DEFAULT_GRAPH_ROOT, load_store_options
    from lamina.errors import ConfigError

    try:
        return load_store_options().graph_root or DEFAULT_GRAPH_ROOT
    except ConfigError:
        return DEFAULT_GRAPH_ROOT


def print_version() -> int:
    """``lamina --version``: lamina's version, then one line per driver distribution."""
    import lamina

    lines = [f"lamina {lamina.__version__}\n"]
    by_dist: dict[tuple[str, str], list[str]] = {}
    for ep in _driver_entry_points():
        dist = ep.dist
        key = (dist.name if dist is not None else "?", dist.version if dist is not None else "?")
        by_dist.setdefault(key, []).append(ep.name)
    for (name, version), drivers in sorted(by_dist.items()):
        lines.append(f"{name} {version} (driver{'s' if len(drivers) > 1 else ''}: {', '.join(drivers)})\n")
    if not by_dist:
        lines.append("no graph drivers installed (install lamina-vfs, lamina-overlay or lamina-btrfs)\n")
    out("".join(lines))
    return 0


def _support(ep: Any, graph_root: str) -> str | None:
    """None if the driver can be used for *graph_root*, else why not. Imports only that driver."""
    from lamina.errors import DriverNotSupported

    try:
        factory = ep.load()
    except Exception as exc:  # third-party import failure: report it
        return f"failed to load: {type(exc).__name__}: {exc}"
    probe = getattr(factory, "check_host", None)
    if probe is None:
        return None
    try:
        probe(graph_root)
    except DriverNotSupported as exc:
        return exc.why
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def drivers(ctx: Any) -> int:
    """``lamina drivers``: installed drivers and whether they work here (no store is opened)."""
    from .entrypoints import entry_points

    graph_root = _drivers_graph_root(ctx.options)
    eps = entry_points("lamina.drivers")
    counts: dict[str, int] = {}
    for ep in eps:
        counts[ep.name] = counts.get(ep.name, 0) + 1
    rows = []
    for ep in eps:
        if counts[ep.name] > 1:
            reason: str | None = "provided by more than one distribution; uninstall all but one"
        else:
            reason = _support(ep, graph_root)
        rows.append({
            "name": ep.name,
            "distribution": ep.dist_name,
            "version": ep.dist_version,
            "supported": reason is None,
            "reason": reason or "",
        })
    if ctx.json:
        out(go_json(rows))
        return 0
    if not rows:
        out("no graph drivers installed (install lamina-vfs, lamina-overlay or lamina-btrfs)\n")
        return 0
    lines = ["NAME\tDISTRIBUTION\tVERSION\tSUPPORTED\tREASON"]
    for r in rows:
        lines.append("\t".join([r["name"], r["distribution"], r["version"], "yes" if r["supported"] else "no",
                                r["reason"]]))
    out("".join(line.rstrip(" ") + "\n" for line in tabwrite(lines, minwidth=0, padding=2).splitlines()))
    return 0
