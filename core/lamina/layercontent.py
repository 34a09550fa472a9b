"""Layer content at the store level: apply a (compressed) diff to a layer and record its digests.

This first version streams the input through digesters and the driver's apply hook; the
exact-bytes machinery (tar-split, UID/GID sets) is added by the layer-content work.
"""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING, BinaryIO

from .types import ApplyDiffOpts, IDMappings

if TYPE_CHECKING:
    from .records import Layer
    from .store import Store

# archive.Compression values in layers.json
UNCOMPRESSED, BZIP2, GZIP, XZ, ZSTD = 0, 1, 2, 3, 4


def detect_compression(head: bytes) -> int:
    """The compression of a stream from its first bytes (containers/storage's DetectCompression)."""
    if head.startswith(b"\x1f\x8b\x08"):
        return GZIP
    if head.startswith(b"BZh"):
        return BZIP2
    if head.startswith(b"\xfd7zXZ\x00"):
        return XZ
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return ZSTD
    return UNCOMPRESSED


class DigestingReader(io.RawIOBase):
    """Passes bytes through while hashing and counting them."""

    def __init__(self, inner: BinaryIO) -> None:
        super().__init__()
        self.inner = inner
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.hash.update(data)
        self.size += n
        return n

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def decompressor(kind: int, raw: BinaryIO) -> BinaryIO:
    """A reader of the uncompressed bytes of *raw*."""
    if kind == GZIP:
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == BZIP2:
        import bz2

        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if kind == XZ:
        import lzma

        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    if kind == ZSTD:
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw)  # type: ignore[return-value]
    return raw


def apply_diff_locked(store: "Store", layer: "Layer", diff: BinaryIO) -> int:
    """Apply *diff* (any supported compression) to *layer*, recording digests and sizes.

    Called with the layer store write-locked; saves the record. Returns the unpacked size.
    """
    raw = DigestingReader(diff)
    buffered = io.BufferedReader(raw, 1 << 16)
    kind = detect_compression(buffered.peek(10240)[:10])
    uncompressed = DigestingReader(decompressor(kind, buffered))  # type: ignore[arg-type]
    opts = ApplyDiffOpts(diff=uncompressed, mappings=IDMappings(layer.uidmap, layer.gidmap),
                         mount_label=layer.mount_label)
    size = store.driver.apply_diff(layer.id, layer.parent or None, opts)
    uncompressed.drain()
    buffered.read()
    layer.compressed_digest = raw.digest
    layer.compressed_size = raw.size
    layer.uncompressed_digest = uncompressed.digest
    layer.uncompressed_size = uncompressed.size
    layer.compression = kind
    store.layer_store.save()
    return size


def compressor(kind: int, sink: BinaryIO) -> BinaryIO:
    """A writer that compresses into *sink* with *kind*."""
    if kind == GZIP:
        import gzip

        return gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0)  # type: ignore[return-value]
    if kind == BZIP2:
        import bz2

        return bz2.BZ2File(sink, "wb")  # type: ignore[return-value]
    if kind == XZ:
        import lzma

        return lzma.LZMAFile(sink, "wb")  # type: ignore[return-value]
    if kind == ZSTD:
        import zstandard

        return zstandard.ZstdCompressor().stream_writer(sink, closefd=False)  # type: ignore[return-value]
    return sink


def diff_locked(store: "Store", layer: "Layer", parent: "Layer | None", compression: int | None) -> BinaryIO:
    """The (compressed) diff of *layer* against *parent*, from the driver (native or naive)."""
    stream = store.driver.diff(
        layer.id, parent.id if parent else None, IDMappings(layer.uidmap, layer.gidmap),
        IDMappings(parent.uidmap, parent.gidmap) if parent else IDMappings(), layer.mount_label,
    )
    kind = layer.compression if compression is None else compression
    if kind == UNCOMPRESSED:
        return stream
    import tempfile

    spool = tempfile.TemporaryFile()
    try:
        with stream:
            writer = compressor(kind, spool)  # type: ignore[arg-type]
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                writer.write(chunk)
            writer.close()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool  # type: ignore[return-value]
