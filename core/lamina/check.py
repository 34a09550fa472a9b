"""Consistency check, repair and garbage collection of a store.

The shape follows containers/storage 1.62's ``Store.Check``/``Store.Repair``/``Store.GarbageCollect``
(``containers-storage check [-q] [-r [-f]] [-m age] [-j]`` and ``gc``), with what lamina adds:

* **layers** (Go's ``Layers``): big-data items missing; a parent that does not exist; the driver
  holding no data for the layer; content that no longer matches the layer's tar-split (every
  file's size and CRC-64, then the digest and size of the whole rebuilt diff); a recorded
  ``diff-digest`` without its tar-split; layers no image or container uses, once older than the
  maximum age; driver data no record owns (Go's "unaccounted" layers); incomplete records.
* **images** / **containers**: big data missing or with another size (and, for keys whose digest
  is a plain sha256 of the bytes, another digest); layers or images they need that are missing or
  damaged (errors propagate upwards as in Go).
* **orphans** (lamina): what a cancelled create left on disk with no record: tar-split files,
  big-data directories and files, container directories, overlay short links, vfs staging
  copies, btrfs quota files and the ``.tmp-*`` files of interrupted atomic writes.
* **mounts** (lamina): ``mountpoints.json`` entries for layers that no longer exist, or, for a
  driver that really mounts (overlay), whose path is not mounted.

:func:`check` reads under shared locks; :func:`repair` acts through the Store API (so every
removal is the same crash-safe sequence a user's delete is); :func:`garbage_collect` removes the
orphans under exclusive locks. The on-disk layouts scanned for orphans are containers/storage's
(vfs, overlay, btrfs); other drivers get no driver-level orphan scan.

Crash recovery lives here too: the Store wraps its multi-file operations in :func:`intent`, and
:func:`recover_interrupted` (run when a store is opened) finishes or undoes what a dead process
left half done. docs/reliability.md describes both and the campaigns that test them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

from . import crc64
from .errors import ArchiveError, LaminaError, NotKnown
from .fsutil import remove_tree
from .metastore import big_data_file_name
from .types import MountOpts

if TYPE_CHECKING:
    from .records import Container, Image, Layer
    from .store import Store

__all__ = [
    "CheckOptions", "CheckReport", "Problem", "Orphan", "StaleMount", "RepairAction",
    "check", "repair", "garbage_collect", "find_orphans", "find_stale_mounts", "parse_duration",
    "intent", "recover_interrupted", "DEFAULT_MAX_AGE",
]

_LOG = logging.getLogger("lamina.check")

#: containers/storage 1.62's defaultMaximumUnreferencedLayerAge (24h).
DEFAULT_MAX_AGE = 24 * 3600.0

# containers/storage's sentinel error texts (types/errors.go, 1.62)
ERR_LAYER_UNACCOUNTED = "layer in lower level storage driver not accounted for"
ERR_LAYER_UNREFERENCED = "layer not referenced by any images or containers"
ERR_LAYER_INCORRECT_DIGEST = "layer content incorrect digest"
ERR_LAYER_INCORRECT_SIZE = "layer content incorrect size"
ERR_LAYER_CONTENT_MODIFIED = "layer content modified"
ERR_LAYER_DATA_MISSING = "layer data item is missing"
ERR_LAYER_MISSING = "layer is missing"
ERR_IMAGE_LAYER_MISSING = "image layer is missing"
ERR_IMAGE_DATA_MISSING = "image data item is missing"
ERR_IMAGE_DATA_SIZE = "image data item has incorrect size"
ERR_CONTAINER_IMAGE_MISSING = "image missing"
ERR_CONTAINER_DATA_MISSING = "container data item is missing"
ERR_CONTAINER_DATA_SIZE = "container data item has incorrect size"
# lamina's additions
ERR_DATA_DIGEST = "data item has incorrect digest"
ERR_LAYER_INCOMPLETE = "layer is incomplete"

_MAX_FILE_PROBLEMS = 20  # per layer; the rest are counted in one summary line
_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_TEMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


# ---------------------------------------------------------------- the report


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a layer, image or container.

    *code* is a stable machine name (``layer-data-missing``, ``layer-content-digest``, ...);
    *message* is the text containers/storage 1.62 prints for the same problem, where it has one.
    """

    code: str
    message: str
    path: str = ""

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Orphan:
    """Something on disk that no record owns.

    *kind*: ``driver-layer`` (Go's unaccounted layer), ``driver-staging``, ``driver-scratch``,
    ``overlay-link``, ``quota-file``, ``tar-split``, ``layer-data``, ``image-data``,
    ``container-data``, ``container-run-dir`` or ``temp-file``. *owner* is the ID it is named
    after ("" if none); *age* is seconds since its last modification.
    """

    kind: str
    path: str
    owner: str
    age: float

    @property
    def message(self) -> str:
        owner = f" (named after {self.owner})" if self.owner else ""
        return f"{self.kind} {self.path}{owner}: not owned by any record"


@dataclass(frozen=True)
class StaleMount:
    """A ``mountpoints.json`` entry that cannot be right (*reason*: ``layer-unknown`` or ``not-mounted``)."""

    layer: str
    path: str
    count: int
    reason: str

    @property
    def message(self) -> str:
        if self.reason == "layer-unknown":
            return f"layer {self.layer}: mount count {self.count} recorded for a layer that does not exist"
        return f"layer {self.layer}: mount count {self.count} recorded but {self.path} is not mounted"


@dataclass(frozen=True)
class RepairAction:
    """What :func:`repair` or :func:`garbage_collect` did (or failed to do) about one thing."""

    action: str  # delete-container, delete-image, delete-layer, remove-driver-layer, remove-orphan, reset-mount
    target: str
    ok: bool
    error: str = ""
    removed_layers: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        text = f"{self.action} {self.target}"
        if self.removed_layers:
            text += f" (with layers {', '.join(self.removed_layers)})"
        return text + ("" if self.ok else f": failed: {self.error}")


@dataclass
class CheckOptions:
    """Which checks :func:`check` runs (containers/storage's CheckOptions, plus lamina's).

    ``max_age`` (seconds) is how old an unreferenced layer or an orphan must be before it is
    reported; None never reports unreferenced layers (orphans then use 0).
    """

    layer_data: bool = True
    layer_digests: bool = True  # read every file against the tar-split (off with -q)
    image_data: bool = True
    container_data: bool = True
    orphans: bool = True
    mounts: bool = True
    max_age: float | None = DEFAULT_MAX_AGE

    @classmethod
    def quick(cls, max_age: float | None = DEFAULT_MAX_AGE) -> "CheckOptions":
        """``check -q``: everything except reading layer contents."""
        return cls(layer_digests=False, max_age=max_age)


@dataclass
class CheckReport:
    """Problems found by :func:`check`, keyed like containers/storage's CheckReport."""

    layers: dict[str, list[Problem]] = field(default_factory=dict)
    ro_layers: dict[str, list[Problem]] = field(default_factory=dict)
    images: dict[str, list[Problem]] = field(default_factory=dict)
    ro_images: dict[str, list[Problem]] = field(default_factory=dict)
    containers: dict[str, list[Problem]] = field(default_factory=dict)
    orphans: list[Orphan] = field(default_factory=list)
    stale_mounts: list[StaleMount] = field(default_factory=list)
    layer_parents: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def clean(self) -> bool:
        return not (self.layers or self.ro_layers or self.images or self.ro_images or self.containers
                    or self.orphans or self.stale_mounts)

    @property
    def incomplete_layers(self) -> list[str]:
        return [i for i, ps in self.layers.items() if any(p.code == "layer-incomplete" for p in ps)]

    def summary(self) -> str:
        """containers/storage's error text for a report with problems, plus lamina's counts."""
        text = (f"{len(self.layers)} layer errors, {len(self.ro_layers)} read-only layer errors, "
                f"{len(self.images)} image errors, {len(self.ro_images)} read-only image errors, "
                f"{len(self.containers)} container errors")
        if self.orphans or self.stale_mounts:
            text += f", {len(self.orphans)} orphans, {len(self.stale_mounts)} stale mounts"
        return text

    def text(self) -> str:
        """The text ``check`` prints: ``<kind> <id>:`` then one `` <error>`` line per problem."""
        lines: list[str] = []
        for title, table in (("layer", self.layers), ("read-only layer", self.ro_layers),
                             ("image", self.images), ("read-only image", self.ro_images),
                             ("container", self.containers)):
            for id, problems in table.items():
                if problems:
                    lines.append(f"{title} {id}:")
                lines.extend(f" {p.message}" for p in problems)
        for orphan in self.orphans:
            lines.append(f"orphan {orphan.path}:")
            lines.append(f" {orphan.message}")
        for mount in self.stale_mounts:
            lines.append(f"mount {mount.layer}:")
            lines.append(f" {mount.message}")
        return "".join(line + "\n" for line in lines)

    def to_json(self) -> dict[str, Any]:
        """Go's JSON keys (``Layers``…``Containers``, errors as their text instead of Go's ``{}``),
        then lamina's ``Orphans`` (path: [message]) and ``Mounts`` (layer: [message])."""
        def table(t: dict[str, list[Problem]]) -> dict[str, list[str]]:
            return {k: [p.message for p in v] for k, v in t.items()}

        orphans: dict[str, list[str]] = {}
        for o in self.orphans:
            orphans.setdefault(o.path, []).append(o.message)
        mounts: dict[str, list[str]] = {}
        for m in self.stale_mounts:
            mounts.setdefault(m.layer, []).append(m.message)
        return {"Layers": table(self.layers), "ROLayers": table(self.ro_layers), "Images": table(self.images),
                "ROImages": table(self.ro_images), "Containers": table(self.containers),
                "Orphans": orphans, "Mounts": mounts}


def _add(table: dict[str, list[Problem]], id: str, problem: Problem) -> None:
    table.setdefault(id, []).append(problem)


# ---------------------------------------------------------------- durations


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go ``time.ParseDuration`` string (``24h``, ``1h30m``, ``90s``, ``0``); ValueError if invalid."""
    s = text.strip()
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        match = _DURATION_PART.match(s, pos)
        if match is None:
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


def _created_age(created: str, now: float) -> float | None:
    """Seconds since an RFC3339 ``created`` time; None if unknown (Go's zero time)."""
    if not created or created.startswith("0001-01-01"):
        return None
    m = re.match(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", created)
    if m is None:
        return None
    import calendar

    year, month, day, hour, minute, sec = (int(x) for x in m.groups()[:6])
    secs = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0))
    frac = float("0." + m.group(7)) if m.group(7) else 0.0
    zone = m.group(8)
    if zone != "Z":
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        secs -= offset if zone[0] == "+" else -offset
    return now - (secs + frac)


def _mtime_age(path: str, now: float) -> float:
    try:
        return max(0.0, now - os.lstat(path).st_mtime)
    except FileNotFoundError:
        return 0.0


# ---------------------------------------------------------------- reading layer contents


def _sha256_file(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(_CHUNK)
            if not data:
                break
            h.update(data)
            size += len(data)
    return size, "sha256:" + h.hexdigest()


@contextlib.contextmanager
def _layer_files(store: "Store", layer: "Layer") -> Iterator[Callable[[str], IO[bytes]]]:
    """An opener of the layer's files by archive name: the driver's DiffGetter, or its tree
    (read-only ``get``) with names resolved inside the tree."""
    getter = store.driver.diff_getter(layer.id)
    if callable(getter):
        try:
            yield getter
        finally:
            close = getattr(getter, "close", None)
            if callable(close):
                close()
        return
    from .layercontent import _TreeFiles  # resolves names as if the tree were "/" (openat2 RESOLVE_IN_ROOT)

    root = store.driver.get(layer.id, MountOpts(mount_label=layer.mount_label, options=("ro",)))
    try:
        tree = _TreeFiles(root)
        try:
            yield tree
        finally:
            tree.close()
    finally:
        store.driver.put(layer.id)


def _verify_layer_content(store: "Store", layer: "Layer", ts_path: str) -> list[Problem]:
    """Each file of the tar-split against the layer (size, CRC-64), then the rebuilt diff's digest and size."""
    from .tarsplit import FILE_TYPE, SEGMENT_TYPE, read_tar_split

    id = layer.id
    problems: list[Problem] = []
    bad_files = 0
    digest = hashlib.sha256()
    total = 0
    try:
        with open(ts_path, "rb") as ts, _layer_files(store, layer) as open_file:
            for entry in read_tar_split(ts):
                if entry.type == SEGMENT_TYPE:
                    if entry.payload:
                        digest.update(entry.payload)
                        total += len(entry.payload)
                    continue
                if entry.type != FILE_TYPE or entry.size <= 0:
                    continue
                name = entry.path
                problem = None
                try:
                    with open_file(name) as handle:
                        left, crc = entry.size, 0
                        while left:
                            data = handle.read(min(left, _CHUNK))
                            if not data:
                                break
                            crc = crc64.update(data, crc)
                            digest.update(data)
                            total += len(data)
                            left -= len(data)
                        extra = len(handle.read(1)) if not left else 0
                    if left or extra:
                        actual = entry.size - left if left else f"more than {entry.size}"
                        problem = Problem("layer-content-size",
                                          f'layer {id}: file "{name}" is {actual} bytes, {entry.size} recorded: '
                                          f"{ERR_LAYER_INCORRECT_SIZE}", name)
                    elif entry.payload is not None and crc64.digest(crc) != entry.payload:
                        problem = Problem("layer-content-digest",
                                          f'layer {id}: file integrity checksum failed for "{name}": '
                                          f"{ERR_LAYER_INCORRECT_DIGEST}", name)
                except OSError as exc:
                    why = "does not exist" if exc.errno in (errno.ENOENT, errno.ENOTDIR) else os.strerror(exc.errno or 0)
                    problem = Problem("layer-content-missing",
                                      f'layer {id}: file "{name}" {why}: {ERR_LAYER_CONTENT_MODIFIED}', name)
                if problem is not None:
                    bad_files += 1
                    if bad_files <= _MAX_FILE_PROBLEMS:
                        problems.append(problem)
    except (ArchiveError, OSError, LaminaError) as exc:
        return problems + [Problem("layer-content-unreadable",
                                   f"layer {id}: verifying content against {ts_path}: {exc}: "
                                   f"{ERR_LAYER_INCORRECT_DIGEST}", ts_path)]
    if bad_files > _MAX_FILE_PROBLEMS:
        problems.append(Problem("layer-content-digest",
                                f"layer {id}: {bad_files - _MAX_FILE_PROBLEMS} more files differ: "
                                f"{ERR_LAYER_INCORRECT_DIGEST}"))
    if not problems and layer.uncompressed_digest.startswith("sha256:"):
        if "sha256:" + digest.hexdigest() != layer.uncompressed_digest:
            problems.append(Problem("layer-content-digest", f"layer {id}: {ERR_LAYER_INCORRECT_DIGEST}", ts_path))
        elif layer.uncompressed_size > 0 and total != layer.uncompressed_size:
            problems.append(Problem("layer-content-size",
                                    f"layer {id}: read {total} bytes instead of {layer.uncompressed_size} bytes: "
                                    f"{ERR_LAYER_INCORRECT_SIZE}", ts_path))
    return problems


def _driver_data_problems(store: "Store", layer: "Layer") -> list[Problem]:
    """The driver holds the layer's data (and, for overlay, its upper and lower dirs exist)."""
    id = layer.id
    try:
        if not store.driver.exists(id):
            return [Problem("layer-driver-missing",
                            f"layer {id}: no data in the {store.driver_name} storage driver: {ERR_LAYER_MISSING}")]
        if store.driver_name == "overlay":
            meta = store.driver.metadata(id)
            dirs = [meta.get("UpperDir", "")] + [d for d in meta.get("LowerDir", "").split(":") if d]
            for path in dirs:
                if path and not os.path.isdir(path):
                    return [Problem("layer-driver-missing",
                                    f"layer {id}: {path} does not exist: {ERR_LAYER_MISSING}", path)]
    except (LaminaError, OSError) as exc:
        return [Problem("layer-driver-missing", f"layer {id}: {exc}: {ERR_LAYER_MISSING}")]
    return []


# ---------------------------------------------------------------- the check


def _raw_incomplete(store: "Store") -> list[str]:
    """IDs flagged incomplete in the layer files right now (read raw: loading would remove them)."""
    records = store.layer_store
    found: list[str] = []
    records.lock.rlock()
    try:
        for src in records.sources:
            try:
                with open(src.path, "rb") as f:
                    data = json.loads(f.read() or b"[]")
            except FileNotFoundError:
                continue
            except (ValueError, UnicodeDecodeError) as exc:
                _LOG.debug("check: %s unreadable while looking for incomplete layers: %s", src.path, exc)
                continue
            for rec in data if isinstance(data, list) else []:
                if isinstance(rec, dict) and isinstance(rec.get("flags"), dict) and rec["flags"].get("incomplete"):
                    found.append(str(rec.get("id", "")))
    finally:
        records.lock.unlock()
    return found


def check(store: "Store", options: CheckOptions | None = None) -> CheckReport:
    """Examine the store (shared locks only; the first load may finish interrupted deletions as any
    writer's load does) and return what is wrong."""
    options = options or CheckOptions()
    report = CheckReport()
    now = time.time()
    incomplete = _raw_incomplete(store)
    with store._access(layers="r", images="r", containers="r", graph=options.layer_digests):
        for id in incomplete:
            _add(report.layers, id, Problem("layer-incomplete",
                                            f"layer {id}: {ERR_LAYER_INCOMPLETE} (removed by the next load under a write lock)"))
        _check_layers(store, options, report)
        _check_images(store, options, report)
        referenced = _check_containers(store, options, report)
        _check_unreferenced(store, options, report, referenced, now)
        if options.orphans:
            for orphan in find_orphans(store, now):
                if orphan.kind == "driver-layer":
                    if options.max_age is None or orphan.age >= options.max_age:
                        _add(report.layers, orphan.owner, Problem(
                            "layer-unaccounted", f"layer {orphan.owner}: {ERR_LAYER_UNACCOUNTED}", orphan.path))
                elif orphan.age >= (options.max_age or 0.0):
                    report.orphans.append(orphan)
        if options.mounts:
            report.stale_mounts = find_stale_mounts(store)
    return report


def _check_layers(store: "Store", options: CheckOptions, report: CheckReport) -> None:
    seen: set[str] = set()
    stores = [(store.layer_store, True)] + [(ro, False) for ro in store.ro_layer_stores]
    for records, read_write in stores:
        table = report.layers if read_write else report.ro_layers
        desc = "" if read_write else "read-only "
        for layer in records.records:
            if layer.id in seen:
                continue
            seen.add(layer.id)
            report.layer_parents[layer.id] = layer.parent
            id = layer.id
            if options.layer_data:
                for name in layer.big_data_names:
                    try:
                        with open(records.big_data_path(id, name), "rb") as f:
                            while f.read(_CHUNK):
                                pass
                    except FileNotFoundError:
                        _add(table, id, Problem("layer-data-missing",
                                                f'{desc}layer {id}: data item "{name}": {ERR_LAYER_DATA_MISSING}'))
                    except (OSError, LaminaError) as exc:
                        _add(table, id, Problem("layer-data-unreadable", f'{desc}layer {id}: data item "{name}": {exc}'))
            if not read_write:
                continue
            driver_problems = _driver_data_problems(store, layer)
            for p in driver_problems:
                _add(table, id, p)
            ts_path = os.path.join(records.directory, f"{id}.tar-split.gz")
            has_ts = os.path.exists(ts_path)
            if layer.uncompressed_digest and not has_ts:
                _add(table, id, Problem("layer-tar-split-missing",
                                        f"layer {id}: tar-split {ts_path} is missing: {ERR_LAYER_INCORRECT_DIGEST}",
                                        ts_path))
            elif has_ts and options.layer_digests and not driver_problems:
                for p in _verify_layer_content(store, layer, ts_path):
                    _add(table, id, p)
    known = set(report.layer_parents)
    for id, parent in list(report.layer_parents.items()):
        if parent and parent not in known:
            _add(report.layers, id, Problem("layer-parent-missing", f"layer {parent}: {ERR_LAYER_MISSING}"))
    if store.driver_name == "overlay":
        # An overlay layer is mounted on its parents: a damaged parent damages every descendant.
        _propagate_to_descendants(report)


def _propagate_to_descendants(report: CheckReport) -> None:
    damaged = {i for i, ps in report.layers.items() if any(p.code != "layer-unaccounted" for p in ps)}
    for id in list(report.layer_parents):
        parent = report.layer_parents.get(id, "")
        chain: list[str] = []
        while parent and parent not in chain:
            chain.append(parent)
            if parent in damaged:
                _add(report.layers, id, Problem("layer-parent-damaged",
                                                f"layer {id}: parent layer {parent} is damaged: {ERR_LAYER_CONTENT_MODIFIED}"))
                break
            parent = report.layer_parents.get(parent, "")


def _data_problems(kind: str, desc: str, record: "Image | Container", path_of: Callable[[str, str], str],
                   missing: str, wrong_size: str) -> list[Problem]:
    """Big data of an image or container: present, readable, of the recorded size and digest."""
    out: list[Problem] = []
    id = record.id
    for key in record.big_data_names:
        path = ""
        try:
            path = path_of(id, key)
            size, digest = _sha256_file(path)
        except FileNotFoundError:
            out.append(Problem(f"{kind}-data-missing", f'{desc}{kind} {id}: data item "{key}": {missing}', path))
            continue
        except (OSError, LaminaError) as exc:
            out.append(Problem(f"{kind}-data-unreadable", f'{desc}{kind} {id}: data item "{key}": {exc}', path))
            continue
        if size != record.big_data_sizes.get(key, -1):
            out.append(Problem(f"{kind}-data-size", f'{desc}{kind} {id}: data item "{key}": {wrong_size}', path))
            continue
        recorded = record.big_data_digests.get(key, "")
        # A manifest's digest may be computed over a canonical form (signatures stripped): size only.
        if recorded.startswith("sha256:") and not key.startswith("manifest") and recorded != digest:
            out.append(Problem(f"{kind}-data-digest", f'{desc}{kind} {id}: data item "{key}": {kind} {ERR_DATA_DIGEST}',
                               path))
    return out


def _check_images(store: "Store", options: CheckOptions, report: CheckReport) -> None:
    seen: set[str] = set()
    for images, read_write in [(store.image_store, True)] + [(ro, False) for ro in store.ro_image_stores]:
        table = report.images if read_write else report.ro_images
        desc = "" if read_write else "read-only "
        for image in images.records:
            if image.id in seen:
                continue
            seen.add(image.id)
            if options.image_data:
                for p in _data_problems("image", desc, image, images.big_data_path, ERR_IMAGE_DATA_MISSING,
                                        ERR_IMAGE_DATA_SIZE):
                    _add(table, image.id, p)
            done: set[str] = set()
            for top in [image.top_layer, *image.mapped_top_layers]:
                layer = top
                while layer and layer not in done:
                    done.add(layer)
                    if layer not in report.layer_parents:
                        _add(table, image.id, Problem(
                            "image-layer-missing", f"{desc}image {image.id}: layer {layer}: {ERR_IMAGE_LAYER_MISSING}"))
                        break
                    for p in report.layers.get(layer, []) + report.ro_layers.get(layer, []):
                        if p.code != "layer-unreferenced":
                            _add(table, image.id, p)
                    layer = report.layer_parents.get(layer, "")


def _check_containers(store: "Store", options: CheckOptions, report: CheckReport) -> set[str]:
    """Returns the IDs of layers referenced by images (with their parents) or containers."""
    referenced: set[str] = set()
    for image in [*store.image_store.records, *(i for ro in store.ro_image_stores for i in ro.records)]:
        for top in [image.top_layer, *image.mapped_top_layers]:
            layer = top
            while layer and layer not in referenced:
                referenced.add(layer)
                layer = report.layer_parents.get(layer, "")
    known_images = {i.id for i in store.image_store.records} | {i.id for ro in store.ro_image_stores for i in ro.records}
    records = store.container_store
    for ctr in records.records:
        id = ctr.id
        if options.container_data:
            for p in _data_problems("container", "", ctr, records.big_data_path, ERR_CONTAINER_DATA_MISSING,
                                    ERR_CONTAINER_DATA_SIZE):
                _add(report.containers, id, p)
        if ctr.image:
            if ctr.image not in known_images:
                _add(report.containers, id, Problem("container-image-missing",
                                                    f"image {ctr.image}: {ERR_CONTAINER_IMAGE_MISSING}"))
            for p in report.images.get(ctr.image, []) + report.ro_images.get(ctr.image, []):
                _add(report.containers, id, p)
        if ctr.layer:
            referenced.add(ctr.layer)
            if ctr.layer not in report.layer_parents:
                _add(report.containers, id, Problem("container-layer-missing",
                                                    f"container {id}: layer {ctr.layer}: {ERR_LAYER_MISSING}"))
            else:
                for p in report.layers.get(ctr.layer, []):
                    _add(report.containers, id, p)
    return referenced


def _check_unreferenced(store: "Store", options: CheckOptions, report: CheckReport, referenced: set[str],
                        now: float) -> None:
    if options.max_age is None:
        return
    for layer in store.layer_store.records:
        if layer.id in referenced:
            continue
        age = _created_age(layer.created, now)
        if age is None or age >= options.max_age:
            _add(report.layers, layer.id, Problem("layer-unreferenced", f"layer {layer.id}: {ERR_LAYER_UNREFERENCED}"))


# ---------------------------------------------------------------- orphans


def _list(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _orphan(kind: str, path: str, owner: str, now: float) -> Orphan:
    return Orphan(kind, path, owner, _mtime_age(path, now))


def _temp_files(directory: str, now: float) -> list[Orphan]:
    return [_orphan("temp-file", os.path.join(directory, n), "", now) for n in _list(directory)
            if n.startswith(_TEMP_PREFIX)]


def _data_dir_orphans(directory: str, known: dict[str, Any], kind: str, now: float,
                      allowed: frozenset[str] = frozenset()) -> list[Orphan]:
    """Per-record big-data directories under *directory*: unknown ones, and unknown files in known ones."""
    out: list[Orphan] = []
    for name in _list(directory):
        path = os.path.join(directory, name)
        if not os.path.isdir(path) or os.path.islink(path) or not _ID_RE.match(name):
            continue
        record = known.get(name)
        if record is None:
            out.append(_orphan(kind, path, name, now))
            continue
        expected = set(allowed)
        for key in record.big_data_names:
            try:
                expected.add(big_data_file_name(key))
            except LaminaError:
                continue
        for entry in _list(path):
            if entry not in expected:
                out.append(_orphan("temp-file" if entry.startswith(_TEMP_PREFIX) else kind,
                                   os.path.join(path, entry), name, now))
    return out


def find_orphans(store: "Store", now: float | None = None) -> list[Orphan]:
    """Everything on disk that no record owns (call with the stores locked)."""
    now = time.time() if now is None else now
    out: list[Orphan] = []
    layers = store.layer_store
    known_layers: dict[str, Any] = dict(layers.by_id)
    for ro in store.ro_layer_stores:
        for layer in ro.records:
            known_layers.setdefault(layer.id, layer)
    # <drv>-layers: tar-splits, layer big data, temp files
    layer_dirs = [layers.directory]
    if store.image_store_dir:
        layer_dirs.append(os.path.join(store.image_store_dir, f"{store.driver_name}-layers"))
    for directory in layer_dirs:
        out.extend(_temp_files(directory, now))
        for name in _list(directory):
            if name.endswith(".tar-split.gz") and _ID_RE.match(name[:-len(".tar-split.gz")]):
                id = name[:-len(".tar-split.gz")]
                if id not in known_layers:
                    out.append(_orphan("tar-split", os.path.join(directory, name), id, now))
        out.extend(_data_dir_orphans(directory, known_layers, "layer-data", now))
    # run root: mountpoints.json temp files
    if layers.mounts_path:
        out.extend(_temp_files(os.path.dirname(layers.mounts_path), now))
    # <drv>-images
    images = store.image_store
    out.extend(_temp_files(images.directory, now))
    out.extend(_data_dir_orphans(images.directory, images.by_id, "image-data", now))
    # <drv>-containers (graph root or, transient, run root) and the run root's per-container dirs
    ctrs = store.container_store
    out.extend(_temp_files(ctrs.directory, now))
    out.extend(_data_dir_orphans(ctrs.directory, ctrs.by_id, "container-data", now, frozenset({"userdata"})))
    run_ctr_dir = os.path.join(store.run_root, f"{store.driver_name}-containers")
    if os.path.abspath(run_ctr_dir) != os.path.abspath(ctrs.directory):
        for name in _list(run_ctr_dir):
            if _ID_RE.match(name) and name not in ctrs.by_id:
                out.append(_orphan("container-run-dir", os.path.join(run_ctr_dir, name), name, now))
    out.extend(_driver_orphans(store, known_layers, now))
    return out


def _driver_orphans(store: "Store", known: dict[str, Any], now: float) -> list[Orphan]:
    """Driver data without a layer record, for the layouts lamina knows (vfs, overlay, btrfs)."""
    home = store.driver.home
    name = store.driver_name
    out: list[Orphan] = []
    if name == "vfs":
        base = os.path.join(home, "dir")
        for entry in _list(base):
            path = os.path.join(base, entry)
            if entry.endswith(".creating"):
                out.append(_orphan("driver-staging", path, entry[:-len(".creating")], now))
            elif entry not in known and os.path.isdir(path):
                out.append(_orphan("driver-layer", path, entry, now))
    elif name == "overlay":
        link_dir = os.path.join(home, "l")
        skip = {"l", "staging", "tempdirs"}
        for entry in _list(home):
            path = os.path.join(home, entry)
            if entry in skip or not os.path.isdir(path) or os.path.islink(path):
                continue
            if entry in known:
                out.extend(_orphan("temp-file", os.path.join(path, f), entry, now) for f in _list(path)
                           if ".tmp-" in f)
            elif entry.startswith(("compat", "opaque-bug-check", "metacopy-check", "volatile-check")) \
                    and not _ID_RE.match(entry):
                out.append(_orphan("driver-scratch", path, "", now))
            else:
                out.append(_orphan("driver-layer", path, entry, now))
        for entry in _list(link_dir):
            path = os.path.join(link_dir, entry)
            try:
                target = os.readlink(path)
            except OSError:
                continue
            if not os.path.isdir(os.path.join(link_dir, target)):
                parts = target.split("/")
                owner = parts[1] if len(parts) == 3 and parts[0] == ".." else ""
                out.append(_orphan("overlay-link", path, owner, now))
    elif name == "btrfs":
        base = os.path.join(home, "subvolumes")
        for entry in _list(base):
            path = os.path.join(base, entry)
            if entry not in known and os.path.isdir(path):
                out.append(_orphan("driver-layer", path, entry, now))
        qdir = os.path.join(home, "quotas")
        for entry in _list(qdir):
            if entry not in known and not os.path.isdir(os.path.join(base, entry)):
                out.append(_orphan("quota-file", os.path.join(qdir, entry), entry, now))
    return out


# ---------------------------------------------------------------- mounts


_MOUNTING_DRIVERS = frozenset({"overlay"})


def _mounted_paths() -> set[str]:
    paths: set[str] = set()
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if len(fields) > 4:
                paths.add(fields[4].decode("utf-8", "surrogateescape").replace("\\040", " "))
    return paths


def find_stale_mounts(store: "Store") -> list[StaleMount]:
    """mountpoints.json entries whose layer is gone or (mounting drivers) whose path is not mounted."""
    layers = store.layer_store
    if layers.mounts_path is None or layers.mounts_lock is None:
        return []
    with layers.mounts_lock.read_locked():
        try:
            with open(layers.mounts_path, "rb") as f:
                entries = json.loads(f.read() or b"[]")
        except FileNotFoundError:
            return []
        except (ValueError, UnicodeDecodeError) as exc:
            return [StaleMount("", layers.mounts_path, 0, f"unreadable: {exc}")]
    if not isinstance(entries, list):
        return [StaleMount("", layers.mounts_path, 0, "unreadable: not a JSON array")]
    mounted = _mounted_paths() if store.driver_name in _MOUNTING_DRIVERS else set()
    out: list[StaleMount] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        id, path, count = str(entry.get("id", "")), str(entry.get("path", "")), entry.get("count", 0)
        if not isinstance(count, int) or count <= 0:
            continue
        if id not in layers.by_id:
            out.append(StaleMount(id, path, count, "layer-unknown"))
        elif store.driver_name in _MOUNTING_DRIVERS and path not in mounted:
            out.append(StaleMount(id, path, count, "not-mounted"))
    return out


# ---------------------------------------------------------------- repair


def _remove_orphan(store: "Store", orphan: Orphan) -> RepairAction:
    """Remove one orphan: driver data through the driver (it knows subvolumes and short links)."""
    try:
        if orphan.kind == "driver-layer" and orphan.owner:
            store.driver.remove(orphan.owner)
        remove_tree(orphan.path)
    except (OSError, LaminaError) as exc:
        return RepairAction("remove-orphan", orphan.path, False, str(exc))
    return RepairAction("remove-orphan", orphan.path, True)


def _layer_depth(report: CheckReport, id: str) -> int:
    depth, parent, seen = 0, report.layer_parents.get(id, ""), set()
    while parent and parent not in seen:
        seen.add(parent)
        depth += 1
        parent = report.layer_parents.get(parent, "")
    return depth


def repair(store: "Store", report: CheckReport, remove_containers: bool = False) -> list[RepairAction]:
    """Remove what *report* found damaged, through the Store API; returns one action per attempt.

    Order as containers/storage: damaged containers (only with *remove_containers*), damaged
    images (with the layers only they used; refused while a container uses them), damaged and
    unreferenced layers (deepest first), driver data no record owns; then lamina's orphans and
    stale mount counts. Read-only stores are never touched.
    """
    actions: list[RepairAction] = []
    if remove_containers:
        for id in list(report.containers):
            try:
                store.delete_container(id)
                actions.append(RepairAction("delete-container", id, True))
            except NotKnown:
                continue
            except (LaminaError, OSError) as exc:
                actions.append(RepairAction("delete-container", id, False, str(exc)))
    deleted_layers: set[str] = set()
    for id in list(report.images):
        try:
            removed = store.delete_image(id, commit=True)
            deleted_layers.update(removed)
            actions.append(RepairAction("delete-image", id, True, removed_layers=tuple(removed)))
        except NotKnown:
            continue
        except (LaminaError, OSError) as exc:
            actions.append(RepairAction("delete-image", id, False, str(exc)))
    known = [i for i, ps in report.layers.items() if any(p.code != "layer-unaccounted" for p in ps)]
    unaccounted = [i for i, ps in report.layers.items() if i not in known]
    known.sort(key=lambda i: -_layer_depth(report, i))
    for id in known:
        if id in deleted_layers:
            continue
        if all(p.code == "layer-incomplete" for p in report.layers[id]):
            continue  # finished by the write-locked load below
        try:
            with contextlib.suppress(NotKnown):
                store.unmount(id, force=True)
            store.delete_layer(id)
            actions.append(RepairAction("delete-layer", id, True))
        except NotKnown:
            continue
        except (LaminaError, OSError) as exc:
            actions.append(RepairAction("delete-layer", id, False, str(exc)))
    with store._access(layers="w", images="w", containers="w", graph=True):
        for id in report.incomplete_layers:
            if id not in store.layer_store.by_id:
                actions.append(RepairAction("remove-incomplete-layer", id, True))
        current = {o.path: o for o in find_orphans(store)}
        for id in unaccounted:
            for p in report.layers[id]:
                orphan = current.get(p.path)
                if orphan is not None and orphan.owner not in store.layer_store.by_id:
                    result = _remove_orphan(store, orphan)
                    actions.append(RepairAction("remove-driver-layer", id, result.ok, result.error))
        for orphan in report.orphans:
            if orphan.path in current:
                actions.append(_remove_orphan(store, current[orphan.path]))
        if report.stale_mounts:
            actions.extend(_reset_mounts(store, report.stale_mounts))
    return actions


def _reset_mounts(store: "Store", stale: list[StaleMount]) -> list[RepairAction]:
    layers = store.layer_store
    actions: list[RepairAction] = []
    with layers.mounts_locked():
        for entry in stale:
            layer = layers.by_id.get(entry.layer)
            if layer is not None and entry.reason == "not-mounted":
                layer.mount_count, layer.mount_point = 0, ""
            actions.append(RepairAction("reset-mount", entry.layer or entry.path, True))
        layers.save_mounts()  # entries of unknown layers are not written back
    return actions


def garbage_collect(store: "Store", max_age: float = 0.0) -> list[RepairAction]:
    """Remove what cancelled creates left on disk without a record (orphans at least *max_age*
    seconds old, default all), under exclusive locks on every store; returns one action each."""
    actions: list[RepairAction] = []
    with store._access(layers="w", images="w", containers="w", graph=True):
        for orphan in find_orphans(store):
            if orphan.age < max_age:
                continue
            actions.append(_remove_orphan(store, orphan))
        stale = [m for m in find_stale_mounts(store) if m.reason == "layer-unknown"]
        if stale:
            actions.extend(_reset_mounts(store, stale))
    return actions


# ---------------------------------------------------------------- crash recovery: intents
#
# Operations that change more than one file (a big-data file and its record, an image record and
# the layers deleted with it, a container record and its layer) first write an *intent*: a small
# JSON file in <graphroot>/<driver>-intents/ naming what they are about to do. It is removed when
# the operation ends. An intent still present when a store is opened belongs to a process that
# died in the middle: opening the store (under every store's write lock, so no live process can
# be in the middle of anything) completes or undoes that operation, whichever the records show
# it had reached, and removes the temp files of interrupted atomic writes.

@contextlib.contextmanager
def intent(store: "Store", op: str, **fields: Any) -> Iterator[None]:
    """Record that *op* is under way (called with the locks its operation needs held).

    If the block raises, the operation is recovered at once, as a crash would be on the next
    open, so a failure half-way (disk full while saving the record) leaves no inconsistency.
    """
    directory = store.intents_dir
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, f"{op}-{os.getpid()}-{os.urandom(6).hex()}.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps({"op": op, **fields}).encode("utf-8"))
    finally:
        os.close(fd)
    try:
        yield
    except BaseException:
        try:
            _recover_one(store, {"op": op, **fields})
        except (OSError, LaminaError, ValueError, KeyError, TypeError) as exc:
            _LOG.warning("recovering the failed %s failed too (%s); %s stays for the next open", op, exc, path)
        else:
            _unlink_quietly(path)
        raise
    _unlink_quietly(path)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        _LOG.debug("%s was already gone", path)


def _layer_in_use(store: "Store", layer_id: str) -> bool:
    if any(l.parent == layer_id for l in store.layer_store.records):
        return True
    if any(i.top_layer == layer_id or layer_id in i.mapped_top_layers for i in store.image_store.records):
        return True
    return any(c.layer == layer_id for c in store.container_store.records)


def _recover_one(store: "Store", it: dict[str, Any]) -> None:
    """Complete or undo one interrupted operation (all stores write-locked and loaded)."""
    op = it["op"]
    layers, images, ctrs = store.layer_store, store.image_store, store.container_store
    if op == "set-big-data":
        records = {"layer": layers, "image": images, "container": ctrs}[it["kind"]]
        id, key = str(it["id"]), str(it["key"])
        directory = records.big_data_dir(id)
        fname = big_data_file_name(key)
        for name in _list(directory):
            if name.startswith(_TEMP_PREFIX + fname):
                _unlink_quietly(os.path.join(directory, name))
        record = records.by_id.get(id)
        if record is None:
            return
        try:
            size, sha = _sha256_file(os.path.join(directory, fname))
        except FileNotFoundError:
            return
        if size != it["size"] or sha != it["sha256"]:
            return  # the new data never landed: the record still describes what is there
        changed = False
        if key not in record.big_data_names:
            record.big_data_names = [*record.big_data_names, key]
            changed = True
        if it["kind"] != "layer":
            if record.big_data_sizes.get(key) != size or record.big_data_digests.get(key) != it["digest"]:
                record.big_data_sizes = {**record.big_data_sizes, key: size}
                record.big_data_digests = {**record.big_data_digests, key: it["digest"]}
                changed = True
            if it["kind"] == "image":
                if key.startswith("manifest") and not record.digest:
                    record.digest = it["digest"]
                    changed = True
                record.recompute_digests()
        if changed:
            records.save()
    elif op == "delete-image":
        id = str(it["id"])
        if id in images.by_id:
            return  # the image record was never removed: nothing happened
        remove_tree(images.big_data_dir(id))
        for layer_id in it.get("layers", []):
            layer = layers.by_id.get(layer_id)
            if layer is None:
                continue
            if _layer_in_use(store, layer_id):
                break
            store._delete_layer_locked(layer)
    elif op in ("create-container", "delete-container"):
        id, layer_id = str(it["id"]), str(it["layer"])
        ctr = ctrs.by_id.get(id)
        layer = layers.by_id.get(layer_id)
        if ctr is not None:
            if op == "create-container" or layer is not None:
                return  # created completely, or its deletion never started
            ctrs.discard(ctr)  # its layer is already gone: finish deleting it
            ctrs.save()
        if layer is not None and not _layer_in_use(store, layer_id):
            store._delete_layer_locked(layer)
        for path in store._container_dirs(id):
            remove_tree(path)
    else:
        raise ValueError(f"unknown intent {op!r}")


def _sweep_temp_files(directory: str) -> list[str]:
    """Remove the ``.tmp-*`` files of interrupted atomic writes in *directory* (its lock held)."""
    done = []
    for orphan in _temp_files(directory, 0.0):
        if os.path.isdir(orphan.path) and not os.path.islink(orphan.path):
            continue
        _unlink_quietly(orphan.path)
        done.append(f"removed {orphan.path}")
    return done


def recover_interrupted(store: "Store") -> list[str]:
    """Finish or undo what dead processes left half done, and remove their temp files.

    Called when a store is opened (with the graph lock held); takes every store's write lock.
    Returns a description of each thing done.
    """
    done: list[str] = []
    directory = store.intents_dir
    with store._access(layers="w", images="w", containers="w"):
        pending = []
        for name in _list(directory):
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as f:
                    pending.append((os.stat(path).st_mtime_ns, path, json.loads(f.read())))
            except (ValueError, UnicodeDecodeError):
                _unlink_quietly(path)  # cut short while being written: its operation never began
                done.append(f"removed unreadable intent {path}")
        for _, path, it in sorted(pending, key=lambda p: p[0]):
            if not isinstance(it, dict) or "op" not in it:
                _unlink_quietly(path)
                continue
            try:
                _recover_one(store, it)
            except (OSError, LaminaError, ValueError, KeyError, TypeError) as exc:
                # Opening the store must not fail because of this: keep the intent for the next open.
                _LOG.warning("could not recover interrupted %s (%s): %s; will retry", it.get("op"), path, exc)
                done.append(f"could not recover {path}: {exc}")
                continue
            _unlink_quietly(path)
            done.append(f"recovered interrupted {it['op']} ({path})")
        layers = store.layer_store
        mounts_dir = os.path.dirname(layers.mounts_path) if layers.mounts_path is not None else None
        for d in store.temp_file_dirs():
            if d != mounts_dir:
                done.extend(_sweep_temp_files(d))
        if mounts_dir is not None and layers.mounts_lock is not None:
            with layers.mounts_lock.locked():
                done.extend(_sweep_temp_files(mounts_dir))
    for line in done:
        _LOG.info("%s", line)
    return done
