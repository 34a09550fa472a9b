"""storage.conf: where containers/storage looks for it, what it accepts, the effective StoreOptions.

Behaviour follows containers/storage 1.43 (``types/options.go``, ``pkg/config``) and accepts the
keys that 1.62 added (``driver_priority``, ``imagestore``, ``transient_store``, ``use_composefs``).
Deliberate differences from Go are marked "Go:" in comments. The main ones: wrong types and syntax
errors raise ConfigError (Go prints them and falls back to built-in defaults), relative
graphroot/runroot values are rejected (Go resolves them against the current directory), and
STORAGE_DRIVER/STORAGE_OPTS apply even when no file exists.
Drop-in directories (``storage.conf.d``) are not read: 1.43 and 1.62 do not have them.
"""

from __future__ import annotations

import datetime
import os
import posixpath
import pwd
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lamina.errors import ConfigError
from lamina.types import IDMap

__all__ = [
    "DEFAULT_GRAPH_ROOT",
    "DEFAULT_RUN_ROOT",
    "OVERRIDE_CONFIG_FILE",
    "STORAGE_CONF_ENV",
    "SYSTEM_CONFIG_FILE",
    "StoreOptions",
    "expand_env_path",
    "load_store_options",
    "storage_conf_path",
    "to_config_json",
    "user_storage_conf_path",
]

# Module-level so tests and embedders can point them elsewhere; read at call time.
OVERRIDE_CONFIG_FILE = "/etc/containers/storage.conf"
SYSTEM_CONFIG_FILE = "/usr/share/containers/storage.conf"
STORAGE_CONF_ENV = "CONTAINERS_STORAGE_CONF"
DEFAULT_GRAPH_ROOT = "/var/lib/containers/storage"
DEFAULT_RUN_ROOT = "/run/containers/storage"
RUN_USER_BASE = "/run/user"
TMP_RUN_BASE = "/tmp"
VAR_TMP_BASE = "/var/tmp"

ROOTLESS_UID_ENV = "_CONTAINERS_ROOTLESS_UID"
_ROOTLESS_DRIVERS = frozenset({"btrfs", "overlay", "overlay2", "vfs"})
# Option-prefix spellings that name the same driver (Go's devicemapper options use "dm.").
_DRIVER_ALIASES = {"overlay2": "overlay", "dm": "devicemapper"}
_UINT32_MAX = 2**32 - 1


# ---------------------------------------------------------------- result


@dataclass
class StoreOptions:
    """Effective storage configuration (Go's ``types.StoreOptions`` plus lamina's extras).

    ``graph_driver_options`` holds ``<driver>.<key>=<value>`` strings in the order Go builds them;
    a later entry overrides an earlier one with the same key. A leading-dot key (``.size=10G``) or
    a key without a prefix applies to every driver. Additional image/layer stores are kept apart
    and become ``<driver>.imagestore=`` / ``<driver>.additionallayerstore=`` options through
    ``driver_options_for``. ``auto_userns_min_size``/``auto_userns_max_size`` are 0 when unset
    (the store then uses 1024/65536).
    ``config_file`` names the file that was read (None: built-in defaults); ``warnings`` lists what
    containers/storage would log and ignore (unknown keys, overlay2 renamed, missing driver).
    """

    run_root: str
    graph_root: str
    image_store: str | None = None
    rootless_storage_path: str = ""
    transient_store: bool = False
    graph_driver_name: str = ""
    graph_driver_priority: list[str] = field(default_factory=list)
    graph_driver_options: list[str] = field(default_factory=list)
    uid_map: tuple[IDMap, ...] = ()
    gid_map: tuple[IDMap, ...] = ()
    root_auto_ns_user: str = ""
    auto_userns_min_size: int = 0
    auto_userns_max_size: int = 0
    pull_options: dict[str, str] = field(default_factory=dict)
    additional_image_stores: list[str] = field(default_factory=list)
    additional_layer_stores: list[str] = field(default_factory=list)
    disable_volatile: bool = False
    plugins: list[str] = field(default_factory=list)
    config_file: str | None = None
    warnings: list[str] = field(default_factory=list)

    def driver_options_for(self, driver: str) -> list[str]:
        """Options that *driver* should receive, in order: one ``<driver>.imagestore=<p>`` per
        additional image store, one ``<driver>.additionallayerstore=<p>`` per additional layer
        store, then every entry of ``graph_driver_options`` that is prefixed ``<driver>.``
        (``overlay2.`` counts as ``overlay.``), starts with a bare ``.``, or has no prefix."""
        out = [f"{driver}.imagestore={p}" for p in self.additional_image_stores]
        out += [f"{driver}.additionallayerstore={p}" for p in self.additional_layer_stores]
        out += [o for o in self.graph_driver_options if _option_applies(o, driver)]
        return out

    def all_driver_options(self) -> list[str]:
        """Every driver option as containers/storage lists it (its ``GraphDriverOptions``): the
        store entries prefixed with the configured driver name (empty when auto), then the rest."""
        drv = self.graph_driver_name
        out = [f"{drv}.imagestore={p}" for p in self.additional_image_stores]
        out += [f"{drv}.additionallayerstore={p}" for p in self.additional_layer_stores]
        return out + list(self.graph_driver_options)


def _canonical_driver(name: str) -> str:
    return _DRIVER_ALIASES.get(name, name)


def _option_applies(option: str, driver: str) -> bool:
    key = option.split("=", 1)[0].strip().lower()
    prefix, dot, _ = key.partition(".")
    if not dot or not prefix:
        return True
    return _canonical_driver(prefix) == _canonical_driver(driver.lower())


# ---------------------------------------------------------------- schema

# Value kinds understood by _check().
_STR = "string"
_BOOL = "boolean"
_UINT32 = "uint32"
_STR_LIST = "string list"
_STR_MAP = "string table"
_ANY = "any"

_STORAGE_KEYS: dict[str, str] = {
    "driver": _STR,
    "driver_priority": _STR_LIST,  # 1.62
    "runroot": _STR,
    "graphroot": _STR,
    "imagestore": _STR,  # 1.62
    "rootless_storage_path": _STR,
    "transient_store": _BOOL,  # 1.62
}

# [storage.options] keys that are not driver options in their own right.
_OPTIONS_KEYS: dict[str, str] = {
    "additionalimagestores": _STR_LIST,
    "additionallayerstores": _STR_LIST,
    "imagestore": _STR,  # present in 1.62's struct but never used there
    "remap-uids": _STR,
    "remap-gids": _STR,
    "remap-user": _STR,
    "remap-group": _STR,
    "use_composefs": _STR,  # 1.62; Go does not turn the generic form into a driver option
    "root-auto-userns-user": _STR,
    "auto-userns-min-size": _UINT32,
    "auto-userns-max-size": _UINT32,
    "pull_options": _STR_MAP,
    "disable-volatile": _BOOL,
}

# [storage.options] keys that become "<driver>.<key>=<value>", in the order Go appends them.
# force_mask here is an integer file mode (Go os.FileMode) written in octal.
_GENERIC_DRIVER_KEYS: dict[str, str] = {
    "size": _STR,
    "mount_program": _STR,
    "skip_mount_home": _STR,
    "ignore_chown_errors": _STR,
    "force_mask": _UINT32,
    "mountopt": _STR,
}

# [storage.options.<driver>] tables (all string values), keys in the order Go emits them.
_DRIVER_TABLES: dict[str, tuple[str, ...]] = {
    "aufs": ("mountopt",),
    "btrfs": ("min_space", "size"),
    "overlay": (
        "ignore_chown_errors",
        "mount_program",
        "mountopt",
        "size",
        "inodes",
        "skip_mount_home",
        "force_mask",
        "use_composefs",
    ),
    "vfs": ("ignore_chown_errors",),
    "zfs": ("fsname", "mountopt", "size"),
}
# devicemapper's table: 1.62 dropped the driver; lamina has none, so it is accepted and ignored.
_IGNORED_TABLES = frozenset({"thinpool"})
_LAMINA_KEYS: dict[str, str] = {"plugins": _STR_LIST}


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, datetime.datetime):
        return "datetime"
    if isinstance(value, datetime.date):
        return "date"
    if isinstance(value, datetime.time):
        return "time"
    return type(value).__name__


def _check(path: str, key: str, value: object, kind: str) -> Any:
    """Return *value* if it has *kind*; otherwise raise ConfigError naming *path* and *key*."""

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{path}: {key}: expected {expected}, got {_toml_type(value)}")

    if kind == _ANY:
        return value
    if kind == _STR:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise fail("a boolean")
        return value
    if kind == _UINT32:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        if not 0 <= value <= _UINT32_MAX:
            raise ConfigError(f"{path}: {key}: {value} is out of range (0 to {_UINT32_MAX})")
        return value
    if kind == _STR_LIST:
        if not isinstance(value, list):
            raise fail("an array of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(
                    f"{path}: {key}[{i}]: expected a string, got {_toml_type(item)}"
                )
        return list(value)
    if kind == _STR_MAP:
        if not isinstance(value, dict):
            raise fail("a table of strings")
        for k, v in value.items():
            if not isinstance(v, str):
                raise ConfigError(f"{path}: {key}.{k}: expected a string, got {_toml_type(v)}")
        return dict(value)
    raise AssertionError(f"unknown kind {kind}")  # pragma: no cover


# ---------------------------------------------------------------- one file


@dataclass
class _Parsed:
    """The typed content of one storage.conf (empty strings mean "not set", as in Go)."""

    path: str
    driver: str = ""
    driver_priority: list[str] = field(default_factory=list)
    run_root: str = ""
    graph_root: str = ""
    image_store: str = ""
    rootless_storage_path: str = ""
    transient_store: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, dict[str, str]] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _table(path: str, key: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: expected a table, got {_toml_type(value)}")
    return value


def _parse_file(path: str) -> _Parsed | None:
    """Read and type-check *path*; None if it does not exist."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({exc.reason})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc

    p = _Parsed(path=path)

    def unknown(key: str) -> None:
        p.warnings.append(f"{path}: {key}: unknown key, ignored")

    for top, value in data.items():
        if top != "storage":
            unknown(top)
    storage = _table(path, "storage", data.get("storage", {}))

    for key, value in storage.items():
        dotted = f"storage.{key}"
        if key == "options":
            continue
        kind = _STORAGE_KEYS.get(key)
        if kind is None:
            unknown(dotted)
            continue
        checked = _check(path, dotted, value, kind)
        if key == "driver":
            p.driver = checked
        elif key == "driver_priority":
            p.driver_priority = checked
        elif key == "runroot":
            p.run_root = checked
        elif key == "graphroot":
            p.graph_root = checked
        elif key == "imagestore":
            p.image_store = checked
        elif key == "rootless_storage_path":
            p.rootless_storage_path = checked
        elif key == "transient_store":
            p.transient_store = checked

    options = _table(path, "storage.options", storage.get("options", {}))
    for key, value in options.items():
        dotted = f"storage.options.{key}"
        if key in _OPTIONS_KEYS:
            p.options[key] = _check(path, dotted, value, _OPTIONS_KEYS[key])
        elif key in _GENERIC_DRIVER_KEYS:
            p.options[key] = _check(path, dotted, value, _GENERIC_DRIVER_KEYS[key])
        elif key in _DRIVER_TABLES:
            allowed = _DRIVER_TABLES[key]
            table = _table(path, dotted, value)
            values: dict[str, str] = {}
            for tkey, tvalue in table.items():
                if tkey in allowed:
                    values[tkey] = _check(path, f"{dotted}.{tkey}", tvalue, _STR)
                else:
                    unknown(f"{dotted}.{tkey}")
            p.tables[key] = values
        elif key in _IGNORED_TABLES:
            _table(path, dotted, value)
        elif key == "lamina":
            for lkey, lvalue in _table(path, dotted, value).items():
                if lkey in _LAMINA_KEYS:
                    p.plugins = _check(path, f"{dotted}.{lkey}", lvalue, _LAMINA_KEYS[lkey])
                else:
                    unknown(f"{dotted}.{lkey}")
        else:
            unknown(dotted)

    if "imagestore" in p.options:
        p.warnings.append(
            f"{path}: storage.options.imagestore: has no effect, ignored (use storage.imagestore)"
        )
    if "remap-user" in p.options or "remap-group" in p.options:
        # Go 1.43 computes maps from /etc/subuid for these, then overwrites them with the parse of
        # remap-uids/remap-gids (empty when unset); 1.62 no longer reads any remap key.
        p.warnings.append(
            f"{path}: storage.options.remap-user/remap-group: have no effect, ignored "
            "(use remap-uids/remap-gids)"
        )
    return p


def _parse_id_map(path: str, key: str, spec: str) -> tuple[IDMap, ...]:
    """Parse "container:host:size[:container:host:size...]" (Go idtools.ParseIDMap)."""
    if spec == "":
        return ()
    parts = spec.split(":")
    bad = ConfigError(
        f"{path}: {key}: expected container:host:size triples of unsigned 32-bit numbers, "
        f"got {spec!r}"
    )
    if len(parts) % 3 != 0:
        raise bad
    nums: list[int] = []
    for part in parts:
        if not re.fullmatch(r"[0-9]+", part) or int(part) > _UINT32_MAX:
            raise bad
        nums.append(int(part))
    return tuple(IDMap(nums[i], nums[i + 1], nums[i + 2]) for i in range(0, len(nums), 3))


# ---------------------------------------------------------------- environment


def _rootless_uid(env: Mapping[str, str]) -> int:
    raw = env.get(ROOTLESS_UID_ENV, "")
    if raw == "":
        return os.geteuid()
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"${ROOTLESS_UID_ENV}: expected a number, got {raw!r}") from None


def _home_dir(env: Mapping[str, str], uid: int) -> str:
    home = env.get("HOME", "")
    if home:
        return home
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return ""


def _shell_name(s: str) -> tuple[str, int]:
    """Name after a '$' and how many characters it used (Go os.Expand's getShellName)."""
    special = "*#$@!?-0123456789"
    if s[0] == "{":
        if len(s) > 2 and s[1] in special and s[2] == "}":
            return s[1], 3
        end = s.find("}", 1)
        if end == 1:
            return "", 2  # "${}": bad syntax, eaten
        if end == -1:
            return "", 1  # "${" without "}": bad syntax, "{" eaten
        return s[1:end], end + 1
    if s[0] in special:
        return s[0], 1
    i = 0
    while i < len(s) and (s[i].isascii() and (s[i].isalnum() or s[i] == "_")):
        i += 1
    return s[:i], i


def _expand_vars(s: str, lookup: Callable[[str], str]) -> str:
    """Replace $VAR and ${VAR} like Go's os.ExpandEnv (unset variables become "")."""
    out: list[str] = []
    i = 0
    j = 0
    while j < len(s):
        if s[j] == "$" and j + 1 < len(s):
            out.append(s[i:j])
            name, width = _shell_name(s[j + 1 :])
            if name:
                out.append(lookup(name))
            elif width == 0:
                out.append("$")  # "$" not followed by a name stays as it is
            j += width
            i = j + 1
        j += 1
    out.append(s[i:])
    return "".join(out)


def _clean(path: str) -> str:
    cleaned = posixpath.normpath(path) if path else "."
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def expand_env_path(path: str, uid: int, environ: Mapping[str, str] | None = None) -> str:
    """Expand a configured path the way containers/storage does: ``$UID`` becomes *uid*, then
    ``$VAR``/``${VAR}`` come from *environ* (unset = ""), then symlinks are resolved if the path
    exists, otherwise it is only cleaned. Relative results stay relative."""
    env = os.environ if environ is None else environ
    expanded = _expand_vars(path.replace("$UID", str(uid)), lambda n: env.get(n, ""))
    if posixpath.isabs(expanded):
        try:
            return os.path.realpath(expanded, strict=True)
        except OSError:
            pass
    return _clean(expanded)


def _rootless_run_dir(env: Mapping[str, str], uid: int) -> str:
    """The per-user runtime dir, without creating anything.

    Go: XDG_RUNTIME_DIR, else /run/user/<uid> when init is systemd and the dir is the user's, else
    /tmp/storage-run-<uid> (created), else $HOME/rundir. lamina drops the systemd test (the
    ownership test is what matters) and the last fallback, and never creates directories here."""
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg:
        return xdg
    run_user = posixpath.join(RUN_USER_BASE, str(uid))
    try:
        st = os.stat(run_user)
    except OSError:
        pass
    else:
        if st.st_uid == uid and os.path.isdir(run_user):
            return run_user
    return posixpath.join(TMP_RUN_BASE, f"storage-run-{uid}")


def _rootless_data_dir(env: Mapping[str, str], uid: int) -> tuple[str, str]:
    """(data home, where it came from): $XDG_DATA_HOME, else $HOME/.local/share, else
    /var/tmp/containers-user-<uid> (Go creates that one; lamina does not)."""
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg:
        return xdg, "$XDG_DATA_HOME"
    home = _home_dir(env, uid)
    if home:
        return posixpath.join(home, ".local", "share"), "$HOME"
    return posixpath.join(VAR_TMP_BASE, f"containers-user-{uid}"), "built-in default"


# ---------------------------------------------------------------- search order


def user_storage_conf_path(environ: Mapping[str, str] | None = None) -> str | None:
    """``$XDG_CONFIG_HOME/containers/storage.conf``, else ``~/.config/containers/storage.conf``;
    None when no home directory is known. Existence is not checked."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg:
        return posixpath.join(xdg, "containers", "storage.conf")
    home = _home_dir(env, _rootless_uid(env))
    if not home:
        return None
    return posixpath.join(home, ".config", "containers", "storage.conf")


def _system_conf_path() -> str:
    if os.path.exists(OVERRIDE_CONFIG_FILE):
        return OVERRIDE_CONFIG_FILE
    return SYSTEM_CONFIG_FILE


def storage_conf_path(rootless: bool, *, environ: Mapping[str, str] | None = None) -> str:
    """The storage.conf that governs this user: ``$CONTAINERS_STORAGE_CONF`` if set; for rootless
    users their own file if it exists; then /etc/containers/storage.conf if it exists, else
    /usr/share/containers/storage.conf (returned even when missing, meaning "built-in defaults")."""
    env = os.environ if environ is None else environ
    explicit = env.get(STORAGE_CONF_ENV, "")
    if explicit:
        return explicit
    if rootless:
        user = user_storage_conf_path(env)
        if user is not None and os.path.exists(user):
            return user
    return _system_conf_path()


# ---------------------------------------------------------------- building options


@dataclass
class _Built:
    opts: StoreOptions
    # Where run_root/graph_root came from, for error messages.
    run_origin: str
    graph_origin: str


def _driver_options(p: _Parsed, driver: str) -> list[str]:
    """Go's driver-option list, minus the store entries (kept apart in StoreOptions).

    Generic [storage.options] keys come first with the configured driver as prefix ("" gives the
    any-driver form ".key"). Then the driver's own table. Go: only the named driver's table is used,
    and an empty table key falls back to the generic value, repeating it; lamina does not repeat it.
    With no driver named, Go drops every table; lamina keeps them all, prefixed with the table name,
    so that driver_options_for() can pick the right ones once a driver is chosen."""
    out: list[str] = []
    for key in _GENERIC_DRIVER_KEYS:
        value = p.options.get(key)
        if key == "force_mask":
            if value:
                out.append(f"{driver}.force_mask={value:o}")
        elif value:
            out.append(f"{driver}.{key}={value}")
    if driver:
        tables = [_canonical_driver(driver)]
    else:
        tables = list(_DRIVER_TABLES)
    for name in tables:
        values = p.tables.get(name, {})
        prefix = driver if driver else name
        for key in _DRIVER_TABLES.get(name, ()):
            if values.get(key):
                out.append(f"{prefix}.{key}={values[key]}")
    return out


def _env_driver(env: Mapping[str, str], driver: str, origin: str, warnings: list[str]) -> str:
    override = env.get("STORAGE_DRIVER", "")
    if override:
        driver = override
        origin = "$STORAGE_DRIVER"
    if driver == "overlay2":
        warnings.append(f"{origin}: switching driver from overlay2 to the equivalent overlay")
        driver = "overlay"
    return driver


def _from_parsed(p: _Parsed, env: Mapping[str, str]) -> _Built:
    """Go's ReloadConfigurationFile, without $STORAGE_OPTS (see _apply_storage_opts)."""
    warnings = list(p.warnings)
    driver = _env_driver(env, p.driver, f"{p.path}: storage.driver", warnings)
    if driver == "" and not p.driver_priority:
        warnings.append(
            f"{p.path}: storage.driver: not set; a driver will be picked automatically"
        )
    o = p.options
    opts = StoreOptions(
        run_root=p.run_root,
        graph_root=p.graph_root,
        image_store=p.image_store or None,
        rootless_storage_path=p.rootless_storage_path,
        transient_store=p.transient_store,
        graph_driver_name=driver,
        graph_driver_priority=list(p.driver_priority),
        # Go prefixes generic options with the driver before renaming overlay2; same result.
        graph_driver_options=_driver_options(p, driver),
        uid_map=_parse_id_map(p.path, "storage.options.remap-uids", o.get("remap-uids", "")),
        gid_map=_parse_id_map(p.path, "storage.options.remap-gids", o.get("remap-gids", "")),
        root_auto_ns_user=o.get("root-auto-userns-user", ""),
        auto_userns_min_size=o.get("auto-userns-min-size", 0),
        auto_userns_max_size=o.get("auto-userns-max-size", 0),
        pull_options=dict(o.get("pull_options", {})),
        additional_image_stores=list(o.get("additionalimagestores", [])),
        additional_layer_stores=list(o.get("additionallayerstores", [])),
        disable_volatile=o.get("disable-volatile", False),
        plugins=list(p.plugins),
        config_file=p.path,
        warnings=warnings,
    )
    return _Built(opts, f"{p.path}: storage.runroot", f"{p.path}: storage.graphroot")


def _split_storage_opts(raw: str) -> list[str]:
    # Go keeps empty items except when the whole variable is empty; lamina drops them all.
    return [item for item in raw.split(",") if item.strip()]


def _apply_storage_opts(opts: StoreOptions, env: Mapping[str, str]) -> None:
    """$STORAGE_OPTS, when set (even to ""), replaces all driver options, store entries included."""
    if "STORAGE_OPTS" in env:
        opts.graph_driver_options = _split_storage_opts(env["STORAGE_OPTS"])
        opts.additional_image_stores = []
        opts.additional_layer_stores = []


def _rootful(p: _Parsed | None, env: Mapping[str, str], *, storage_opts: bool = True) -> _Built:
    """Built-in rootful defaults overlaid with the parsed file *p* (None: no file)."""
    if p is None:
        warnings: list[str] = []
        driver = _env_driver(env, "", "$STORAGE_DRIVER", warnings)
        built = _Built(
            StoreOptions(DEFAULT_RUN_ROOT, DEFAULT_GRAPH_ROOT, graph_driver_name=driver,
                         warnings=warnings),
            "built-in default",
            "built-in default",
        )
    else:
        built = _from_parsed(p, env)
        if not built.opts.run_root:
            built.opts.run_root, built.run_origin = DEFAULT_RUN_ROOT, "built-in default"
        if not built.opts.graph_root:
            built.opts.graph_root, built.graph_origin = DEFAULT_GRAPH_ROOT, "built-in default"
    if storage_opts:
        _apply_storage_opts(built.opts, env)
    return built


def _rootless_from_system(system: _Built, env: Mapping[str, str], uid: int) -> _Built:
    """Go's getRootlessStorageOpts: what a rootless user gets without a file of their own.

    Only the rootless-safe part of the system configuration carries over: the driver (if it works
    rootless), driver_priority, pull_options, rootless_storage_path as graph root, and an overlay
    ignore_chown_errors option. lamina also keeps the system's plugin list."""
    sysopts = system.opts
    runtime = _rootless_run_dir(env, uid)
    run_origin = "$XDG_RUNTIME_DIR" if env.get("XDG_RUNTIME_DIR") else "built-in default"
    if sysopts.rootless_storage_path:
        graph = sysopts.rootless_storage_path
        graph_origin = f"{sysopts.config_file}: storage.rootless_storage_path"
    else:
        data, graph_origin = _rootless_data_dir(env, uid)
        graph = posixpath.join(data, "containers", "storage")
    warnings = list(sysopts.warnings)
    driver = sysopts.graph_driver_name if sysopts.graph_driver_name in _ROOTLESS_DRIVERS else ""
    driver = _env_driver(env, driver, "$STORAGE_DRIVER", warnings)
    options: list[str] = []
    if driver == "overlay":
        options += [o for o in sysopts.graph_driver_options if "ignore_chown_errors" in o][:1]
    priority: list[str] = []
    if driver == "":
        if sysopts.graph_driver_priority:
            priority = list(sysopts.graph_driver_priority)
        else:
            # 1.43 falls back to vfs. (1.62 first looks for an existing <driver>-images dir in the
            # graph root and tries native rootless overlay: that probing belongs to the store.)
            driver = "vfs"
    if env.get("STORAGE_OPTS", ""):
        options += _split_storage_opts(env["STORAGE_OPTS"])  # Go appends here, not replaces
    opts = StoreOptions(
        run_root=posixpath.join(runtime, "containers"),
        graph_root=graph,
        graph_driver_name=driver,
        graph_driver_priority=priority,
        graph_driver_options=options,
        pull_options=dict(sysopts.pull_options),
        plugins=list(sysopts.plugins),
        config_file=sysopts.config_file,
        warnings=warnings,
    )
    return _Built(opts, run_origin, graph_origin)


def _finish(built: _Built, uid: int, env: Mapping[str, str]) -> StoreOptions:
    """Expand and validate the paths (Go: loadStoreOptionsFromConfFile's tail)."""
    opts = built.opts
    opts.run_root = expand_env_path(opts.run_root, uid, env)
    opts.graph_root = expand_env_path(opts.graph_root, uid, env)
    if opts.rootless_storage_path:
        opts.rootless_storage_path = expand_env_path(opts.rootless_storage_path, uid, env)
    for value, origin in ((opts.run_root, built.run_origin), (opts.graph_root, built.graph_origin)):
        if not posixpath.isabs(value):
            raise ConfigError(f"{origin}: must be an absolute path, got {value!r}")
    where = opts.config_file or "configuration"
    if opts.image_store is not None:
        if not posixpath.isabs(opts.image_store):
            raise ConfigError(
                f"{where}: storage.imagestore: must be an absolute path, got {opts.image_store!r}"
            )
        if _clean(opts.image_store) == opts.graph_root:
            raise ConfigError(
                f"{where}: storage.imagestore: {opts.image_store} must either be not set "
                "or be different from graphroot"
            )
    return opts


def load_store_options(
    *,
    rootless: bool | None = None,
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> StoreOptions:
    """The effective storage configuration, as containers/storage 1.43 computes it.

    *rootless* None means "the user ID is not 0" (the ID comes from ``$_CONTAINERS_ROOTLESS_UID`` or
    the effective UID); True forces per-user storage even for UID 0. *path* replaces the search
    (like ``$CONTAINERS_STORAGE_CONF``); a missing file means built-in defaults. *environ* replaces
    ``os.environ`` for every lookup (HOME, XDG_*, STORAGE_DRIVER, STORAGE_OPTS, expansion).

    Rootful: defaults (driver auto, /var/lib/containers/storage, /run/containers/storage), then the
    file, then $STORAGE_DRIVER and $STORAGE_OPTS. Rootless: the system file is read and reduced to
    its rootless-safe part (per-user graph and run roots); if the user's own file (or the explicit
    one) exists it is used instead, with the per-user roots as defaults.
    Raises ConfigError naming the file and key for bad TOML, wrong value types, malformed ID maps,
    relative graph/run roots, or an imagestore equal to the graphroot."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    uid = _rootless_uid(env)
    if rootless is None:
        rootless = uid != 0
    explicit = path or env.get(STORAGE_CONF_ENV, "") or None
    system_path = explicit or _system_conf_path()
    system = _parse_file(system_path)

    if not rootless:
        return _finish(_rootful(system, env), uid, env)

    # Go lets $STORAGE_OPTS replace the system options first and then appends it again; using the
    # file's own options here avoids that duplicate.
    derived = _rootless_from_system(_rootful(system, env, storage_opts=False), env, uid)
    if explicit is not None:
        user, user_path = system, explicit
    else:
        user_path = user_storage_conf_path(env)
        user = _parse_file(user_path) if user_path is not None else None
    if user is None:
        return _finish(derived, uid, env)
    built = _from_parsed(user, env)
    if not built.opts.run_root:
        built.opts.run_root, built.run_origin = derived.opts.run_root, derived.run_origin
    if not built.opts.graph_root:
        if built.opts.rootless_storage_path:
            built.opts.graph_root = built.opts.rootless_storage_path
            built.graph_origin = f"{user_path}: storage.rootless_storage_path"
        else:
            built.opts.graph_root = derived.opts.graph_root
            built.graph_origin = derived.graph_origin
    _apply_storage_opts(built.opts, env)
    built.opts.warnings = _dedupe(derived.opts.warnings + built.opts.warnings)
    return _finish(built, uid, env)


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------- JSON


def to_config_json(opts: StoreOptions) -> dict[str, Any]:
    """*opts* in the shape ``containers-storage config`` (1.62) prints: ``json.Marshal`` of Go's
    ``types.StoreOptions``. Keys follow that struct's JSON tags and field order; tagged fields are
    omitted when empty, while ``RootlessStoragePath`` and ``PullOptions`` (which carry no JSON tag)
    are always present, the latter as null when empty. lamina-only fields are not included."""
    # Tags read from containers/storage types/options.go (go.podman.io era, with ImageStore,
    # GraphDriverPriority and TransientStore); the upper-case keys are untagged Go field names.
    out: dict[str, Any] = {}
    if opts.run_root:
        out["runroot"] = opts.run_root
    if opts.graph_root:
        out["root"] = opts.graph_root
    if opts.image_store:
        out["imagestore"] = opts.image_store
    out["RootlessStoragePath"] = opts.rootless_storage_path
    if opts.graph_driver_name:
        out["driver"] = opts.graph_driver_name
    if opts.graph_driver_priority:
        out["driver-priority"] = list(opts.graph_driver_priority)
    driver_options = opts.all_driver_options()
    if driver_options:
        out["driver-options"] = driver_options
    if opts.uid_map:
        out["uidmap"] = [m.to_json() for m in opts.uid_map]
    if opts.gid_map:
        out["gidmap"] = [m.to_json() for m in opts.gid_map]
    if opts.root_auto_ns_user:
        out["root_auto_ns_user"] = opts.root_auto_ns_user
    if opts.auto_userns_min_size:
        out["auto_userns_min_size"] = opts.auto_userns_min_size
    if opts.auto_userns_max_size:
        out["auto_userns_max_size"] = opts.auto_userns_max_size
    out["PullOptions"] = dict(opts.pull_options) if opts.pull_options else None
    if opts.disable_volatile:
        out["disable-volatile"] = True
    if opts.transient_store:
        out["transient_store"] = True
    return out
