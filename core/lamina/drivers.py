"""Finding graph drivers by name (entry-point group ``lamina.drivers``).

This is the only module that talks to stevedore. Listing installed drivers reads package
metadata only; loading imports exactly the chosen driver. Embedders and tests can register a
driver factory in-process with :func:`register_driver`, bypassing entry points.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from .errors import DriverConflict, DriverLoadError, DriverNotFound, DriverNotSupported, PluginError
from .types import DriverConfig

DRIVER_GROUP = "lamina.drivers"
PLUGIN_GROUP = "lamina.plugins"

#: Order tried when neither configuration nor prior state names a driver (containers/storage's order,
#: restricted to the drivers lamina has).
DEFAULT_PRIORITY: tuple[str, ...] = ("overlay", "btrfs", "vfs")

DriverFactory = Callable[[DriverConfig], Any]

_registered: dict[str, DriverFactory] = {}


@dataclass(frozen=True)
class InstalledDriver:
    """A driver known by name, from package metadata or from :func:`register_driver`."""

    name: str
    distribution: str
    version: str
    target: str


def register_driver(name: str, factory: DriverFactory) -> None:
    """Make *factory* (a driver class or callable taking a DriverConfig) available as *name* in this process."""
    _registered[name] = factory


def unregister_driver(name: str) -> None:
    """Forget a driver registered with :func:`register_driver`; unknown names are ignored."""
    _registered.pop(name, None)


def _entry_points(group: str) -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=group))


def installed_drivers() -> list[InstalledDriver]:
    """Every driver name available, without importing any driver. Sorted by name.

    A name claimed by two distributions appears twice; :func:`load_driver_class` refuses it.
    """
    found: list[InstalledDriver] = []
    for ep in _entry_points(DRIVER_GROUP):
        dist = ep.dist
        found.append(
            InstalledDriver(
                name=ep.name,
                distribution=dist.name if dist is not None else "?",
                version=dist.version if dist is not None else "?",
                target=ep.value,
            )
        )
    for name, factory in _registered.items():
        module = getattr(factory, "__module__", "?")
        found.append(InstalledDriver(name, "(registered in-process)", "", f"{module}:{getattr(factory, '__qualname__', '?')}"))
    return sorted(found, key=lambda d: (d.name, d.distribution))


def installed_driver_names() -> list[str]:
    """Sorted, de-duplicated names of :func:`installed_drivers`."""
    return sorted({d.name for d in installed_drivers()})


def _raise_load_failure(_manager: Any, entrypoint: Any, exc: BaseException) -> None:
    if isinstance(exc, DriverNotSupported):
        raise exc
    raise DriverLoadError(entrypoint.name, exc) from exc


def _no_missing_warning(names: Any) -> None:
    """stevedore's default logs a warning for a missing driver; lamina raises DriverNotFound instead."""


def load_driver_class(name: str) -> DriverFactory:
    """Import driver *name* and return its factory, without constructing it.

    Raises DriverNotFound (listing the installed names), DriverConflict when two
    distributions claim *name*, or DriverLoadError when its module fails to import.
    """
    if name in _registered:
        return _registered[name]
    from stevedore import driver as sd_driver
    from stevedore import exception as sd_exc

    # stevedore scans the entry points once; the metadata scan below runs only to explain a failure.
    try:
        manager = sd_driver.DriverManager(
            DRIVER_GROUP,
            name,
            invoke_on_load=False,
            on_load_failure_callback=_raise_load_failure,
            on_missing_entrypoints_callback=_no_missing_warning,
        )
    except sd_exc.NoMatches:
        raise DriverNotFound(name, installed_driver_names()) from None
    except sd_exc.MultipleMatches:
        claims = [d for d in installed_drivers() if d.name == name]
        raise DriverConflict(name, [f"{d.distribution} {d.version} ({d.target})" for d in claims]) from None
    factory: DriverFactory = manager.driver
    return factory


def check_host(name: str, graph_root: str) -> None:
    """Raise DriverNotSupported if driver *name* cannot work for *graph_root* on this host.

    Uses the driver class's optional ``check_host(graph_root)`` classmethod; a driver without
    one is assumed supported until it is constructed.
    """
    factory = load_driver_class(name)
    probe = getattr(factory, "check_host", None)
    if probe is not None:
        probe(graph_root)


def support_reason(name: str, graph_root: str) -> str | None:
    """None when driver *name* is usable for *graph_root*, else why not (for ``lamina drivers``)."""
    try:
        check_host(name, graph_root)
    except DriverNotSupported as exc:
        return exc.why
    except (DriverLoadError, DriverConflict, DriverNotFound) as exc:
        return str(exc)
    return None


def new_driver(config: DriverConfig) -> Any:
    """Construct driver ``config.name``; raises the typed errors of :func:`load_driver_class`
    and DriverNotSupported from the driver itself."""
    factory = load_driver_class(config.name)
    probe = getattr(factory, "check_host", None)
    if probe is not None:
        probe(os.path.dirname(config.home))
    try:
        return factory(config)
    except (DriverNotSupported, DriverLoadError):
        raise
    except TypeError as exc:
        raise DriverLoadError(config.name, exc) from exc


def prior_drivers(graph_root: str) -> list[str]:
    """Installed driver names whose home directory (``<graph_root>/<name>``) already exists."""
    return [n for n in installed_driver_names() if os.path.isdir(os.path.join(graph_root, n))]


def choose_driver(graph_root: str, priority: tuple[str, ...] | list[str] = ()) -> str:
    """Pick a driver when none is named, the way containers/storage does.

    1. A driver whose state already exists under *graph_root* (two of them is an error).
    2. The first supported driver in *priority* (default :data:`DEFAULT_PRIORITY`).
    3. Any other supported installed driver.
    Unlike containers/storage, existing vfs state is reused too, so a vfs store reopens as vfs.
    """
    prior = prior_drivers(graph_root)
    if len(prior) > 1:
        raise DriverConflict(
            "(auto)",
            [f"{graph_root} contains several valid graph drivers: {', '.join(prior)}; "
             "clean up or choose a driver explicitly (-s DRIVER)"],
        )
    if prior:
        return prior[0]
    installed = installed_driver_names()
    order = list(priority or DEFAULT_PRIORITY) + [n for n in installed if n not in (priority or DEFAULT_PRIORITY)]
    reasons: list[str] = []
    for name in order:
        if name not in installed:
            continue
        why = support_reason(name, graph_root)
        if why is None:
            return name
        reasons.append(f"{name}: {why}")
    raise DriverNotSupported("(auto)", "no supported graph driver is installed" + (f" ({'; '.join(reasons)})" if reasons else ""))


def load_plugin(name: str) -> Any:
    """Import extra plugin *name* from group ``lamina.plugins`` and return the plugin object.

    A class is instantiated without arguments; a module or instance is used as is.
    """
    eps = [ep for ep in _entry_points(PLUGIN_GROUP) if ep.name == name]
    if not eps:
        have = sorted(ep.name for ep in _entry_points(PLUGIN_GROUP))
        raise PluginError(f"plugin {name!r} is not installed (installed plugins: {', '.join(have) or 'none'})")
    if len(eps) > 1:
        raise PluginError(f"plugin {name!r} is provided by more than one distribution")
    try:
        obj = eps[0].load()
    except Exception as exc:  # an import failure of third-party code: report it, typed
        raise PluginError(f"plugin {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
    return obj() if isinstance(obj, type) else obj
