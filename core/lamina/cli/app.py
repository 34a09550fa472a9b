"""The dispatcher: containers-storage's ``main()``, step for step.

1. Parse the global flags (mflag ContinueOnError, with ``--help``).
2. If none of graph/run/driver/storage-opt was given, load storage.conf (and the environment).
3. Find the command, build its flag set: the global flags again (their defaults are now the
   values from steps 1-2), then the command's own; parse with ExitOnError (status 125).
4. Check the argument count, open the store (``error initializing: ...`` on failure), run.

Only the chosen command's module is imported.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .flags import CONTINUE_ON_ERROR, EXIT_ON_ERROR, FlagError, FlagSet, go_list
from .output import err, out
from .table import COMMANDS, Command, find


class Options:
    """Go's ``types.StoreOptions`` as the CLI fills it, plus lamina's additions."""

    def __init__(self) -> None:
        self.run_root = ""
        self.graph_root = ""
        self.driver = ""
        self.driver_opts: list[str] = []
        self.debug = False
        self.image_store = ""
        self.transient_store = False
        self.version = False
        self.help = False
        self.uid_map: tuple = ()
        self.gid_map: tuple = ()
        self.from_config = False
        self.config_error: str | None = None

    def any_given(self) -> bool:
        return bool(self.graph_root or self.run_root or self.driver or self.driver_opts)


class Context:
    """What a command function receives."""

    def __init__(self, prog: str, name: str, command: Command, flags: dict[str, Any], args: list[str],
                 options: Options) -> None:
        self.prog = prog
        self.name = name  # as typed (an alias stays an alias)
        self.command = command
        self.flags = flags
        self.args = args
        self.options = options
        self.store: Any = None

    @property
    def json(self) -> bool:
        return bool(self.flags.get("json"))


# ---------------------------------------------------------------- flag sets


def make_flags(name: str, prog: str, error_handling: int, o: Options, *, top_level: bool) -> FlagSet:
    fs = FlagSet(name, prog, error_handling)
    fs.string(["-run", "R"], o.run_root, "Root of the runtime state tree", dest="run_root")
    fs.string(["-graph", "g"], o.graph_root, "Root of the storage tree", dest="graph_root")
    fs.string(["-storage-driver", "s"], o.driver, "Storage driver to use ($STORAGE_DRIVER)", dest="driver")
    fs.list(["-storage-opt"], o.driver_opts, "Set storage driver options ($STORAGE_OPTS)", dest="driver_opts")
    fs.bool(["-debug", "D"], o.debug, "Print debugging information", dest="debug")
    # 1.62's global flags. Shown in the top-level usage; hidden in the commands' usage so that
    # each command's help stays identical to 1.43's.
    hide = "" if top_level else "!"
    fs.string([hide + "-image-store"], o.image_store, "Root of a separate image store",
              dest="image_store")
    fs.bool([hide + "-transient-store"], o.transient_store,
            "Keep container records in the run root (1.62)", dest="transient_store")
    if top_level:
        fs.bool(["-version"], False, "Print lamina's version and its graph drivers' versions", dest="version")
    return fs


def _apply(o: Options, values: dict[str, Any]) -> None:
    for key in ("run_root", "graph_root", "driver", "driver_opts", "debug", "image_store", "transient_store",
                "version", "help"):
        if key in values:
            setattr(o, key, values[key])


def global_usage(fs: FlagSet, prog: str) -> None:
    lines = [f"Usage: {prog} command [options [...]]\n\n", "Commands:\n\n"]
    for command in COMMANDS:
        lines.append(f"  {command.names[0]:<30}{command.usage.replace('{prog}', prog)}\n")
    lines.append("\nOptions:\n")
    out("".join(lines))
    fs.print_defaults()


def command_usage(fs: FlagSet, prog: str, cmd: str, command: Command) -> None:
    text = f"Usage: {prog} {cmd} {command.options_help}\n\n{command.usage.replace('{prog}', prog)}\n"
    if command.help_text:
        text += "\n" + command.help_text + "\n"
    out(text + "\nOptions:\n")
    fs.print_defaults()


# ---------------------------------------------------------------- defaults


def load_defaults(o: Options) -> None:
    """Go's ``types.DefaultStoreOptionsAutoDetectUID()`` replacing the options wholesale."""
    from lamina.config import load_store_options
    from lamina.errors import ConfigError

    try:
        conf = load_store_options()
    except ConfigError as exc:
        # Go prints this on stdout, carries on with empty options, and GetStore reports the
        # error again later (it reads the file again).
        out(f"Failed to read {exc}\n")
        o.config_error = str(exc)
        return
    o.graph_root = conf.graph_root
    o.run_root = conf.run_root
    o.driver = conf.graph_driver_name
    o.driver_opts = config_driver_options(conf)
    o.uid_map = tuple(conf.uid_map)
    o.gid_map = tuple(conf.gid_map)
    o.transient_store = o.transient_store or conf.transient_store
    o.from_config = True


def config_driver_options(conf: Any) -> list[str]:
    """Go's GraphDriverOptions from storage.conf: store entries, then the driver options.

    With no driver named Go drops the per-driver tables; lamina's StoreOptions keeps them
    prefixed with their table's name, so they are dropped here too.
    """
    options = list(conf.all_driver_options())
    if conf.graph_driver_name:
        return options
    kept = []
    for opt in options:
        prefix, dot, _ = opt.split("=", 1)[0].partition(".")
        if not dot or not prefix:
            kept.append(opt)
    return kept


# ---------------------------------------------------------------- main


def run(prog: str, argv: list[str]) -> int:
    o = Options()
    gfs = make_flags(prog, prog, CONTINUE_ON_ERROR, o, top_level=True)
    gfs.usage = lambda: global_usage(gfs, prog)
    if not argv:
        gfs.call_usage()
        return 1
    gfs.bool(["#help", "-help"], False, "Print usage", dest="help")
    try:
        args = gfs.parse(argv)
    except FlagError as exc:
        out(f"{exc} while parsing arguments (1)\n")
        gfs.call_usage()
        return 1
    _apply(o, gfs.values())
    if o.help:
        gfs.out = sys.stdout
        gfs.call_usage()
        return 0
    if o.version:
        from .cmd_misc import print_version

        return print_version()
    if not args:
        if not o.any_given():
            load_defaults(o)  # (Go loads them first; it can print a storage.conf error)
        gfs.call_usage()
        return 1
    cmd = args[0]
    command = find(cmd)
    if not o.any_given() and (command is None or command.needs_defaults):
        load_defaults(o)
    if command is None:
        out(f"{cmd}: unrecognized command.\n")
        return 1

    fs = make_flags(cmd, prog, EXIT_ON_ERROR, o, top_level=False)
    for spec in command.flags:
        kind, names, usage, dest = spec[:4]
        default = spec[4] if len(spec) > 4 else ([] if kind == "list" else (False if kind == "bool" else ""))
        getattr(fs, kind)(list(names), default, usage, dest=dest)
    fs.usage = lambda: command_usage(fs, prog, cmd, command)
    args = fs.parse(args[1:])  # raises SystemExit(125) on errors, like ExitOnError
    values = fs.values()
    _apply(o, values)
    if command.min_args != 0 and len(args) < command.min_args:
        out(f"{cmd}: more arguments required.\n")
        fs.call_usage()
        return 1
    if command.max_args != 0 and len(args) > command.max_args:
        out(f"{cmd}: too many arguments ({go_list(args)}).\n")
        fs.call_usage()
        return 1

    ctx = Context(prog, cmd, command, values, args, o)
    if command.needs_store:
        from .logs import setup_logging

        setup_logging(o.debug)
        if o.debug:
            from .logs import logrus

            logrus("debug", f"Root: {o.graph_root}")
            logrus("debug", f"Run Root: {o.run_root}")
            logrus("debug", f"Driver Name: {o.driver}")
            logrus("debug", f"Driver Options: {go_list(o.driver_opts)}")
        from .storeopen import open_store

        store, problem = open_store(o)
        if store is None:
            out(f"error initializing: {problem}\n")
            return 1
        ctx.store = store
    module_name, func_name = command.target.split(":")
    import importlib

    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(ctx))
    except (KeyboardInterrupt, SystemExit, BrokenPipeError):
        raise
    except Exception as exc:  # a bug or an unexpected condition: say so plainly
        if o.debug:
            import traceback

            traceback.print_exc()

        err(f"{prog} {cmd}: unexpected error: {type(exc).__name__}: {exc}"
            + ("" if o.debug else " (run with --debug for a traceback)") + "\n")
        return 1
    finally:
        if ctx.store is not None:
            try:
                ctx.store.close()
            except Exception as exc:  # never mask the command's own result
                err(f"closing the store: {exc}\n")


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "lamina"
    if prog in ("__main__.py", "-c", "-m", ""):
        prog = "lamina"
    try:
        return run(prog, argv)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 1
