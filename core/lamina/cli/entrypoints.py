"""A fast reader of installed entry points, for ``lamina drivers``'s start-up budget.

``importlib.metadata`` costs 20-30 ms to import (email, csv, zipfile, pathlib…). This reads the
same files it reads — ``*.dist-info``/``*.egg-info`` directories on ``sys.path``, their
``METADATA``/``PKG-INFO`` and ``entry_points.txt`` — with the same rule for duplicates (the
first distribution of a normalised name on ``sys.path`` wins). Anything it does not
understand (zip files on ``sys.path``, unreadable metadata) makes it defer to
``importlib.metadata``.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

__all__ = ["EntryPoint", "entry_points"]

_NORMALISE = re.compile(r"[-_.]+")


class _Fallback(Exception):
    pass


class EntryPoint:
    """The parts of importlib.metadata.EntryPoint that lamina uses."""

    __slots__ = ("name", "value", "group", "dist_name", "dist_version")

    def __init__(self, name: str, value: str, group: str, dist_name: str, dist_version: str) -> None:
        self.name = name
        self.value = value
        self.group = group
        self.dist_name = dist_name
        self.dist_version = dist_version

    def load(self) -> Any:
        import importlib

        module_name, _, attrs = self.value.partition(":")
        obj = importlib.import_module(module_name.strip())
        for attr in attrs.split("[", 1)[0].strip().split(".") if attrs else ():
            obj = getattr(obj, attr)
        return obj


def _metadata(path: str) -> tuple[str, str]:
    name = version = ""
    for file_name in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(path, file_name), encoding="utf-8", errors="replace") as f:
                for line in f:
                    if not line.strip():
                        break  # end of the headers
                    if line.startswith("Name:") and not name:
                        name = line[5:].strip()
                    elif line.startswith("Version:") and not version:
                        version = line[8:].strip()
            break
        except FileNotFoundError:
            continue
    if not name:
        raise _Fallback(path)
    return name, version


def _parse(text: str, group: str) -> list[tuple[str, str]]:
    found = []
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        if section == group and "=" in line:
            key, _, value = line.partition("=")
            found.append((key.strip(), value.strip()))
    return found


def _scan(group: str) -> list[EntryPoint]:
    seen: set[str] = set()
    out: list[EntryPoint] = []
    for entry in sys.path:
        directory = entry or "."
        if not os.path.isdir(directory):
            if os.path.isfile(directory):
                raise _Fallback(directory)  # a zip file on sys.path
            continue
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in sorted(names):
            if not (name.endswith(".dist-info") or name.endswith(".egg-info")):
                continue
            path = os.path.join(directory, name)
            if not os.path.isdir(path):
                continue
            dist_name, version = _metadata(path)
            key = _NORMALISE.sub("_", dist_name).lower()
            if key in seen:
                continue
            seen.add(key)
            try:
                with open(os.path.join(path, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            for ep_name, value in _parse(text, group):
                out.append(EntryPoint(ep_name, value, group, dist_name, version))
    return out


def entry_points(group: str) -> list[EntryPoint]:
    """Every entry point of *group*, sorted by (name, value)."""
    try:
        found = _scan(group)
    except (_Fallback, OSError, UnicodeDecodeError):
        from importlib.metadata import entry_points as slow

        found = [EntryPoint(ep.name, ep.value, group, ep.dist.name if ep.dist else "?",
                            ep.dist.version if ep.dist else "?") for ep in slow(group=group)]
    return sorted(found, key=lambda ep: (ep.name, ep.value))
