"""Layer content at the store level: ApplyDiff and Diff as containers/storage 1.43 does them.

* :func:`apply_diff_locked` reads a (possibly compressed) tar once, streaming: the raw bytes are
  hashed and counted (``compressed-diff-digest``/``compressed-size``), decompressed, hashed and
  counted again (``diff-digest``/``diff-size``), watched by a :class:`~lamina.tarsplit.TarSplitter`
  (tar-split records, ``uidset``/``gidset``) and handed to the driver's ``apply_diff``. Only when the
  driver succeeded are the tar-split file and the record written.
* :func:`diff_locked` rebuilds a layer's original tar byte for byte from its tar-split and the files
  in its tree when it can, asks the driver otherwise, and compresses on the fly. The result is a
  lazily produced stream: nothing is spooled.

Compression values are containers/storage's ``archive.Compression`` enum as stored in layers.json.
"""

from __future__ import annotations

import bz2
import ctypes
import errno
import hashlib
import importlib
import io
import lzma
import os
import queue
import threading
import zlib
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator

from .atomicio import write_file_atomic
from .errors import ArchiveError
from .tarsplit import JSONPacker, TarSplitter, assemble, gzip_compressor, read_tar_split
from .types import ApplyDiffOpts, IDMappings, MountOpts

if TYPE_CHECKING:
    from .metastore import LayerRecords
    from .records import Layer
    from .store import Store

__all__ = [
    "UNCOMPRESSED", "BZIP2", "GZIP", "XZ", "ZSTD", "COMPRESSION_NAMES",
    "detect_compression", "apply_diff_locked", "diff_locked", "tar_split_path", "ChunkStream",
    "compress_chunks",
]

# archive.Compression values in layers.json
UNCOMPRESSED, BZIP2, GZIP, XZ, ZSTD = 0, 1, 2, 3, 4
COMPRESSION_NAMES = {UNCOMPRESSED: "tar", BZIP2: "tar.bz2", GZIP: "tar.gz", XZ: "tar.xz", ZSTD: "tar.zst"}

_CHUNK = 1 << 20  # bytes per read of the input and per decompressed chunk
_HEAD = 10240  # containers/storage sniffs the compression from up to this many bytes
_TAR_SPLIT_FLUSH = 1 << 18
_ZSTD_BLOCK = 1 << 17
_PREFETCH = 4  # chunks decoded ahead of the extractor
_THREAD_CHUNK = 4 << 20  # bytes per decompressed chunk in the producer thread (fewer GIL handoffs)
_THREAD_FIRST_CHUNK = 1 << 17  # its first chunk: small, so that extraction starts early (then doubling)
#: Bytes hashed in the producer itself before hashing gets a thread of its own: on a small layer
#: the extraction is the bottleneck, and a third busy thread only takes CPU time from it.
_HASH_THREAD_AFTER = 16 << 20
#: Read, decompress and hash the input in a producer thread, overlapping with tar-split and
#: extraction in the caller's thread (reads, zlib/isal/zstd and hashlib release the GIL).
#: None: the default, a thread for every input (uncompressed input gains its reading and
#: hashing: ~8% on a small child layer); False: everything in the caller's thread.
PREFETCH_THREAD: bool | None = None


def detect_compression(head: bytes) -> int:
    """The compression of a stream from its first bytes (containers/storage's DetectCompression)."""
    if head.startswith(b"BZh"):
        return BZIP2
    if head.startswith(b"\x1f\x8b\x08"):
        return GZIP
    if head.startswith(b"\xfd7zXZ\x00"):
        return XZ
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return ZSTD
    return UNCOMPRESSED


def tar_split_path(records: "LayerRecords", layer_id: str) -> str:
    """``<graphroot>/<driver>-layers/<id>.tar-split.gz`` of the record store that holds the layer."""
    return os.path.join(records.directory, f"{layer_id}.tar-split.gz")


# ---------------------------------------------------------------- reading the input


class _Hashes:
    """Feeds hash objects, in the order given, inline or, once :meth:`start` was called and
    :data:`_HASH_THREAD_AFTER` bytes were hashed, in a thread of its own, so that hashing
    (hashlib releases the GIL) runs beside decompression and extraction. Updates come from one
    thread at a time (the caller's, then the producer's)."""

    def __init__(self) -> None:
        self._queue: "queue.Queue[tuple[Any, bytes] | None]" = queue.Queue(maxsize=_PREFETCH * 4)
        self._thread: threading.Thread | None = None
        self._discard = False
        self._may_thread = False
        self._inline = 0  # bytes hashed inline so far

    def start(self) -> None:
        """Let hashing move to a thread of its own once the input proves large."""
        self._may_thread = True

    def update(self, hash_: Any, data: bytes) -> None:
        if self._thread is None:
            if not self._may_thread or self._inline < _HASH_THREAD_AFTER:
                self._inline += len(data)
                hash_.update(data)
                return
            self._thread = threading.Thread(target=self._run, name="lamina-layer-input-hash", daemon=True)
            self._thread.start()
        self._queue.put((hash_, data))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if not self._discard:
                item[0].update(item[1])

    def close(self, discard: bool) -> None:
        """Finish every update given (or, with *discard*, drop what is still queued) and stop."""
        thread, self._thread = self._thread, None
        self._may_thread = False
        if thread is None:
            return
        self._discard = discard
        self._queue.put(None)
        thread.join()


class _RawTap(io.RawIOBase):
    """The caller's stream as handed in: every byte read is hashed and counted.

    The first bytes are read eagerly (``head``) to sniff the compression and served first.
    """

    def __init__(self, inner: BinaryIO) -> None:
        super().__init__()
        self._inner = inner
        self.hashes = _Hashes()
        self.hash = hashlib.sha256()
        self.size = 0
        self.eof = False
        head = bytearray()
        while len(head) < _HEAD:
            data = self._read_inner(_HEAD - len(head))
            if not data:
                break
            head += data
        self.head = bytes(head)
        self._pending = memoryview(self.head)

    def _read_inner(self, n: int) -> bytes:
        data = self._inner.read(n)
        if data is None:
            raise BlockingIOError(errno.EAGAIN, "the diff stream is non-blocking and has no data ready")
        if not data:
            self.eof = True
            return b""
        data = bytes(data)
        self.hashes.update(self.hash, data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
        if self._pending:
            n = min(len(buffer), len(self._pending))
            buffer[:n] = self._pending[:n]
            self._pending = self._pending[n:]
            return n
        if self.eof:
            return 0
        data = self._read_inner(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self._pending:
            n = min(size, len(self._pending))
            data = bytes(self._pending[:n])
            self._pending = self._pending[n:]
            return data
        if self.eof:
            return b""
        return self._read_inner(size)

    def drain(self) -> None:
        """Read (and hash) whatever the decompressor left unread."""
        self._pending = memoryview(b"")
        while self._read_inner(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def _decompressed(kind: int, raw: BinaryIO) -> BinaryIO:
    """A reader of the uncompressed bytes of *raw* (concatenated streams/members are joined)."""
    if kind == GZIP:
        try:
            from isal import igzip

            return igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        except ImportError:
            import gzip

            return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == BZIP2:
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if kind == XZ:
        return lzma.LZMAFile(raw, "rb", format=lzma.FORMAT_XZ)  # type: ignore[return-value]
    if kind == ZSTD:
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(  # type: ignore[return-value]
            raw, read_size=_CHUNK, read_across_frames=True, closefd=False)
    return raw


def _decompression_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [EOFError, zlib.error, lzma.LZMAError]
    for module, name in (("zstandard", "ZstdError"), ("isal.isal_zlib", "error"),
                         ("isal.isal_zlib", "IsalError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except ImportError:
            continue  # an optional accelerator that is not installed raises nothing
    return tuple(errors)


class _DecompressionFailure(Exception):
    """A broken compressed stream, as seen by the producer (turned into ArchiveError by the reader)."""

    def __init__(self, cause: BaseException, compressed_offset: int, offset: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.compressed_offset = compressed_offset
        self.offset = offset


class _ChunkedReader(io.RawIOBase):
    """Read-only stream mechanics over a current chunk (``_buf`` from ``_pos``); subclasses
    provide ``_pull()``, which loads the next chunk and returns False at the end."""

    _buf: bytes = b""
    _pos: int = 0

    def readable(self) -> bool:
        return True

    def _pull(self) -> bool:
        raise NotImplementedError

    def read(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed stream")
        if size is None or size < 0:
            return self.readall()
        if self._pos >= len(self._buf):
            if not size or not self._pull():
                return b""
        buf, pos = self._buf, self._pos
        if pos == 0 and len(buf) <= size:
            self._pos = len(buf)
            return buf
        end = min(len(buf), pos + size)
        self._pos = end
        return buf[pos:end]

    def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def readall(self) -> bytes:
        parts = [self._buf[self._pos:]]
        self._pos = len(self._buf)
        while self._pull():
            parts.append(self._buf)
            self._pos = len(self._buf)
        return b"".join(parts)


class _LayerInput(_ChunkedReader):
    """The uncompressed tar handed to the driver; reading it hashes, counts and splits it.

    A producer thread (see :data:`PREFETCH_THREAD`) reads the caller's stream, decompresses it
    and hashes both streams a chunk at a time, up to :data:`_PREFETCH` chunks ahead of the
    reader (hashing gets a thread of its own once the input is large, see :class:`_Hashes`), so
    that this work (outside the GIL) overlaps with the extraction; the reader tar-splits each
    chunk as it takes it (Python code: it would only contend for the GIL in the
    producer). A chunk is handed out only after the splitter accepted it; a corrupt archive
    raises :class:`~lamina.tarsplit.TarFormatError` (or ArchiveError for broken compression)
    from ``read`` and is kept in :attr:`error`. :meth:`close` stops and joins the producer.
    """

    def __init__(self, tap: _RawTap, kind: int, splitter: TarSplitter) -> None:
        super().__init__()
        self.tap = tap
        self.kind = kind
        self.splitter = splitter
        self.source = _decompressed(kind, tap)  # type: ignore[arg-type]
        # uncompressed input: the raw digest is the uncompressed digest, hash it once
        self._hash = hashlib.sha256() if kind != UNCOMPRESSED else None
        self.size = 0
        self.error: BaseException | None = None
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._decompression_errors = _decompression_errors()
        self._queue: "queue.Queue[bytes | BaseException | None]" = queue.Queue(maxsize=_PREFETCH)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read_size = _CHUNK

    @property
    def digest(self) -> str:
        """sha256 of the uncompressed stream (valid after :meth:`finish`)."""
        return "sha256:" + self._hash.hexdigest() if self._hash is not None else self.tap.digest

    # -- the producer thread

    def _read_source(self) -> bytes:
        try:
            return self.source.read(self._read_size)
        except self._decompression_errors as exc:
            raise _DecompressionFailure(exc, self.tap.size, self.size) from exc
        except OSError as exc:
            # gzip/bz2 readers report a bad stream as a plain OSError (no errno)
            if self.kind == UNCOMPRESSED or exc.errno is not None:
                raise
            raise _DecompressionFailure(exc, self.tap.size, self.size) from exc

    def _next_chunk(self) -> bytes | None:
        """Read, decompress and hash the next chunk; None at EOF (the producer's half of the work:
        it runs mostly outside the GIL, so that in a thread it overlaps with the extraction)."""
        data = self._read_source()
        if not data:
            self.tap.drain()  # what follows the compressed stream counts too
            return None
        if self._hash is not None:
            self.tap.hashes.update(self._hash, data)
        self.size += len(data)
        return data

    def _split(self, data: bytes | None) -> None:
        """The reader's half: tar-split the chunk (None: the end of the input)."""
        if data is None:
            # Go's xz reader, and its zstd reader for tails within one block, return the
            # last bytes with EOF: tar-split then writes no final empty segment.
            self.splitter.close(eof_with_data=self.kind == XZ or (
                self.kind == ZSTD and self.splitter.trailer_size < _ZSTD_BLOCK))
        else:
            self.splitter.feed(data)

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._next_chunk()
                self._put(data)
                if data is None:
                    return
                self._read_size = min(self._read_size * 2, _THREAD_CHUNK)
        except BaseException as exc:  # handed to the reader, which raises it
            self._put(exc)

    def _put(self, item: "bytes | BaseException | None") -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _decompression_failed(self, failure: "_DecompressionFailure") -> ArchiveError:
        last = self.splitter.last_entry
        exc = failure.cause
        return ArchiveError(
            f"decompressing the layer ({COMPRESSION_NAMES[self.kind]}) failed at compressed offset "
            f"{failure.compressed_offset}, uncompressed offset {failure.offset}"
            + (f" (after entry {last!r})" if last else "") + f": {exc or type(exc).__name__}")

    def _use_thread(self) -> bool:
        return PREFETCH_THREAD is not False

    # -- the reader side

    def _pull(self) -> bool:
        """Load the next chunk into the buffer; False at EOF."""
        if self.error is not None:
            raise self.error
        if self._eof:
            return False
        if self.closed:
            raise ValueError("read from a closed stream")
        try:
            if not self._use_thread():
                item: bytes | BaseException | None = self._next_chunk()
            else:
                if self._thread is None:
                    self._read_size = _THREAD_FIRST_CHUNK
                    self.tap.hashes.start()
                    self._thread = threading.Thread(target=self._produce, name="lamina-layer-input",
                                                    daemon=True)
                    self._thread.start()
                item = self._queue.get()
                if item is None:
                    self._thread.join()
            if isinstance(item, BaseException):
                raise item
            self._split(item)
        except _DecompressionFailure as failure:
            # built here, after the splitter saw every chunk before the failure (names the entry)
            self.error = self._decompression_failed(failure)
            raise self.error from failure.cause
        except BaseException as exc:
            self.error = exc
            raise
        if item is None:
            self._eof = True
            return False
        self._buf, self._pos = item, 0
        return True

    def finish(self) -> None:
        """Consume the rest of the input (what follows the archive is part of the digests too)."""
        self._pos = len(self._buf)
        while self._pull():
            self._pos = len(self._buf)

    def close(self) -> None:
        if self.closed:
            return
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._stop.set()
            while thread.is_alive():
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    thread.join(0.05)
        if self.source is not self.tap:
            self.source.close()
        # the digests are read after close: complete them when the whole input was read
        self.tap.hashes.close(discard=not self._eof)
        super().close()


class _TarSplitSink:
    """Collects tar-split lines gzip-compressed in memory (as Go buffers them before writing)."""

    def __init__(self) -> None:
        self._compressor = gzip_compressor(1)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._out: list[bytes] = []

    def write(self, line: bytes) -> None:
        self._pending.append(line)
        self._pending_size += len(line)
        if self._pending_size >= _TAR_SPLIT_FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._out.append(self._compressor.compress(b"".join(self._pending)))
            self._pending.clear()
            self._pending_size = 0

    def getvalue(self) -> bytes:
        self._flush()
        self._out.append(self._compressor.flush())
        return b"".join(self._out)


def apply_diff_locked(store: "Store", layer: "Layer", diff: BinaryIO) -> int:
    """Apply *diff* (a tar; uncompressed, gzip, bzip2, xz or zstd) to *layer*; return the unpacked size.

    Called with the layer store write-locked. On success the layer's tar-split file is replaced
    atomically and its digests, sizes, compression and uid/gid sets are recorded and saved. On
    failure (ArchiveError for a corrupt or truncated tar, naming entry and offset) nothing about
    the layer's record or tar-split changes.
    """
    tap = _RawTap(diff)
    kind = detect_compression(tap.head)
    sink = _TarSplitSink()
    splitter = TarSplitter(JSONPacker(sink.write))
    stream = _LayerInput(tap, kind, splitter)
    try:
        opts = ApplyDiffOpts(diff=stream,  # type: ignore[arg-type]
                             mappings=IDMappings(layer.uidmap, layer.gidmap),
                             mount_label=layer.mount_label)
        try:
            size = store.driver.apply_diff(layer.id, layer.parent or None, opts)
            stream.finish()
        except BaseException as exc:
            # The driver may have wrapped or replaced our error; the splitter's names entry and offset.
            if isinstance(stream.error, ArchiveError) and exc is not stream.error:
                raise stream.error from exc
            raise
    finally:
        stream.close()
    path = tar_split_path(store.layer_store, layer.id)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_file_atomic(path, sink.getvalue(), 0o600)
    layer.compressed_digest = tap.digest
    layer.compressed_size = tap.size
    layer.uncompressed_digest = stream.digest
    layer.uncompressed_size = stream.size
    layer.compression = kind
    layer.uidset = sorted(splitter.uids)
    layer.gidset = sorted(splitter.gids)
    store.layer_store.save()
    return int(size)


# ---------------------------------------------------------------- producing diffs


class ChunkStream(_ChunkedReader):
    """A read-only binary stream over an iterator of byte chunks.

    ``close()`` closes the iterator and then runs *on_close* callbacks (all of them, even if
    one fails), e.g. to unmount what the iterator reads from.
    """

    def __init__(self, chunks: Iterator[bytes], on_close: Iterable[Callable[[], None]] = ()) -> None:
        super().__init__()
        self._chunks = chunks
        self._on_close = list(on_close)
        self._buf = b""
        self._pos = 0
        self._done = False

    def _pull(self) -> bool:
        while not self._done:
            try:
                data = next(self._chunks)
            except StopIteration:
                self._done = True
                return False
            if data:
                self._buf, self._pos = bytes(data), 0
                return True
        return False

    def read1(self, size: int = -1) -> bytes:
        return self.read(size if size is not None and size >= 0 else _CHUNK)

    def close(self) -> None:
        if self.closed:
            return
        first: BaseException | None = None
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            first = exc
        for callback in self._on_close:
            try:
                callback()
            except BaseException as exc:
                if first is None:
                    first = exc
        self._on_close = []
        super().close()
        if first is not None:
            raise first


def _compressor(kind: int) -> Any:
    if kind == GZIP:
        try:
            from isal import isal_zlib

            return isal_zlib.compressobj(2, isal_zlib.DEFLATED, 31)
        except ImportError:
            return zlib.compressobj(6, zlib.DEFLATED, 31)
    if kind == BZIP2:
        return bz2.BZ2Compressor(9)
    if kind == XZ:
        return lzma.LZMACompressor(format=lzma.FORMAT_XZ)
    if kind == ZSTD:
        import zstandard

        return zstandard.ZstdCompressor(level=3).compressobj()
    raise ValueError(f"unsupported compression {kind!r}")


class _CollectedOutput:
    """A file-like sink (written from any thread) whose bytes are taken out in order."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._lock = threading.Lock()

    def write(self, data: bytes) -> int:
        with self._lock:
            self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered here."""

    def take(self) -> list[bytes]:
        with self._lock:
            parts, self._parts = self._parts, []
        return parts


_MAX_GZIP_THREADS = 8  # beyond this the single reader of the output is the limit


def _gzip_threads() -> int:
    """Threads to deflate a gzip diff with: the CPUs this process may run on, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return min(cpus, _MAX_GZIP_THREADS)


def _gzip_in_threads(chunks: Iterable[bytes], threads: int) -> Iterator[bytes] | None:
    """*chunks* as one gzip member deflated in *threads* threads (isal's pigz-like writer, as Go
    uses pgzip), or None when isal is not installed."""
    try:
        from isal import igzip_threaded
    except ImportError:
        return None

    def run() -> Iterator[bytes]:
        sink = _CollectedOutput()
        writer = igzip_threaded.open(sink, "wb", compresslevel=2, threads=threads)
        try:
            for data in chunks:
                writer.write(data)
                yield from sink.take()
            writer.close()
            yield from sink.take()
        finally:
            writer.close()  # (after an early stop too: its threads are joined)

    return run()


def compress_chunks(chunks: Iterable[bytes], kind: int) -> Iterator[bytes]:
    """*chunks* compressed with *kind* (UNCOMPRESSED passes them through)."""
    if kind == UNCOMPRESSED:
        yield from chunks
        return
    threads = _gzip_threads() if kind == GZIP else 1
    parallel = _gzip_in_threads(chunks, threads) if threads > 1 else None
    if parallel is not None:
        yield from parallel
        return
    compressor = _compressor(kind)
    for data in chunks:
        out = compressor.compress(data)
        if out:
            yield out
    tail = compressor.flush()
    if tail:
        yield tail


def _stream_chunks(stream: BinaryIO) -> Iterator[bytes]:
    try:
        while True:
            data = stream.read(_CHUNK)
            if not data:
                return
            yield data
    finally:
        stream.close()


# -- opening a layer's files without leaving its tree

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = 437  # the same number on every Linux architecture


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_syscall() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall
    except (OSError, AttributeError):
        return None


_syscall = _load_syscall()
_openat2_works: bool | None = None


class _TreeFiles:
    """Opens files of a layer tree by archive name, resolving symlinks as if the tree were ``/``."""

    def __init__(self, root: str) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _openat2(self, rel: bytes) -> int | None:
        global _openat2_works
        if _syscall is None or _openat2_works is False:
            return None
        how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0,
                       _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(self.root_fd), ctypes.c_char_p(rel),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            _openat2_works = True
            return int(fd)
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM) and _openat2_works is None:
            _openat2_works = False
            return None
        raise OSError(err, os.strerror(err), rel.decode("utf-8", "surrogateescape"))

    def __call__(self, name: str) -> IO[bytes]:
        rel = os.fsencode(name).lstrip(b"/") or b"."
        fd = self._openat2(rel)
        if fd is None:
            parts = [p for p in rel.split(b"/") if p not in (b"", b".")]
            if b".." in parts:
                raise OSError(errno.EACCES, "path leaves the layer", name)
            fd = os.open(b"/".join(parts) or b".", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW,
                         dir_fd=self.root_fd)
        return io.FileIO(fd, "rb", closefd=True)

    def close(self) -> None:
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1


def _rebuild_from_tar_split(store: "Store", layer: "Layer",
                            ts_file: IO[bytes]) -> tuple[Iterator[bytes], list[Callable[[], None]]]:
    """The layer's original tar from its tar-split and its files (DiffGetter or a read-only mount).

    Returns the chunks and what to release, in order, once they are no longer needed.
    """
    releases: list[Callable[[], None]] = [ts_file.close]
    try:
        getter = store.driver.diff_getter(layer.id)
        if callable(getter):
            opener: Callable[[str], IO[bytes]] = getter
            if callable(getattr(getter, "close", None)):
                releases.append(getter.close)  # type: ignore[attr-defined]
        else:
            root = store.driver.get(layer.id, MountOpts(mount_label=layer.mount_label, options=("ro",)))
            releases.append(lambda: store.driver.put(layer.id))
            tree = _TreeFiles(root)
            releases.insert(1, tree.close)
            opener = tree
    except BaseException:
        _release_all(releases)
        raise
    return assemble(read_tar_split(ts_file), opener), releases


def _release_all(releases: list[Callable[[], None]]) -> None:
    first: BaseException | None = None
    for release in releases:
        try:
            release()
        except BaseException as exc:
            if first is None:
                first = exc
    if first is not None:
        raise first


def diff_locked(store: "Store", layer: "Layer", parent: "Layer | None", compression: int | None,
                records: "LayerRecords | None" = None) -> BinaryIO:
    """The diff of *layer* against *parent* as a stream, compressed with *compression*.

    None for *compression* uses the layer's recorded one. When *parent* is the layer's real
    parent and a tar-split exists (in *records*' directory, default the primary layer store),
    the original tar is rebuilt byte for byte; otherwise the driver's (native or naive) diff
    is used. The stream is produced as it is read; the caller closes it.
    """
    kind = layer.compression if compression is None else compression
    if kind not in COMPRESSION_NAMES:
        raise ValueError(f"unsupported compression {kind!r}")
    chunks: Iterator[bytes] | None = None
    releases: list[Callable[[], None]] = []
    if (parent.id if parent else "") == layer.parent:
        path = tar_split_path(records if records is not None else store.layer_store, layer.id)
        try:
            ts_file = open(path, "rb")
        except FileNotFoundError:
            ts_file = None
        if ts_file is not None:
            chunks, releases = _rebuild_from_tar_split(store, layer, ts_file)
    if chunks is None:
        driver_stream = store.driver.diff(
            layer.id, parent.id if parent else None, IDMappings(layer.uidmap, layer.gidmap),
            IDMappings(parent.uidmap, parent.gidmap) if parent else IDMappings(), layer.mount_label,
        )
        if kind == UNCOMPRESSED:
            return driver_stream
        chunks, releases = _stream_chunks(driver_stream), [driver_stream.close]
    return ChunkStream(compress_chunks(chunks, kind), releases)  # type: ignore[return-value]
