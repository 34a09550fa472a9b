"""Parsing of the overlay driver's storage options, with containers/storage's names and messages."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from lamina.errors import InvalidOption

__all__ = ["OverlayOptions", "parse_options", "parse_size", "parse_bool", "parse_storage_opt"]


@dataclass
class OverlayOptions:
    """Driver options (``overlay.<key>=<value>``; the ``overlay.``/``overlay2.``/``.`` prefix is optional)."""

    image_stores: list[str] = field(default_factory=list)
    quota_size: int = 0
    quota_inodes: int = 0
    mount_program: str = ""
    skip_mount_home: bool = False
    mount_options: str = ""
    ignore_chown_errors: bool = False
    force_mask: int | None = None


_SIZE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(value: str) -> int:
    """Bytes in a human size with binary multiples (``10G``, ``512m``, ``1.5GiB``; Go's units.RAMInBytes)."""
    m = _SIZE.match(value.strip())
    if not m:
        raise InvalidOption(f"invalid size: '{value}'")
    number = float(m.group(1))
    unit = (m.group(2) or "").lower()
    return int(number * _UNITS.get(unit, 1))


def parse_bool(key: str, value: str) -> bool:
    """Go's strconv.ParseBool."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise InvalidOption(f"overlay: option {key}: strconv.ParseBool: parsing {value!r}: invalid syntax")


def _parse_mask(key: str, value: str) -> int:
    if value == "shared":
        return 0o755
    if value == "private":
        return 0o700
    try:
        mask = int(value, 8)
    except ValueError:
        raise InvalidOption(f"overlay: option {key}: strconv.ParseInt: parsing {value!r}: invalid syntax") from None
    if not 0 <= mask <= 0o7777:
        raise InvalidOption(f"overlay: option {key}: mode {value!r} out of range")
    return mask


def parse_options(options: tuple[str, ...] | list[str]) -> OverlayOptions:
    """Parse driver options; raise InvalidOption with containers/storage's wording."""
    o = OverlayOptions()
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise InvalidOption(f"unable to parse key/value option: {option}")
        key, value = key.strip(), value.strip()
        trimmed = key.lower()
        for prefix in ("overlay.", "overlay2.", "."):
            if trimmed.startswith(prefix):
                trimmed = trimmed[len(prefix):]
                break
        if trimmed == "override_kernel_check":
            continue
        if trimmed == "mountopt":
            o.mount_options = value
        elif trimmed == "size":
            o.quota_size = parse_size(value)
        elif trimmed == "inodes":
            if not value.isdigit():
                raise InvalidOption(f"overlay: option {key}: strconv.ParseUint: parsing {value!r}: invalid syntax")
            o.quota_inodes = int(value)
        elif trimmed in ("imagestore", "additionalimagestore"):
            for store in filter(None, value.split(",")):
                store = os.path.normpath(store)
                if not os.path.isabs(store):
                    raise InvalidOption(f"overlay: image path {store!r} is not absolute.  Can not be relative")
                if not os.path.exists(store):
                    raise InvalidOption(f"overlay: can't stat imageStore dir {store}: no such file or directory")
                if not os.path.isdir(store):
                    raise InvalidOption(f"overlay: image path {store!r} must be a directory")
                o.image_stores.append(store)
        elif trimmed == "mount_program":
            if value and not os.path.exists(value):
                raise InvalidOption(f"overlay: can't stat program {value!r}: no such file or directory")
            o.mount_program = value
        elif trimmed == "skip_mount_home":
            o.skip_mount_home = parse_bool(key, value)
        elif trimmed == "ignore_chown_errors":
            o.ignore_chown_errors = parse_bool(key, value)
        elif trimmed == "force_mask":
            o.force_mask = _parse_mask(key, value)
        elif trimmed in ("additionallayerstore", "use_composefs"):
            raise InvalidOption(f"overlay: option {key} is not supported by lamina's overlay driver")
        else:
            raise InvalidOption(f"overlay: Unknown option {key}")
    return o


def parse_storage_opt(storage_opt: dict[str, str]) -> tuple[int, int]:
    """(size, inodes) from per-layer ``--storage-opt`` values; only ``size`` and ``inodes`` exist."""
    size = inodes = 0
    for key, value in storage_opt.items():
        k = key.lower()
        if k == "size":
            size = parse_size(value)
        elif k == "inodes":
            if not value.isdigit():
                raise InvalidOption(f"strconv.ParseUint: parsing {value!r}: invalid syntax")
            inodes = int(value)
        else:
            raise InvalidOption(f"unknown option {k}")
    return size, inodes
