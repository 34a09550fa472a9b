"""The typed facade over a driver's hooks, and the factory that builds and validates it.

Nothing else in lamina touches ``pm.hook``: the store calls :class:`DriverProxy` methods.
"""

from __future__ import annotations

import inspect
from typing import Any, BinaryIO, Callable, Iterable

import pluggy

from . import hookspecs
from .errors import DriverInterfaceError, PluginError
from .types import ApplyDiffOpts, Change, CreateOpts, DriverConfig, IDMappings, MountOpts

_NO_MAPS = IDMappings()


class DriverProxy:
    """One graph driver as the store sees it: typed methods, each one hook call."""

    def __init__(self, name: str, config: DriverConfig, driver: Any, pm: pluggy.PluginManager) -> None:
        self.name = name
        self.config = config
        self.driver = driver
        self._hook = pm.hook
        self.plugin_manager = pm

    @property
    def home(self) -> str:
        return self.config.home

    def create(self, id: str, parent: str | None, opts: CreateOpts | None = None, *, read_write: bool = True) -> None:
        self._hook.driver_create(id=id, parent=parent, opts=opts or CreateOpts(), read_write=read_write)

    def remove(self, id: str) -> None:
        self._hook.driver_remove(id=id)

    def get(self, id: str, opts: MountOpts | None = None) -> str:
        path = self._hook.driver_get(id=id, opts=opts or MountOpts())
        if not isinstance(path, str):
            raise DriverInterfaceError(self.name, "returned no path from", ["driver_get"])
        return path

    def put(self, id: str) -> None:
        self._hook.driver_put(id=id)

    def exists(self, id: str) -> bool:
        return bool(self._hook.driver_exists(id=id))

    def status(self) -> list[tuple[str, str]]:
        return [(str(k), str(v)) for k, v in (self._hook.driver_status() or [])]

    def metadata(self, id: str) -> dict[str, str]:
        return dict(self._hook.driver_metadata(id=id) or {})

    def cleanup(self) -> None:
        self._hook.driver_cleanup()

    def additional_image_stores(self) -> list[str]:
        return list(self._hook.driver_additional_image_stores() or [])

    def read_write_disk_usage(self, id: str) -> tuple[int, int]:
        result: tuple[int, int] = self._hook.driver_read_write_disk_usage(id=id)
        return result

    def diff(self, id: str, parent: str | None, id_mappings: IDMappings = _NO_MAPS,
             parent_mappings: IDMappings = _NO_MAPS, mount_label: str = "") -> BinaryIO:
        stream: BinaryIO = self._hook.driver_diff(
            id=id, id_mappings=id_mappings, parent=parent, parent_mappings=parent_mappings, mount_label=mount_label
        )
        return stream

    def changes(self, id: str, parent: str | None, id_mappings: IDMappings = _NO_MAPS,
                parent_mappings: IDMappings = _NO_MAPS, mount_label: str = "") -> list[Change]:
        result: list[Change] = self._hook.driver_changes(
            id=id, id_mappings=id_mappings, parent=parent, parent_mappings=parent_mappings, mount_label=mount_label
        )
        return result

    def apply_diff(self, id: str, parent: str | None, opts: ApplyDiffOpts) -> int:
        size: int = self._hook.driver_apply_diff(id=id, parent=parent, opts=opts)
        return size

    def diff_size(self, id: str, parent: str | None, id_mappings: IDMappings = _NO_MAPS,
                  parent_mappings: IDMappings = _NO_MAPS, mount_label: str = "") -> int:
        size: int = self._hook.driver_diff_size(
            id=id, id_mappings=id_mappings, parent=parent, parent_mappings=parent_mappings, mount_label=mount_label
        )
        return size

    def diff_getter(self, id: str) -> Callable[[str], BinaryIO] | None:
        getter: Callable[[str], BinaryIO] | None = self._hook.driver_diff_getter(id=id)
        return getter

    def update_layer_id_map(self, id: str, to_container: IDMappings, to_host: IDMappings, mount_label: str = "") -> None:
        self._hook.driver_update_layer_id_map(id=id, to_container=to_container, to_host=to_host, mount_label=mount_label)

    def create_from_template(self, id: str, template: str, template_mappings: IDMappings, parent: str | None,
                             parent_mappings: IDMappings, opts: CreateOpts, *, read_write: bool) -> None:
        self._hook.driver_create_from_template(
            id=id, template=template, template_mappings=template_mappings, parent=parent,
            parent_mappings=parent_mappings, opts=opts, read_write=read_write)

    def supports_shifting(self) -> bool:
        return bool(self._hook.driver_supports_shifting())

    # -- events

    @property
    def events(self) -> Any:
        """The hook relay, for the store to fire ``store_*`` events (keyword arguments only)."""
        return self._hook


def _impls_of(pm: pluggy.PluginManager, plugin: object) -> dict[str, Any]:
    """Hook name -> HookImpl for every hook *plugin* implements."""
    found: dict[str, Any] = {}
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin:
                found[caller.name] = impl
    return found


def _unmarked_driver_methods(driver: object, implemented: Iterable[str]) -> list[str]:
    done = set(implemented)
    return [
        name for name, _ in inspect.getmembers(type(driver), callable)
        if name.startswith("driver_") and name not in done
    ]


def build_driver(
    config: DriverConfig,
    driver: Any,
    *,
    plugins: Iterable[object] = (),
) -> DriverProxy:
    """Register *driver*, the core fallbacks and extra *plugins* in a new plugin manager, validate, and wrap.

    Raises DriverInterfaceError for misspelled, unmarked, mistyped or missing driver hooks, and
    PluginError when an extra plugin answers a driver hook instead of wrapping it.
    """
    from .naive import CoreFallbacks

    name = config.name
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(driver, name=f"driver:{name}")
    except pluggy.PluginValidationError as exc:
        raise DriverInterfaceError(name, f"has a hook whose signature breaks the contract ({exc})",
                                   [getattr(exc, "plugin_name", name)]) from exc
    impls = _impls_of(pm, driver)
    unknown = [h for h in impls if not hasattr(hookspecs, h)]
    if unknown:
        raise DriverInterfaceError(name, "implements hooks the contract does not define (misspelled?)", unknown)
    events = [h for h in impls if h.startswith("store_")]
    if events:
        raise DriverInterfaceError(name, "implements store events; drivers may only implement driver_* hooks", events)
    missing = [h for h in hookspecs.REQUIRED_DRIVER_HOOKS if h not in impls]
    if missing:
        unmarked = _unmarked_driver_methods(driver, impls)
        hint = f" (defined without @hookimpl: {', '.join(unmarked)})" if unmarked else ""
        raise DriverInterfaceError(name, f"does not implement required hooks{hint}", missing)
    for plugin in plugins:
        plugin_name = getattr(plugin, "__name__", type(plugin).__name__)
        try:
            pm.register(plugin, name=f"plugin:{plugin_name}")
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {plugin_name!r} breaks a hook signature: {exc}") from exc
        for hook, impl in _impls_of(pm, plugin).items():
            if not hasattr(hookspecs, hook):
                raise PluginError(f"plugin {plugin_name!r} implements unknown hook {hook!r} (misspelled?)")
            if hook.startswith("driver_") and not (impl.wrapper or impl.hookwrapper):
                raise PluginError(
                    f"plugin {plugin_name!r} answers {hook!r}; extra plugins may only wrap driver hooks "
                    "(@hookimpl(wrapper=True))"
                )
    proxy = DriverProxy(name, config, driver, pm)
    pm.register(CoreFallbacks(proxy), name="lamina:fallbacks")
    pm.check_pending()
    return proxy
