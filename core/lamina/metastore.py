"""The JSON-backed record stores (layers, images, containers) and the one mechanism that guards them.

Every access goes through :meth:`RecordStore.access`: take the store's lock (shared to read,
exclusive to write), reload from disk if another process changed it, run the caller's code, and
release. Writers call :meth:`RecordStore.save`, which rewrites the JSON atomically and touches
the lock's last-writer token so other processes (lamina or Go) reload.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import threading
from typing import Any, Callable, Generic, Iterator, TypeVar

from .atomicio import go_json_dumps, write_file_atomic, write_json_atomic
from .errors import (
    BigDataUnknown,
    ContainerUnknown,
    DuplicateID,
    DuplicateName,
    ImageUnknown,
    InvalidBigDataName,
    LayerUnknown,
    NotKnown,
    StoreCorrupt,
    StoreIsReadOnly,
)
from .lockfile import LockFile
from .records import Container, Image, Layer, RecordError

R = TypeVar("R", Layer, Image, Container)

_SIMPLE_KEY = re.compile(r"^[.0-9a-z]+$")


def big_data_file_name(key: str) -> str:
    """containers/storage's file name for a big-data key: the key itself if it is only
    ``[.0-9a-z]``, else ``=`` + standard base64 of the key."""
    if not key:
        raise InvalidBigDataName()
    if _SIMPLE_KEY.match(key) and key not in (".", ".."):
        return key
    try:
        raw = key.encode("utf-8", "surrogateescape")  # undecodable bytes (from argv) map back to themselves
    except UnicodeEncodeError:
        # other lone surrogates (a JSON \ud800 escape): Go's decoder reads them as U+FFFD
        raw = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in key).encode("utf-8")
    name = "=" + base64.b64encode(raw).decode("ascii")
    if "/" in name:
        # containers/storage names the file the same way and then fails to write it
        raise InvalidBigDataName(f"big data key {key!r} cannot be stored: its file name {name!r} contains '/'")
    return name


def valid_id(id: str) -> bool:
    """Whether *id* can name files under the store: IDs become directory and file names
    (big data, tar-split, container dirs), so "", ".", "..", "/" and NUL are refused."""
    return bool(id) and id not in (".", "..") and "/" not in id and "\0" not in id


def _exact_number(text: str) -> Any:
    """A non-integral JSON number as a Decimal, which keeps its text so it is written back exactly."""
    import decimal  # rare in store files: not imported at start-up

    return decimal.Decimal(text)


def new_id() -> str:
    """A random 64-hex ID."""
    return os.urandom(32).hex()


def dedupe(names: list[str] | tuple[str, ...]) -> list[str]:
    """*names* without repeats, first occurrence kept."""
    seen: set[str] = set()
    out: list[str] = []
    for n in names:
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def _get_lock(path: str, read_only: bool) -> LockFile:
    """The process's LockFile for *path*; a read-only store reuses a read-write one already open
    in this process (it only ever takes read locks on it)."""
    from .lockfile import LockModeMismatch

    try:
        return LockFile.get(path, read_only=read_only)
    except LockModeMismatch:
        if not read_only:
            raise
        return LockFile.get(path, read_only=False)


_VERIFY_CACHE = os.environ.get("LAMINA_VERIFY_RECORD_CACHE") == "1"
_SUSPECT = ("<", ">", "&", "\u2028", "\u2029", "\\b", "\\f")
_PLAIN = (str, int, bool, type(None))


def _plain(value: Any) -> bool:
    """No floats, Decimals or other values whose JSON form Python's encoder writes unlike Go's."""
    if type(value) in _PLAIN:
        return True
    if isinstance(value, dict):
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return False


def records_json(records: list[Any]) -> bytes:
    """The bytes of a metadata file holding *records*, exactly as Go's json.Marshal writes them.

    Uses each record's cached JSON object and the C encoder; falls back to the exact (slower)
    encoder when a value or character needs Go's own formatting.
    """
    objs = []
    plain = True
    for r in records:
        obj = r.json_object()
        if _VERIFY_CACHE and obj != r.to_json():
            raise AssertionError(f"stale JSON cache for {type(r).__name__} {r.id}: a stored field was "
                                 "changed in place instead of being replaced")
        if plain and (r.flags or r.extra) and not _plain(obj):
            plain = False
        objs.append(obj)
    if plain:
        text = json.dumps(objs, ensure_ascii=False, separators=(",", ":"))
        if not any(c in text for c in _SUSPECT):
            try:
                return text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: let the exact encoder replace it
                pass
    return go_json_dumps(objs).encode("utf-8")


class MultiLock:
    """Several lock files acting as one, taken in list order (1.62's layer store with a separate
    image store guards layers.json in both roots this way)."""

    def __init__(self, locks: list[LockFile]) -> None:
        self.locks = locks

    def lock(self) -> None:
        self._acquire(write=True)

    def rlock(self) -> None:
        self._acquire(write=False)

    def _acquire(self, write: bool) -> None:
        taken: list[LockFile] = []
        try:
            for lf in self.locks:
                (lf.lock if write else lf.rlock)()
                taken.append(lf)
        except BaseException:
            for lf in reversed(taken):
                lf.unlock()
            raise

    def unlock(self) -> None:
        for lf in reversed(self.locks):
            lf.unlock()

    def modified(self) -> bool:
        return any([lf.modified() for lf in self.locks])  # evaluate all: each remembers its token

    def touch(self) -> None:
        for lf in self.locks:
            lf.touch()

    def assert_locked_for_write(self) -> None:
        for lf in self.locks:
            lf.assert_locked_for_write()


class NeedsWriteLock(Exception):
    """Internal: loading found something only a writer may fix (incomplete records, duplicate names)."""


#: Where a record lives (containers/storage 1.62's layer locations): the store's main file, the
#: separate image store's file, or the volatile file.
STABLE, IMAGE_STORE, VOLATILE = "stable", "image", "volatile"


class Source:
    """One JSON file of a record store; records loaded from it are saved back to it."""

    def __init__(self, path: str, location: str, write_when_empty: bool) -> None:
        self.path = path
        self.location = location
        self.write_when_empty = write_when_empty


class _Written:
    """A source file's bytes as last read or written, the records (and JSON objects) they hold,
    and marks: ``(n, end)`` pairs where ``data[:end]`` is the array up to the end of its n-th
    record, so that a save may keep those bytes when those records are unchanged."""

    __slots__ = ("data", "records", "raws", "marks")

    def __init__(self, data: bytes, records: list[Any], raws: list[dict[str, Any]],
                 marks: list[tuple[int, int]]) -> None:
        self.data = data
        self.records = records
        self.raws = raws
        self.marks = marks

    @classmethod
    def read(cls, data: bytes, records: list[Any], raws: list[dict[str, Any]]) -> "_Written":
        """A file as read: its one usable mark is the end of the array, when it is one."""
        body = data.rstrip()
        marks = [(len(records), len(body) - 1)] if body.endswith(b"]") and records else []
        return cls(data, records, raws, marks)


class RecordStore(Generic[R]):
    """Records of one kind kept in JSON files under one lock.

    Not thread-safe by itself beyond what :meth:`access` gives: call everything inside
    ``with store.access(write=...)``.
    """

    kind = "record"
    record_type: type
    unknown: type[NotKnown] = NotKnown

    def __init__(self, directory: str, sources: list[Source], lock_path: str | list[str], *,
                 read_only: bool = False) -> None:
        self.directory = directory
        self.sources = sources
        self.read_only = read_only
        if not read_only:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        paths = [lock_path] if isinstance(lock_path, str) else list(lock_path)
        self.lock: LockFile | MultiLock = (
            _get_lock(paths[0], read_only) if len(paths) == 1 else MultiLock([_get_lock(p, read_only) for p in paths])
        )
        self.records: list[R] = []
        self.by_id: dict[str, R] = {}
        self.by_name: dict[str, R] = {}
        self._mtimes: tuple[int, ...] = ()
        self._written: dict[str, _Written] = {}
        self._loaded = False
        self._load_mutex = threading.Lock()

    # ---------------------------------------------------------------- the access mechanism

    @contextlib.contextmanager
    def access(self, write: bool = False) -> Iterator["RecordStore[R]"]:
        """Hold the lock (exclusive if *write*) with the in-memory records fresh from disk.

        A reader that finds something only a writer may repair (an incomplete layer, duplicate
        names) retries as a writer, so callers always see a consistent, repaired store.
        """
        if write and self.read_only:
            raise StoreIsReadOnly(f"{self.kind} store at {self.directory} is read-only")
        write_held = write
        (self.lock.lock if write_held else self.lock.rlock)()
        try:
            try:
                self.reload_if_changed(locked_for_write=write_held)
            except NeedsWriteLock:
                self.lock.unlock()
                write_held = True
                try:
                    self.lock.lock()
                except BaseException:
                    write_held = False
                    raise
                self.reload_if_changed(locked_for_write=True, force=True)
            yield self
        finally:
            if write_held or not write:
                self.lock.unlock()

    def _file_mtimes(self) -> tuple[int, ...]:
        out = []
        for src in self.sources:
            try:
                out.append(os.stat(src.path).st_mtime_ns)
            except FileNotFoundError:
                out.append(-1)
        return out and tuple(out) or ()

    def changed_on_disk(self) -> bool:
        """Whether another writer touched the lock since our last look (or the files' mtimes moved)."""
        modified = self.lock.modified()
        return modified or self._file_mtimes() != self._mtimes

    def reload_if_changed(self, *, locked_for_write: bool, force: bool = False) -> None:
        with self._load_mutex:
            # Always ask: modified() also remembers the current last-writer token, so the load
            # below is not repeated by the next access.
            changed = self.changed_on_disk()
            if force or not self._loaded or changed:
                self.load(locked_for_write=locked_for_write)

    def load(self, *, locked_for_write: bool) -> None:
        """Read every source; repair what needs repair when *locked_for_write*, else raise NeedsWriteLock."""
        records: list[R] = []
        mtimes = self._file_mtimes()
        from_stored = self.record_type.from_stored
        written: dict[str, _Written] = {}
        for src in self.sources:
            location = src.location
            text, raws = self._read_source(src)
            first = len(records)
            for raw in raws:
                try:
                    record = from_stored(raw, location)
                except (RecordError, KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise StoreCorrupt(f"{src.path}: bad {self.kind} record: {exc}") from exc
                if not valid_id(record.id):
                    raise StoreCorrupt(f"{src.path}: bad {self.kind} record: ID {record.id!r} is not a valid file name")
                records.append(record)
            if text is not None:
                written[src.path] = _Written.read(text, records[first:], raws)
        if self.read_only:
            for record in records:
                if hasattr(record, "read_only"):
                    object.__setattr__(record, "read_only", True)  # runtime state: the JSON cache stays
        self._install(records)
        self._written = written
        self._mtimes = mtimes
        self._loaded = True
        needs_save = self.after_load(locked_for_write=locked_for_write)
        if needs_save:
            self.save()

    def _read_source(self, src: Source) -> tuple[bytes | None, list[dict[str, Any]]]:
        """(the file's bytes, or None when there is no file or it holds nothing; its records)."""
        try:
            with open(src.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None, []
        if not data.strip():
            return None, []
        try:
            parsed = json.loads(data, parse_float=_exact_number)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreCorrupt(f"{src.path}: not valid JSON: {exc}") from exc
        if parsed is None:
            return None, []
        if not isinstance(parsed, list) or not all(isinstance(x, dict) for x in parsed):
            raise StoreCorrupt(f"{src.path}: expected a JSON array of objects")
        return data, parsed

    def _install(self, records: list[R]) -> None:
        by_id: dict[str, R] = {}
        unique: list[R] = []
        for r in records:
            if r.id in by_id:
                # A duplicated ID: keep the first record (as a Go map insert of a later one would
                # shadow it, but the list keeps both; we prefer not to double-count).
                continue
            by_id[r.id] = r
            unique.append(r)
        self.records = unique
        self.by_id = by_id
        self.by_name = {}
        self._duplicate_names = False
        for r in unique:
            for n in r.names:
                if n in self.by_name and self.by_name[n] is not r:
                    self._duplicate_names = True
                self.by_name[n] = r

    def after_load(self, *, locked_for_write: bool) -> bool:
        """Repairs after loading; returns True if the store must be saved. Subclasses extend."""
        if not self._duplicate_names:
            return False
        if not locked_for_write or self.read_only:
            if self.read_only:
                return False
            raise NeedsWriteLock()
        # The last record to claim a name keeps it (containers/storage's rule).
        for name, owner in self.by_name.items():
            for r in self.records:
                if r is not owner and name in r.names:
                    r.names = [n for n in r.names if n != name]
        self._duplicate_names = False
        return True

    def save(self) -> None:
        """Write every source atomically, then touch the lock (needs the write lock)."""
        if self.read_only:
            raise StoreIsReadOnly(f"{self.kind} store at {self.directory} is read-only")
        self.lock.assert_locked_for_write()
        for src in self.sources:
            mine = [r for r in self.records if r.location == src.location]
            if not mine and not src.write_when_empty and not os.path.exists(src.path):
                continue
            os.makedirs(os.path.dirname(src.path), mode=0o700, exist_ok=True)
            data, marks = self._source_bytes(src, mine)
            write_file_atomic(src.path, data, 0o600)
            self._written[src.path] = _Written(data, mine, [r.json_object() for r in mine], marks)
        self.lock.touch()
        self._mtimes = self._file_mtimes()

    def _source_bytes(self, src: Source, records: list[R]) -> tuple[bytes, list[tuple[int, int]]]:
        """The bytes of *src* holding *records*, and their marks (see :class:`_Written`)."""
        data, marks = self._spliced_bytes(src, records)
        if _VERIFY_CACHE:
            full = records_json(records)
            if data != full and json.loads(data) != json.loads(full):
                raise AssertionError(f"{src.path}: the kept bytes of unchanged records do not hold them")
        return data, marks

    def _spliced_bytes(self, src: Source, records: list[R]) -> tuple[bytes, list[tuple[int, int]]]:
        """The bytes of *src* holding *records*, keeping what it can of the file as last read or written.

        Where the file's first n records are the first n of *records*, unchanged (same objects,
        JSON caches untouched), and a mark says where they end, those bytes are kept and only
        the rest is encoded: adding a layer to thousands (and then clearing its incomplete
        flag) costs one record's encoding, not all of them.
        """
        last = self._written.get(src.path)
        unchanged = 0
        if last is not None:
            for r, old, raw in zip(records, last.records, last.raws):
                if r is not old or r.__dict__.get("_cache") is not raw:
                    break
                unchanged += 1
        mark = max((m for m in last.marks if m[0] <= unchanged), default=None) if last is not None else None
        if mark is None or mark[0] == 0:
            data = records_json(records)
            return data, [(len(records), len(data) - 1)] if records else []
        kept, end = mark
        assert last is not None
        head = last.data[:end]
        rest = records[kept:]
        data = head + (b"," + records_json(rest)[1:-1] if rest else b"") + b"]"
        return data, [(kept, end), (len(records), len(data) - 1)]

    # ---------------------------------------------------------------- lookups

    def lookup(self, key: str) -> R | None:
        """By full ID, then by name, then by unique ID prefix (containers/storage's order)."""
        if not key:
            return None
        found = self.by_id.get(key) or self.by_name.get(key)
        if found is not None:
            return found
        matches = [r for r in self.records if r.id.startswith(key)]
        return matches[0] if len(matches) == 1 else None

    def get(self, key: str) -> R:
        found = self.lookup(key)
        if found is None:
            raise self.unknown(key)
        return found

    # ---------------------------------------------------------------- shared mutations

    def unused_id(self) -> str:
        """A random 64-hex ID that no record of this store has."""
        id = new_id()
        while id in self.by_id:
            id = new_id()
        return id

    def check_new(self, id: str, names: list[str]) -> None:
        """Raise DuplicateID / DuplicateName if *id* or any of *names* is taken (ValueError if *id* is not valid)."""
        if not valid_id(id):
            raise ValueError(f"invalid {self.kind} ID {id!r}: IDs name files, so they may not be empty, '.', '..' "
                             "or contain '/' or NUL")
        if id in self.by_id:
            raise DuplicateID(id)
        for name in names:
            other = self.by_name.get(name)
            if other is not None:
                raise DuplicateName(
                    f"{self.kind} name {name!r} is already associated with {self.kind} {other.id!r}: "
                    "that name is already in use"
                )

    def add(self, record: R) -> None:
        self.records.append(record)
        self.by_id[record.id] = record
        for n in record.names:
            self.by_name[n] = record

    def discard(self, record: R) -> None:
        self.records = [r for r in self.records if r is not record]
        self.by_id.pop(record.id, None)
        for n in record.names:
            if self.by_name.get(n) is record:
                del self.by_name[n]

    def update_names(self, key: str, names: list[str], op: str) -> R:
        """Set, add or remove names (op ``set``/``add``/``remove``); names move from other records."""
        record = self.get(key)
        old = list(record.names)
        if op == "set":
            new = dedupe(names)
        elif op == "add":
            new = dedupe(old + list(names))
        elif op == "remove":
            new = [n for n in old if n not in set(names)]
        else:
            raise ValueError(f"unknown name operation {op!r}")
        for n in old:
            if self.by_name.get(n) is record:
                del self.by_name[n]
        for n in new:
            other = self.by_name.get(n)
            if other is not None and other is not record:
                other.names = [x for x in other.names if x != n]
            self.by_name[n] = record
        record.names = new
        self.names_changed(record, new, op)
        self.save()
        return record

    def names_changed(self, record: R, names: list[str], op: str) -> None:
        """Hook for kinds that keep a names history."""

    # ---------------------------------------------------------------- big data files

    def big_data_dir(self, id: str) -> str:
        return os.path.join(self.directory, id)

    def big_data_path(self, id: str, key: str) -> str:
        return os.path.join(self.big_data_dir(id), big_data_file_name(key))

    def read_big_data(self, record: R, key: str) -> bytes:
        if key not in record.big_data_names:
            raise BigDataUnknown(
                f"locating item named {key!r} for {self.kind} with ID {record.id!r}: file does not exist"
            )
        try:
            with open(self.big_data_path(record.id, key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise BigDataUnknown(
                f"locating item named {key!r} for {self.kind} with ID {record.id!r} "
                f"(consider removing the {self.kind} to resolve the issue): file does not exist"
            ) from None

    def write_big_data_file(self, record: R, key: str, data: bytes) -> None:
        directory = self.big_data_dir(record.id)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        write_file_atomic(self.big_data_path(record.id, key), data, 0o600)


class ImageStore(RecordStore[Image]):
    kind = "image"
    record_type = Image
    unknown = ImageUnknown

    def names_changed(self, record: Image, names: list[str], op: str) -> None:
        if op in ("set", "add"):
            # Go prepends each name in turn, so the last one given ends up first.
            history = list(record.names_history)
            for name in names:
                history = dedupe([name] + history)
            record.names_history = history

    def by_digest(self, digest: str) -> list[Image]:
        return [i for i in self.records if digest in i.digests]


class ContainerStore(RecordStore[Container]):
    kind = "container"
    record_type = Container
    unknown = ContainerUnknown

    def lookup(self, key: str) -> Container | None:
        found = super().lookup(key)
        if found is None and key:
            found = next((c for c in self.records if c.layer == key), None)
        return found


class LayerRecords(RecordStore[Layer]):
    """layers.json (plus volatile-layers.json) and the run root's mountpoints.json, saved together.

    Driver work lives in :class:`lamina.layers.LayerStore`; this class only keeps records.
    """

    kind = "layer"
    record_type = Layer
    unknown = LayerUnknown

    def __init__(self, directory: str, sources: list[Source], lock_path: str | list[str], *,
                 read_only: bool = False, mounts_dir: str | None = None) -> None:
        super().__init__(directory, sources, lock_path, read_only=read_only)
        #: Called under the write lock with each incomplete layer found on load; must remove its data.
        self.incomplete_cleaner: Callable[[Layer], None] | None = None
        self.mounts_path = os.path.join(mounts_dir, "mountpoints.json") if mounts_dir else None
        self.mounts_lock = (
            LockFile.get(os.path.join(mounts_dir, "mountpoints.lock")) if mounts_dir and not read_only else None
        )

    def changed_on_disk(self) -> bool:
        changed = super().changed_on_disk()
        if self.mounts_lock is not None:
            with self.mounts_lock.read_locked():
                changed = self.mounts_lock.modified() or changed
        return changed

    def _install(self, records: list[Layer]) -> None:
        super()._install(records)
        if self.mounts_lock is not None:
            with self.mounts_lock.read_locked():
                self.mounts_lock.modified()  # remember the token we loaded
                self.load_mounts(fresh=True)

    def load_mounts(self, fresh: bool = False) -> None:
        """Set each layer's mount point and count from mountpoints.json (mounts lock held).

        *fresh*: the records were just loaded, so none has a mount point yet.
        """
        if not fresh:
            for layer in self.records:
                layer.mount_point, layer.mount_count = "", 0
        if self.mounts_path is None:
            return
        try:
            with open(self.mounts_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        try:
            entries = json.loads(data) if data.strip() else []
        except ValueError as exc:
            raise StoreCorrupt(f"{self.mounts_path}: not valid JSON: {exc}") from exc
        if entries is not None and not isinstance(entries, list):
            raise StoreCorrupt(f"{self.mounts_path}: expected a JSON array of objects")
        for entry in entries or []:
            if not isinstance(entry, dict):
                raise StoreCorrupt(f"{self.mounts_path}: expected a JSON array of objects")
            layer = self.by_id.get(str(entry.get("id", "")))
            if layer is not None:
                layer.mount_point = str(entry.get("path", ""))
                count = entry.get("count", 0)
                layer.mount_count = count if isinstance(count, int) and count > 0 else 0

    def save_mounts(self) -> None:
        """Write mountpoints.json and touch its lock (mounts lock held for writing)."""
        if self.mounts_lock is None or self.mounts_path is None:
            return
        entries = [
            {"id": l.id, "path": l.mount_point, "count": l.mount_count}
            for l in self.records if l.mount_count > 0
        ]
        os.makedirs(os.path.dirname(self.mounts_path), mode=0o700, exist_ok=True)
        write_json_atomic(self.mounts_path, entries)
        self.mounts_lock.touch()

    def save(self) -> None:
        """layers.json then mountpoints.json, each followed by a touch of its lock (Go's order)."""
        super().save()
        if self.mounts_lock is not None:
            with self.mounts_lock.locked():
                self.save_mounts()

    @contextlib.contextmanager
    def mounts_locked(self) -> Iterator[None]:
        """Hold the mount-count lock for writing with counts fresh from disk."""
        if self.mounts_lock is None:
            raise StoreIsReadOnly(f"layer store at {self.directory} is read-only")
        with self.mounts_lock.locked():
            if self.mounts_lock.modified():
                self.load_mounts()
            yield

    def after_load(self, *, locked_for_write: bool) -> bool:
        changed = False
        incomplete = [r for r in self.records if r.flags and r.incomplete]
        if incomplete and not self.read_only:
            if not locked_for_write:
                raise NeedsWriteLock()
            for layer in incomplete:
                if self.incomplete_cleaner is not None:
                    self.incomplete_cleaner(layer)
                self.discard(layer)
            changed = True
        return super().after_load(locked_for_write=locked_for_write) or changed

    def children(self, id: str) -> list[Layer]:
        return [l for l in self.records if l.parent == id]

    def by_compressed_digest(self, digest: str) -> list[Layer]:
        return [l for l in self.records if l.compressed_digest == digest]

    def by_uncompressed_digest(self, digest: str) -> list[Layer]:
        return [l for l in self.records if l.uncompressed_digest == digest]
