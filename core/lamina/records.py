"""Layer, Image and Container records and their exact containers/storage JSON form.

Field order, key names and omitted empty fields follow containers/storage's structs, so the
files lamina writes are byte-compatible with the Go tools. Keys lamina does not know (written
by a newer generation) are kept and written back after the known ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .types import IDMap

Json = dict[str, Any]


def go_time_now() -> str:
    """The current UTC time in Go's RFC3339Nano form (trailing zeros of the fraction dropped)."""
    return format_go_time(time.time_ns())


def format_go_time(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        base += "." + f"{frac:09d}".rstrip("0")
    return base + "Z"


def _maps_to_json(maps: tuple[IDMap, ...]) -> list[dict[str, int]]:
    return [m.to_json() for m in maps]


def _maps_from_json(data: Any) -> tuple[IDMap, ...]:
    return tuple(IDMap.from_json(m) for m in (data or []))


def _sorted_map(value: dict[str, Any]) -> dict[str, Any]:
    """Go marshals maps with sorted keys."""
    return {k: value[k] for k in sorted(value)}


class _Record:
    """Caches a record's JSON object between saves; assigning a stored field drops the cache.

    Stored list and dict fields must be replaced, never changed in place (``r.names = [...]``,
    not ``r.names.append``), or the cache goes stale; tests run with ``LAMINA_VERIFY_RECORD_CACHE=1``,
    which makes every save compare the cache with a fresh serialisation.
    """

    _RUNTIME: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name not in self._RUNTIME and name != "_cache":
            object.__setattr__(self, "_cache", None)

    def to_json(self) -> Json:  # pragma: no cover - overridden
        raise NotImplementedError

    def json_object(self) -> Json:
        """The record's JSON object, from the cache when nothing changed since the last save or load."""
        cached: Json | None = getattr(self, "_cache", None)
        if cached is None:
            cached = self.to_json()
            object.__setattr__(self, "_cache", cached)
        return cached

    @classmethod
    def from_stored(cls, data: Json, location: str) -> Any:
        """The record read from a store file at *location*; *data* becomes its JSON cache."""
        record = cls.from_json(data)  # type: ignore[attr-defined]
        object.__setattr__(record, "location", location)
        object.__setattr__(record, "_cache", data)
        return record


def _put(out: Json, key: str, value: Any) -> None:
    """Set *key* unless *value* is empty (Go's omitempty)."""
    if value or value is True:
        out[key] = value


@dataclass(eq=False)
class Layer(_Record):
    """A layer record (``layers.json``). ``mount_point``/``mount_count``/``read_only`` are not stored."""

    id: str
    names: list[str] = field(default_factory=list)
    parent: str = ""
    metadata: str = ""
    mount_label: str = ""
    created: str = ""
    compressed_digest: str = ""
    compressed_size: int = 0
    uncompressed_digest: str = ""
    toc_digest: str = ""
    uncompressed_size: int = 0
    compression: int = 0
    uidset: list[int] = field(default_factory=list)
    gidset: list[int] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)
    uidmap: tuple[IDMap, ...] = ()
    gidmap: tuple[IDMap, ...] = ()
    big_data_names: list[str] = field(default_factory=list)
    extra: Json = field(default_factory=dict)
    # runtime state, never written to layers.json
    mount_point: str = ""
    mount_count: int = 0
    read_only: bool = False
    location: str = "stable"

    _RUNTIME = frozenset({"mount_point", "mount_count", "read_only", "location"})
    _KEYS = ("id", "names", "parent", "metadata", "mountlabel", "created", "compressed-diff-digest",
             "compressed-size", "diff-digest", "toc-digest", "diff-size", "compression", "uidset", "gidset",
             "flags", "uidmap", "gidmap", "big-data-names")

    @property
    def incomplete(self) -> bool:
        return bool(self.flags.get("incomplete"))

    def to_json(self) -> Json:
        out: Json = {"id": self.id}
        if self.names:
            out["names"] = list(self.names)
        if self.parent:
            out["parent"] = self.parent
        if self.metadata:
            out["metadata"] = self.metadata
        if self.mount_label:
            out["mountlabel"] = self.mount_label
        out["created"] = self.created or "0001-01-01T00:00:00Z"
        if self.compressed_digest:
            out["compressed-diff-digest"] = self.compressed_digest
        if self.compressed_size:
            out["compressed-size"] = self.compressed_size
        if self.uncompressed_digest:
            out["diff-digest"] = self.uncompressed_digest
        if self.toc_digest:
            out["toc-digest"] = self.toc_digest
        if self.uncompressed_size:
            out["diff-size"] = self.uncompressed_size
        if self.compression:
            out["compression"] = self.compression
        if self.uidset:
            out["uidset"] = list(self.uidset)
        if self.gidset:
            out["gidset"] = list(self.gidset)
        if self.flags:
            out["flags"] = _sorted_map(self.flags)
        if self.uidmap:
            out["uidmap"] = _maps_to_json(self.uidmap)
        if self.gidmap:
            out["gidmap"] = _maps_to_json(self.gidmap)
        if self.big_data_names:
            out["big-data-names"] = list(self.big_data_names)
        if self.extra:
            out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    @classmethod
    def from_json(cls, data: Json) -> "Layer":
        return cls.from_stored(data, "stable")

    @classmethod
    def from_stored(cls, data: Json, location: str) -> "Layer":
        # The hot path of loading thousands of layers: one pass over the keys present (a stored
        # layer has few), plain type checks, and no __init__ (whose attribute assignments would
        # each go through __setattr__).
        values = dict(_LAYER_DEFAULTS)
        extra: Json | None = None
        for key, v in data.items():
            spec = _LAYER_SPEC.get(key)
            if spec is None:
                if extra is None:
                    extra = {}
                extra[key] = v
                continue
            attr, kind = spec
            if kind is str:
                if type(v) is str:
                    values[attr] = v
                elif v is not None:
                    raise RecordError(f"field {key!r} must be a string, got {type(v).__name__}")
            elif kind is int:
                if type(v) is int:
                    values[attr] = v
                elif v is not None:
                    raise RecordError(f"field {key!r} must be an integer, got {type(v).__name__}")
            elif v:
                values[attr] = kind(data, key)
        if not values["id"]:
            raise RecordError("missing field 'id'")
        # Fresh containers for the absent list and dict fields (never shared between records).
        for attr in _LAYER_MUTABLE:
            if values[attr] is None:
                values[attr] = []
        if values["flags"] is None:
            values["flags"] = {}
        values["extra"] = extra if extra is not None else {}
        values["location"] = location
        values["_cache"] = data
        layer = cls.__new__(cls)
        layer.__dict__.update(values)
        return layer


@dataclass(eq=False)
class Image(_Record):
    """An image record (``images.json``). ``digests`` and ``read_only`` are computed, not stored."""

    id: str
    digest: str = ""
    names: list[str] = field(default_factory=list)
    names_history: list[str] = field(default_factory=list)
    top_layer: str = ""
    mapped_top_layers: list[str] = field(default_factory=list)
    metadata: str = ""
    big_data_names: list[str] = field(default_factory=list)
    big_data_sizes: dict[str, int] = field(default_factory=dict)
    big_data_digests: dict[str, str] = field(default_factory=dict)
    created: str = ""
    flags: dict[str, Any] = field(default_factory=dict)
    extra: Json = field(default_factory=dict)
    digests: list[str] = field(default_factory=list)
    read_only: bool = False
    location: str = "stable"

    _RUNTIME = frozenset({"digests", "read_only", "location"})
    _KEYS = ("id", "digest", "names", "names-history", "layer", "mapped-layers", "metadata", "big-data-names",
             "big-data-sizes", "big-data-digests", "created", "flags")

    def recompute_digests(self) -> None:
        """``digests`` = the image digest, then every ``manifest*`` big-data digest, without repeats."""
        found: list[str] = []
        if self.digest:
            found.append(self.digest)
        for name in self.big_data_names:
            if name.startswith("manifest"):
                d = self.big_data_digests.get(name, "")
                if d and d not in found:
                    found.append(d)
        self.digests = found

    def to_json(self) -> Json:
        out: Json = {"id": self.id}
        _put(out, "digest", self.digest)
        _put(out, "names", list(self.names))
        _put(out, "names-history", list(self.names_history))
        _put(out, "layer", self.top_layer)
        _put(out, "mapped-layers", list(self.mapped_top_layers))
        _put(out, "metadata", self.metadata)
        _put(out, "big-data-names", list(self.big_data_names))
        _put(out, "big-data-sizes", _sorted_map(self.big_data_sizes))
        _put(out, "big-data-digests", _sorted_map(self.big_data_digests))
        out["created"] = self.created or "0001-01-01T00:00:00Z"
        _put(out, "flags", _sorted_map(self.flags))
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    @classmethod
    def from_json(cls, data: Json) -> "Image":
        image = cls(
            id=_str(data, "id", required=True),
            digest=_str(data, "digest"),
            names=_strlist(data, "names"),
            names_history=_strlist(data, "names-history"),
            top_layer=_str(data, "layer"),
            mapped_top_layers=_strlist(data, "mapped-layers"),
            metadata=_str(data, "metadata"),
            big_data_names=_strlist(data, "big-data-names"),
            big_data_sizes={k: int(v) for k, v in _dict(data, "big-data-sizes").items()},
            big_data_digests={k: str(v) for k, v in _dict(data, "big-data-digests").items()},
            created=_str(data, "created"),
            flags=_dict(data, "flags"),
            extra={k: v for k, v in data.items() if k not in cls._KEYS},
        )
        image.recompute_digests()
        return image


@dataclass(eq=False)
class Container(_Record):
    """A container record (``containers.json``)."""

    id: str
    names: list[str] = field(default_factory=list)
    image: str = ""
    layer: str = ""
    metadata: str = ""
    big_data_names: list[str] = field(default_factory=list)
    big_data_sizes: dict[str, int] = field(default_factory=dict)
    big_data_digests: dict[str, str] = field(default_factory=dict)
    created: str = ""
    uidmap: tuple[IDMap, ...] = ()
    gidmap: tuple[IDMap, ...] = ()
    flags: dict[str, Any] = field(default_factory=dict)
    extra: Json = field(default_factory=dict)
    location: str = "stable"

    _RUNTIME = frozenset({"location"})
    _KEYS = ("id", "names", "image", "layer", "metadata", "big-data-names", "big-data-sizes",
             "big-data-digests", "created", "uidmap", "gidmap", "flags")

    @property
    def volatile(self) -> bool:
        return bool(self.flags.get("Volatile"))

    def to_json(self) -> Json:
        out: Json = {"id": self.id}
        _put(out, "names", list(self.names))
        out["image"] = self.image
        out["layer"] = self.layer
        _put(out, "metadata", self.metadata)
        _put(out, "big-data-names", list(self.big_data_names))
        _put(out, "big-data-sizes", _sorted_map(self.big_data_sizes))
        _put(out, "big-data-digests", _sorted_map(self.big_data_digests))
        out["created"] = self.created or "0001-01-01T00:00:00Z"
        _put(out, "uidmap", _maps_to_json(self.uidmap))
        _put(out, "gidmap", _maps_to_json(self.gidmap))
        _put(out, "flags", _sorted_map(self.flags))
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    @classmethod
    def from_json(cls, data: Json) -> "Container":
        return cls(
            id=_str(data, "id", required=True),
            names=_strlist(data, "names"),
            image=_str(data, "image"),
            layer=_str(data, "layer"),
            metadata=_str(data, "metadata"),
            big_data_names=_strlist(data, "big-data-names"),
            big_data_sizes={k: int(v) for k, v in _dict(data, "big-data-sizes").items()},
            big_data_digests={k: str(v) for k, v in _dict(data, "big-data-digests").items()},
            created=_str(data, "created"),
            uidmap=_maps_from_json(data.get("uidmap")),
            gidmap=_maps_from_json(data.get("gidmap")),
            flags=_dict(data, "flags"),
            extra={k: v for k, v in data.items() if k not in cls._KEYS},
        )


@dataclass
class MountRecord:
    """One entry of ``mountpoints.json``."""

    id: str
    path: str
    count: int

    def to_json(self) -> Json:
        return {"id": self.id, "path": self.path, "count": self.count}


# ---------------------------------------------------------------- strict field readers


class RecordError(ValueError):
    """A record has a field of the wrong type."""


def _str(data: Json, key: str, required: bool = False) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise RecordError(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise RecordError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _int(data: Json, key: str) -> int:
    value = data.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"field {key!r} must be an integer, got {type(value).__name__}")
    return value


def _strlist(data: Json, key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise RecordError(f"field {key!r} must be a list of strings")
    for v in value:  # a plain loop: this runs for every name of every record loaded
        if type(v) is not str:
            raise RecordError(f"field {key!r} must be a list of strings")
    return list(value)


def _intlist(data: Json, key: str) -> list[int]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise RecordError(f"field {key!r} must be a list of integers")
    return list(value)


def _dict(data: Json, key: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecordError(f"field {key!r} must be an object, got {type(value).__name__}")
    return dict(value)


# ---------------------------------------------------------------- the layer loader's tables


def _maps_field(data: Json, key: str) -> tuple[IDMap, ...]:
    return _maps_from_json(data.get(key))


_LAYER_SPEC: dict[str, tuple[str, Any]] = {
    "id": ("id", str), "parent": ("parent", str), "metadata": ("metadata", str),
    "mountlabel": ("mount_label", str), "created": ("created", str),
    "compressed-diff-digest": ("compressed_digest", str), "diff-digest": ("uncompressed_digest", str),
    "toc-digest": ("toc_digest", str), "compressed-size": ("compressed_size", int),
    "diff-size": ("uncompressed_size", int), "compression": ("compression", int),
    "names": ("names", _strlist), "uidset": ("uidset", _intlist),
    "gidset": ("gidset", _intlist), "flags": ("flags", _dict),
    "uidmap": ("uidmap", _maps_field), "gidmap": ("gidmap", _maps_field),
    "big-data-names": ("big_data_names", _strlist),
}
assert set(_LAYER_SPEC) == set(Layer._KEYS)
_LAYER_MUTABLE = ("names", "uidset", "gidset", "big_data_names")
_LAYER_DEFAULTS: Json = {
    "id": "", "parent": "", "metadata": "", "mount_label": "", "created": "", "compressed_digest": "",
    "uncompressed_digest": "", "toc_digest": "", "compressed_size": 0, "uncompressed_size": 0, "compression": 0,
    "names": None, "uidset": None, "gidset": None, "big_data_names": None, "flags": None,
    "uidmap": (), "gidmap": (), "mount_point": "", "mount_count": 0, "read_only": False,
}
