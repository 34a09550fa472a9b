"""A faithful emulation of containers/storage's ``pkg/mflag`` (Docker's old flag package).

Only what the containers-storage CLI relies on is implemented, but that part behaves like Go,
byte for byte where it prints something:

* a flag registered as ``-json`` is spelled ``--json``, a one-letter ``j`` is spelled ``-j``;
  ``--x=value`` and ``--x value`` both work, a value may be wrapped in matching quotes;
* booleans take ``=true``/``=false`` (Go's ``strconv.ParseBool`` spellings) and never consume
  the next argument;
* an unknown single-dash word is retried letter by letter (``-jq`` is ``-j -q``);
* parsing stops at the first non-flag argument (``-`` is one) or after ``--``;
* ``--help``/``-help``/``-h`` when not defined print the usage and report :class:`HelpRequested`;
* errors print ``<message>`` and ``See '<prog> [<cmd> ]--help'.`` to stderr;
* :meth:`FlagSet.format_defaults` reproduces ``PrintDefaults`` (text/tabwriter, minwidth 20,
  padding 3, sorted by first name, ``~`` for $HOME, zero defaults hidden).

Imports nothing heavy: the CLI's start-up time depends on it.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

__all__ = [
    "Flag",
    "FlagError",
    "FlagSet",
    "HelpRequested",
    "go_list",
    "parse_go_bool",
    "tabwrite",
]

CONTINUE_ON_ERROR = 0
EXIT_ON_ERROR = 1

#: Exit status of mflag's ExitOnError.
EXIT_FLAG_ERROR = 125


class FlagError(Exception):
    """A parse error (already printed, like mflag's failf)."""


class HelpRequested(FlagError):
    """``-h``/``-help``/``--help`` given to a flag set that does not define it (mflag's ErrHelp)."""

    def __init__(self) -> None:
        super().__init__("flag: help requested")


def parse_go_bool(text: str) -> bool:
    """Go's strconv.ParseBool; ValueError with Go's message on anything else."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{go_quote(text)}": invalid syntax')


def go_quote(text: str) -> str:
    """The inside of Go's %q for *text* (without the surrounding quotes)."""
    out = []
    for ch in text:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\a":
            out.append("\\a")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\v":
            out.append("\\v")
        elif 0xDC80 <= o <= 0xDCFF:  # undecodable byte smuggled by surrogateescape
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif not ch.isprintable() and o > 0x7F:
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    return "".join(out)


def go_list(values: list[str] | tuple[str, ...]) -> str:
    """Go's ``fmt.Sprintf("%v", []string{...})``: ``[a b c]``."""
    return "[" + " ".join(values) + "]"


def go_int_list(values: list[int] | tuple[int, ...] | None) -> str:
    """Go's %v of an []int (nil prints as ``[]``)."""
    return "[" + " ".join(str(v) for v in (values or ())) + "]"


class Flag:
    """One defined flag: its names as registered (``-json``, ``j``), kind, usage and value."""

    __slots__ = ("names", "kind", "usage", "dest", "value", "def_value")

    def __init__(self, names: list[str], kind: str, usage: str, dest: str, value: Any) -> None:
        self.names = names
        self.kind = kind  # "bool", "string" or "list"
        self.usage = usage
        self.dest = dest
        self.value = value
        self.def_value = self.text()

    def text(self) -> str:
        """The value as Go's Value.String() prints it."""
        if self.kind == "bool":
            return "true" if self.value else "false"
        if self.kind == "list":
            return go_list(self.value)
        return str(self.value)

    def is_bool(self) -> bool:
        return self.kind == "bool"

    def set(self, text: str) -> None:
        if self.kind == "bool":
            try:
                self.value = parse_go_bool(text)
            except ValueError:
                self.value = False
                raise
        elif self.kind == "list":
            self.value = list(self.value) + [text]
        else:
            self.value = text


def _trim_quotes(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if len(text) == 1 and text in "\"'":
        # Go compares str[0] and str[len-1], which is the same byte: "'" becomes "".
        return ""
    return text


class FlagSet:
    """A set of flags named *name* (the subcommand, or the program for the global set).

    *prog* stands for Go's ``os.Args[0]``; it appears in ``See '<prog> <name> --help'.``.
    With *error_handling* EXIT_ON_ERROR a parse error raises SystemExit(125) after printing,
    otherwise :class:`FlagError` (or :class:`HelpRequested`) propagates to the caller.
    """

    def __init__(self, name: str, prog: str, error_handling: int = CONTINUE_ON_ERROR) -> None:
        self.name = name
        self.prog = prog
        self.error_handling = error_handling
        self.formal: dict[str, Flag] = {}
        self.flags: list[Flag] = []
        self.args: list[str] = []
        self.actual: dict[str, Flag] = {}
        self.usage: Callable[[], None] | None = None
        self.out = None  # None: stderr (looked up at call time, so tests can swap sys.stderr)

    # ---------------------------------------------------------------- definition

    def _define(self, kind: str, names: list[str], default: Any, usage: str, dest: str | None) -> Flag:
        if dest is None:
            dest = names[0].lstrip("#-").replace("-", "_")
        flag = Flag(list(names), kind, usage, dest, default)
        for name in names:
            name = name[1:] if name[:1] in ("#", "!") else name
            if name in self.formal:
                raise ValueError(f"{self.name} flag redefined: {name}")
            self.formal[name] = flag
        self.flags.append(flag)
        return flag

    def bool(self, names: list[str], default: bool, usage: str, dest: str | None = None) -> Flag:
        return self._define("bool", names, bool(default), usage, dest)

    def string(self, names: list[str], default: str, usage: str, dest: str | None = None) -> Flag:
        return self._define("string", names, default, usage, dest)

    def list(self, names: list[str], default: list[str] | tuple[str, ...], usage: str,
             dest: str | None = None) -> Flag:
        return self._define("list", names, list(default), usage, dest)

    def values(self) -> dict[str, Any]:
        """Every flag's current value by its dest name."""
        return {f.dest: f.value for f in self.flags}

    def lookup(self, name: str) -> Flag | None:
        return self.formal.get(name)

    # ---------------------------------------------------------------- output

    def _err(self) -> Any:
        return self.out if self.out is not None else sys.stderr

    def failf(self, message: str) -> FlagError:
        """Print *message* and the "See ... --help" hint; return the error to raise."""
        out = self._err()
        out.write(message + "\n")
        if self.prog == self.name:
            out.write(f"See '{self.prog} --help'.\n")
        else:
            out.write(f"See '{self.prog} {self.name} --help'.\n")
        out.flush()
        return FlagError(message)

    def call_usage(self) -> None:
        if self.usage is not None:
            self.usage()
        else:
            out = self._err()
            out.write(f"Usage of {self.name}:\n")
            self.print_defaults()

    def format_defaults(self) -> str:
        """What ``PrintDefaults`` writes (leading blank line included)."""
        home = os.environ.get("HOME", "")
        if not home:
            try:
                import pwd

                home = pwd.getpwuid(os.getuid()).pw_dir
            except (KeyError, ImportError):
                home = ""
        if home == "/":
            home = ""
        lines: list[str] = []
        if self.flags:
            lines.append("")
        for flag in self.sorted_flags():
            names = [n for n in flag.names if n and n[0] not in "#!"]
            if not names or not flag.usage:
                continue
            val = flag.def_value
            if home and val.startswith(home):
                val = "~" + val[len(home):]
            if val in ("", "false", "0"):
                cell = "  -" + ", -".join(names)
            else:
                cell = "  -" + ", -".join(names) + "=" + val
            usage_lines = flag.usage.split("\n")
            lines.append(cell + "\t " + usage_lines[0])
            for extra in usage_lines[1:]:
                lines.append("\t " + extra)
        return tabwrite(lines, minwidth=20, padding=3)

    def print_defaults(self) -> None:
        out = self._err()
        out.write(self.format_defaults())
        out.flush()

    def sorted_flags(self) -> list[Flag]:
        """Flags in mflag's order: by first name without '#' and one leading '-', case-insensitively."""

        def key(flag: Flag) -> tuple[str, str]:
            first = flag.names[0][1:] if flag.names[0].startswith("#") else flag.names[0]
            first = first[1:] if first.startswith("-") else first
            return (first.lower(), first)

        return sorted(self.flags, key=key)

    # ---------------------------------------------------------------- parsing

    def _parse_one(self) -> tuple[bool, str, Exception | None]:
        """mflag's parseOne: (seen, name to retry letter by letter, error)."""
        if not self.args:
            return False, "", None
        s = self.args[0]
        if len(s) == 0 or s[0] != "-" or len(s) == 1:
            return False, "", None
        if s[1] == "-" and len(s) == 2:
            self.args = self.args[1:]
            return False, "", None
        name = s[1:]
        if len(name) == 0 or name[0] == "=":
            return False, "", self.failf(f"bad flag syntax: {s}")
        self.args = self.args[1:]
        has_value = False
        value = ""
        i = name.find("=")
        if i != -1:
            value = _trim_quotes(name[i + 1:])
            has_value = True
            name = name[:i]
        flag = self.formal.get(name)
        if flag is None:
            if name in ("-help", "help", "h"):
                self.call_usage()
                return False, "", HelpRequested()
            if name and name[0] == "-":
                return False, "", self.failf(f"flag provided but not defined: -{name}")
            return False, name, None  # ErrRetry
        if flag.is_bool():
            if has_value:
                try:
                    flag.set(value)
                except ValueError as exc:
                    return False, "", self.failf(f'invalid boolean value "{go_quote(value)}" for  -{name}: {exc}')
            else:
                flag.set("true")
        else:
            if not has_value and self.args:
                has_value = True
                value, self.args = self.args[0], self.args[1:]
            if not has_value:
                return False, "", self.failf(f"flag needs an argument: -{name}")
            flag.set(value)
        self.actual[name] = flag
        for idx, n in enumerate(flag.names):
            if n == "#" + name:
                replacement = ""
                for later in flag.names[idx:]:
                    if later and later[0] != "#":
                        replacement = later
                        break
                out = self._err()
                if replacement:
                    out.write(f"Warning: '-{name}' is deprecated, it will be replaced by '-{replacement}' soon. See usage.\n")
                else:
                    out.write(f"Warning: '-{name}' is deprecated, it will be removed soon. See usage.\n")
                out.flush()
        return True, "", None

    def parse(self, arguments: list[str]) -> list[str]:
        """Parse *arguments*; returns (and keeps in ``self.args``) the positional rest."""
        self.args = list(arguments)
        while True:
            seen, retry, err = self._parse_one()
            if seen:
                continue
            if err is None and not retry:
                break
            if err is None and retry:
                if len(retry) > 1:
                    failed: Exception | None = None
                    for letter in retry:
                        self.args = ["-" + letter] + self.args
                        seen2, retry2, err2 = self._parse_one()
                        if seen2:
                            continue
                        if err2 is not None or retry2:
                            failed = self.failf(f"flag provided but not defined: -{retry}")
                            break
                    if failed is None:
                        continue
                    err = failed
                else:
                    err = self.failf(f"flag provided but not defined: -{retry}")
            if self.error_handling == EXIT_ON_ERROR:
                raise SystemExit(EXIT_FLAG_ERROR)
            raise err  # type: ignore[misc]
        return self.args


def tabwrite(lines: list[str], minwidth: int = 20, padding: int = 3) -> str:
    """Go's text/tabwriter (padchar ' ', no flags) for lines whose cells are tab-terminated.

    A column block is a run of consecutive lines that have a cell in that column; its width is
    the widest cell plus *padding*, at least *minwidth*. Text after the last tab is not aligned.
    """
    cells = [line.split("\t") for line in lines]
    widths: list[list[int]] = [[0] * (len(c) - 1) for c in cells]

    def fmt(start: int, end: int, column: int) -> None:
        i = start
        while i < end:
            if len(cells[i]) - 1 <= column:
                i += 1
                continue
            j = i
            width = minwidth
            while j < end and len(cells[j]) - 1 > column:
                w = _display_width(cells[j][column]) + padding
                if w > width:
                    width = w
                j += 1
            for k in range(i, j):
                widths[k][column] = width
            fmt(i, j, column + 1)
            i = j

    fmt(0, len(cells), 0)
    out = []
    for row, ws in zip(cells, widths):
        parts = []
        for col, text in enumerate(row):
            if col < len(ws):
                parts.append(text + " " * max(0, ws[col] - _display_width(text)))
            else:
                parts.append(text)
        out.append("".join(parts) + "\n")
    return "".join(out)


def _display_width(text: str) -> int:
    # tabwriter counts UTF-8 runes.
    return len(text)
