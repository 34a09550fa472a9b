"""tar-split: the record of a tar stream's raw bytes that lets a layer's diff be rebuilt byte for byte.

containers/storage keeps ``<graphroot>/<driver>-layers/<id>.tar-split.gz`` for every layer filled
from a tar: a gzip'd stream of newline-terminated JSON objects (vbatts/tar-split ``storage.Entry``):

* segments ``{"type":2,"payload":"<base64>","position":N}``: raw archive bytes other than file
  contents (headers, PAX/GNU meta entries, padding, the end-of-archive blocks, anything after them);
* files ``{"type":1,"name":"a/b","size":6,"payload":"<base64 CRC-64/ISO>","position":N}``: one per
  archive entry; ``size``/``payload`` are absent/null for entries without data, and names that are
  not UTF-8 are stored base64-encoded as ``name_raw``.

:class:`TarSplitter` is fed the uncompressed stream incrementally (it never looks back) and writes
the records as tar-split v0.11 (containers/storage 1.43) does, including the trailing empty
segment; it also collects the UIDs/GIDs 1.43 records in ``uidset``/``gidset``. :func:`assemble`
rebuilds the tar from the records plus file contents. Both sides accept files with or without the
trailing empty segment (1.62 writes none).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterable, Iterator

from . import crc64
from .errors import ArchiveError

__all__ = [
    "FILE_TYPE",
    "SEGMENT_TYPE",
    "Entry",
    "JSONPacker",
    "TarSplitter",
    "TarFormatError",
    "assemble",
    "clean_path",
    "decode_entry",
    "encode_entry",
    "iter_entries",
    "read_tar_split",
    "gzip_compressor",
]

FILE_TYPE = 1
SEGMENT_TYPE = 2

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_MAX_META = 1 << 20  # Go's archive/tar refuses PAX/GNU meta entries larger than this
_TRAILER_CHUNK = 1 << 20  # tar-split reads what follows the archive in chunks of this size
_HEADER_ONLY = frozenset(b"123456")  # link, symlink, char, block, dir, fifo: no data section
_PLAIN_FLAGS = frozenset(b"\x000125")  # what TarSplitter._plain_entry takes: files, links, dirs


class TarFormatError(ArchiveError):
    """A tar stream is corrupt or truncated; *entry* is the entry concerned (or the last good one)."""

    def __init__(self, message: str, *, entry: str = "", offset: int = 0) -> None:
        self.entry = entry
        self.offset = offset
        super().__init__(message)


# ---------------------------------------------------------------- entries and their JSON form


@dataclass(slots=True)
class Entry:
    """One tar-split record. *name* is the raw name bytes (b"" for segments)."""

    type: int
    name: bytes = b""
    size: int = 0
    payload: bytes | None = None
    position: int = 0

    @property
    def path(self) -> str:
        """The name as a filesystem path string (non-UTF-8 bytes surrogate-escaped)."""
        return self.name.decode("utf-8", "surrogateescape")


_JSON_SPECIAL = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029]')
_JSON_CAREFUL_NAME = re.compile(rb'[^\x20-\x7e]|["\\<>&]')  # bytes a name is not written as-is with
_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: "re.Match[str]") -> str:
    ch = match.group()
    return _JSON_ESCAPES.get(ch) or f"\\u{ord(ch):04x}"


def go_json_string(text: str) -> bytes:
    """*text* as Go's encoding/json (1.19, HTML escaping on) encodes a string."""
    if _JSON_SPECIAL.search(text) is not None:
        text = _JSON_SPECIAL.sub(_escape_char, text)
    return b'"' + text.encode("utf-8") + b'"'


def _b64(data: bytes | bytearray | memoryview) -> bytes:
    return binascii.b2a_base64(data, newline=False)


def encode_entry(entry: Entry) -> bytes:
    """The exact line (with ``\\n``) Go's ``json.Encoder`` writes for *entry*."""
    if entry.type == SEGMENT_TYPE and not entry.name:
        payload = b"null" if entry.payload is None else b'"' + _b64(entry.payload) + b'"'
        return b'{"type":2,"payload":%s,"position":%d}\n' % (payload, entry.position)
    parts = [b'{"type":%d' % entry.type]
    if entry.name:
        try:
            parts.append(b',"name":' + go_json_string(entry.name.decode("utf-8")))
        except UnicodeDecodeError:
            parts.append(b',"name_raw":"' + _b64(entry.name) + b'"')
    if entry.size:
        parts.append(b',"size":%d' % entry.size)
    parts.append(b',"payload":null' if entry.payload is None else b',"payload":"' + _b64(entry.payload) + b'"')
    parts.append(b',"position":%d}\n' % entry.position)
    return b"".join(parts)


def decode_entry(line: bytes | str) -> Entry:
    """Parse one JSON record; raises ArchiveError if it is not a tar-split entry."""
    try:
        obj = json.loads(line)
        kind = int(obj["type"])
        if obj.get("name_raw"):
            name = base64.b64decode(obj["name_raw"], validate=True)
        else:
            name = str(obj.get("name") or "").encode("utf-8", "surrogatepass")
        payload = obj.get("payload")
        return Entry(kind, name, int(obj.get("size") or 0),
                     None if payload is None else base64.b64decode(payload, validate=True),
                     int(obj.get("position") or 0))
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ArchiveError(f"malformed tar-split record {bytes(line[:80]) if isinstance(line, (bytes, bytearray)) else line[:80]!r}: {exc}") from exc


def clean_path(name: bytes) -> bytes:
    """Go's ``filepath.Clean`` on a byte path."""
    if not name:
        return b"."
    if b"//" not in name and b"/." not in name and name[-1] != 0x2F and name[0] != 0x2E:
        return name  # no empty, "." or ".." component, no trailing slash: already clean
    rooted = name.startswith(b"/")
    out: list[bytes] = []
    for part in name.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if out and out[-1] != b"..":
                out.pop()
            elif not rooted:
                out.append(part)
            continue
        out.append(part)
    joined = b"/".join(out)
    if rooted:
        return b"/" + joined
    return joined or b"."


class JSONPacker:
    """Writes entries as tar-split's JSON packer does: positions from 0, duplicate paths refused."""

    def __init__(self, write: Callable[[bytes], Any]) -> None:
        self._write = write
        self._seen: set[bytes] = set()
        self.position = 0

    def add_segment(self, payload: bytes | bytearray | memoryview) -> None:
        self._write(b'{"type":2,"payload":"%s","position":%d}\n' % (_b64(payload), self.position))
        self.position += 1

    def add_file(self, name: bytes, size: int, payload: bytes | None) -> None:
        """Record an archive entry; raises ArchiveError for a second entry with the same clean path."""
        cleaned = clean_path(name)
        if cleaned in self._seen:
            raise ArchiveError("duplicates of file paths not supported")
        self._seen.add(cleaned)
        if size > 0 and payload is not None and name and _JSON_CAREFUL_NAME.search(name) is None:
            self._write(b'{"type":1,"name":"%s","size":%d,"payload":"%s","position":%d}\n'
                        % (name, size, _b64(payload), self.position))
        else:
            self._write(encode_entry(Entry(FILE_TYPE, name, size, payload, self.position)))
        self.position += 1


def gzip_compressor(level: int = 1) -> Any:
    """A gzip-container deflate compressor object (ISA-L when available, else zlib)."""
    try:
        from isal import isal_zlib

        return isal_zlib.compressobj(min(level, 3), isal_zlib.DEFLATED, 31)
    except ImportError:
        return zlib.compressobj(level, zlib.DEFLATED, 31)


def _gzip_decompressor() -> Any:
    try:
        from isal import isal_zlib

        return isal_zlib.decompressobj(31)
    except ImportError:
        return zlib.decompressobj(31)


def _gzip_errors() -> tuple[type[BaseException], ...]:
    try:
        from isal import isal_zlib

        return (zlib.error, isal_zlib.error)
    except ImportError:
        return (zlib.error,)


def _gunzip_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress a (possibly multi-member) gzip byte stream given in chunks."""
    decomp = _gzip_decompressor()
    fed = False
    for data in chunks:
        while data:
            fed = True
            out = decomp.decompress(data)
            if out:
                yield out
            if decomp.eof:
                data = decomp.unused_data
                decomp, fed = _gzip_decompressor(), False
            else:
                data = b""
    if fed:
        out = decomp.flush()
        if out:
            yield out
        if not decomp.eof:
            raise ArchiveError("tar-split data is truncated")


def iter_entries(lines: Iterable[bytes]) -> Iterator[Entry]:
    """Entries from an iterable of uncompressed NDJSON chunks (split anywhere)."""
    rest = b""
    for chunk in lines:
        data = rest + chunk if rest else chunk
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if end > start:
                yield decode_entry(data[start:end])
            start = end + 1
        rest = data[start:]
    if rest.strip():
        yield decode_entry(rest)


def read_tar_split(source: IO[bytes], chunk_size: int = 1 << 20) -> Iterator[Entry]:
    """Entries of a gzip'd tar-split file object, streaming."""

    def raw() -> Iterator[bytes]:
        while True:
            data = source.read(chunk_size)
            if not data:
                return
            yield data

    try:
        yield from iter_entries(_gunzip_chunks(raw()))
    except _gzip_errors() as exc:
        raise ArchiveError(f"tar-split data is not valid gzip: {exc}") from exc


# ---------------------------------------------------------------- parsing headers (Go's archive/tar rules)


def _cstring(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _numeric(field: bytes) -> int:
    """Go's parser.parseNumeric: base-256 when the top bit is set, else octal; ValueError if invalid."""
    if field and field[0] & 0x80:
        inv = 0xFF if field[0] & 0x40 else 0
        value = 0
        for i, c in enumerate(field):
            c ^= inv
            if i == 0:
                c &= 0x7F
            if value >> 56:
                raise ValueError("integer overflow")
            value = (value << 8) | c
        if value >> 63:
            raise ValueError("integer overflow")
        return ~value if inv else value
    text = field.strip(b" \0")
    nul = text.find(b"\0")
    if nul >= 0:
        text = text[:nul]
    if not text:
        return 0
    if text.translate(None, b"01234567"):
        raise ValueError(f"invalid octal number {text!r}")
    value = int(text, 8)
    if value >> 64:
        raise ValueError("integer overflow")
    return value if value < (1 << 63) else value - (1 << 64)


_DECIMAL = re.compile(rb"[+-]?[0-9]+\Z")


def _decimal(value: bytes) -> int:
    if not _DECIMAL.match(value):
        raise ValueError(f"invalid number {value!r}")
    number = int(value)
    if not -(1 << 63) <= number < (1 << 63):
        raise ValueError("integer overflow")
    return number


def block_sum(block: bytes) -> int:
    """The sum of the bytes of a 512-byte tar block.

    Computed from zlib's Adler-32 of each half: its low 16 bits are 1 + the bytes' sum modulo
    65521, and 256 bytes sum to at most 65280, so nothing is lost (six times faster than sum()).
    """
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _checksum_ok(blk: bytes) -> bool:
    """The header checksum matches (unsigned or signed byte sum, the field counted as spaces)."""
    try:
        want = _numeric_octal_only(blk[148:156])
    except ValueError:
        return False
    unsigned = block_sum(blk) - sum(blk[148:156]) + 256
    if want == unsigned:
        return True
    high = sum(1 for c in blk[:148] if c & 0x80) + sum(1 for c in blk[156:] if c & 0x80)
    return want == unsigned - 256 * high


def _numeric_octal_only(field: bytes) -> int:
    text = _cstring(field.strip(b" \0"))
    if not text:
        return 0
    if text.translate(None, b"01234567"):
        raise ValueError("invalid checksum")
    return int(text, 8)


@dataclass(slots=True)
class _Header:
    typeflag: int
    name: bytes
    size: int
    uid: int
    gid: int
    is_gnu_sparse_extended: bool = False


def _parse_header(blk: bytes) -> _Header:
    """One non-zero header block, as Go's Reader.readHeader; ValueError if it is not a valid header."""
    if not _checksum_ok(blk):
        raise ValueError("bad checksum")
    magic = blk[257:263]
    typeflag = blk[156]
    name = _cstring(blk[0:100])
    size = _numeric(blk[124:136])
    uid = _numeric(blk[108:116])
    gid = _numeric(blk[116:124])
    # (mode, mtime and device numbers are validated by the extractor, which uses them)
    prefix = b""
    if magic == b"ustar\0":
        if blk[508:512] == b"tar\0":  # star
            prefix = _cstring(blk[345:476])
        else:
            prefix = _cstring(blk[345:500])
    elif magic == b"ustar " and blk[263:265] == b" \0":  # GNU
        try:
            if blk[345]:
                _numeric(blk[345:357])
            if blk[357]:
                _numeric(blk[357:369])
        except ValueError:
            # Archives of pre-1.8 Go writers: these fields held a USTAR prefix.
            candidate = _cstring(blk[345:500])
            if all(c < 0x80 for c in candidate):
                prefix = candidate
    if prefix:
        name = prefix + b"/" + name
    extended = typeflag == ord("S") and magic == b"ustar " and blk[482] != 0
    return _Header(typeflag, name, size, uid, gid, extended)


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """PAX records ("%d key=value\\n"); ValueError as Go's ErrHeader. GNU sparse 0.0 keys are folded."""
    records: dict[bytes, bytes] = {}
    sparse: list[bytes] = []
    while data:
        space = data.find(b" ")
        if space < 0:
            raise ValueError("PAX record without length")
        try:
            length = _decimal(data[:space])
        except ValueError:
            length = -1
        if length < 5 or length > len(data) or space + 1 >= length - 1:
            raise ValueError("bad PAX record length")
        record, newline, data = data[space + 1:length - 1], data[length - 1:length], data[length:]
        if newline != b"\n":
            raise ValueError("PAX record not newline-terminated")
        eq = record.find(b"=")
        if eq < 0:
            raise ValueError("PAX record without '='")
        key, value = record[:eq], record[eq + 1:]
        if not key or (b"\0" in value if key in (b"path", b"linkpath", b"uname", b"gname") else b"\0" in key):
            raise ValueError("invalid PAX record")
        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            sparse.append(value)
        else:
            records[key] = value
    if sparse:
        records[b"GNU.sparse.map"] = b",".join(sparse)
    return records


def _is_whiteout(name: bytes) -> bool:
    """Whether Go's ``path.Base(name)`` starts with ``.wh.``."""
    if b".wh." not in name:
        return False
    stripped = name.rstrip(b"/")
    return stripped.rsplit(b"/", 1)[-1].startswith(b".wh.")


# ---------------------------------------------------------------- the streaming splitter

_HEADER, _ZERO2, _META, _EXT, _PAD, _BODY, _TRAILER, _FAILED, _DONE = range(9)


class TarSplitter:
    """Watches a tar stream go by and writes its tar-split records to *packer*.

    Call :meth:`feed` with consecutive chunks of the uncompressed archive and :meth:`close` at
    EOF. Entry boundaries, PAX/GNU meta entries, checksums and EOF rules follow Go's
    archive/tar (tar-split's fork), so the records match containers/storage 1.43's, and the
    same archives are refused (:class:`TarFormatError`, naming the entry and stream offset).
    ``uids``/``gids`` collect the owner IDs of every entry whose base name does not start
    with ``.wh.`` (as uint32), for the layer's ``uidset``/``gidset``.
    """

    def __init__(self, packer: JSONPacker) -> None:
        self.packer = packer
        self.uids: set[int] = set()
        self.gids: set[int] = set()
        self.offset = 0  # stream offset of the next byte fed
        self.trailer_size = 0  # bytes after the end-of-archive blocks
        self.entries = 0
        self._state = _HEADER
        self._raw = bytearray()  # raw bytes of the segment being collected
        self._blk = bytearray()  # partial header block
        self._need = 0  # bytes still expected in _META/_EXT/_PAD/_BODY
        self._meta = bytearray()
        self._meta_type = 0
        self._pax: dict[bytes, bytes] = {}
        self._long_name = b""
        self._entry_offset = 0
        self._last_name = ""
        self._name = b""
        self._size = 0
        self._crc = 0
        self._after_pad = 0
        self._pending: _Header | None = None
        self._trailer = bytearray()

    @property
    def last_entry(self) -> str:
        """The name of the last entry seen ("" before the first)."""
        return self._last_name

    # -- errors

    def _fail(self, message: str, offset: int | None = None, entry: str | None = None) -> TarFormatError:
        self._state = _FAILED
        where = self._entry_offset if offset is None else offset
        name = self._last_name if entry is None else entry
        about = f"entry {name!r}" if entry is not None else (
            f"the entry after {name!r}" if name else "the first entry")
        return TarFormatError(f"{message} ({about}, offset {where})", entry=name, offset=where)

    # -- feeding

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Process the next chunk of the archive."""
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            state = self._state
            if state == _BODY:
                take = min(self._need, end - pos)
                self._crc = crc64.update(view[pos:pos + take], self._crc)
                self._need -= take
                pos += take
                if not self._need:
                    self._end_body()
            elif state == _HEADER or state == _ZERO2:
                if state == _HEADER and end - pos >= BLOCK and not (
                        self._blk or self._pax or self._long_name):
                    after = self._plain_entry(view, pos, end)
                    if after:
                        pos = after
                        continue
                take = min(BLOCK - len(self._blk), end - pos)
                if not self._blk and take == BLOCK:
                    block = bytes(view[pos:pos + BLOCK])
                else:
                    self._blk += view[pos:pos + take]
                    block = b""
                    if len(self._blk) == BLOCK:
                        block = bytes(self._blk)
                        self._blk.clear()
                pos += take
                if block:
                    self._raw += block
                    self._on_block(block, self.offset + pos - BLOCK)
            elif state == _PAD:
                take = min(self._need, end - pos)
                self._raw += view[pos:pos + take]
                self._need -= take
                pos += take
                if not self._need:
                    self._state = _HEADER
            elif state == _META:
                take = min(self._need, end - pos)
                chunk = view[pos:pos + take]
                self._raw += chunk
                self._meta += chunk
                self._need -= take
                pos += take
                if not self._need:
                    self._end_meta()
            elif state == _EXT:
                take = min(BLOCK - len(self._blk), end - pos)
                self._blk += view[pos:pos + take]
                pos += take
                if len(self._blk) == BLOCK:
                    block = bytes(self._blk)
                    self._blk.clear()
                    self._raw += block
                    if not block[504]:
                        self._start_entry_data()
            elif state == _TRAILER:
                self._trailer += view[pos:end]
                self.trailer_size += end - pos
                pos = end
                while len(self._trailer) >= _TRAILER_CHUNK:
                    self.packer.add_segment(self._trailer[:_TRAILER_CHUNK])
                    del self._trailer[:_TRAILER_CHUNK]
            else:
                raise TarFormatError("tar stream already failed or closed", entry=self._last_name,
                                     offset=self.offset)
        self.offset += end

    def _plain_entry(self, view: memoryview, pos: int, end: int) -> int:
        """The common case in one step: a USTAR header, or a GNU one without access and change
        times (regular file, link or directory; no extension before it) whose data and padding
        are all in *view*. Returns the position after it, or 0 when the entry is not that
        simple (the state machine then takes it, and reports whatever is wrong with it)."""
        block = bytes(view[pos:pos + BLOCK])
        flag = block[156]
        if flag not in _PLAIN_FLAGS:
            return 0
        magic = block[257:265]
        if magic == b"ustar  \0":  # GNU: the prefix field holds times instead
            if block[345] or block[357]:
                return 0
            prefix = b""
        elif magic[:6] == b"ustar\0" and block[508:512] != b"tar\0":  # (not star's)
            prefix = _cstring(block[345:500])
        else:
            return 0
        if not _checksum_ok(block):
            return 0
        try:
            size, uid, gid = _numeric(block[124:136]), _numeric(block[108:116]), _numeric(block[116:124])
        except ValueError:
            return 0
        name = _cstring(block[:100])
        if prefix:
            name = prefix + b"/" + name
        data = 0 if flag in _HEADER_ONLY or (flag == 0 and name.endswith(b"/")) else size
        start = pos + BLOCK
        after = start + data + (-data % BLOCK)
        if size < 0 or after > end:
            return 0
        self._entry_offset = self.offset + pos
        if not _is_whiteout(name):
            self.uids.add(uid & 0xFFFFFFFF)
            self.gids.add(gid & 0xFFFFFFFF)
        raw = self._raw
        raw += block
        self.packer.add_segment(raw)
        self._raw = bytearray(view[start + data:after])
        self._name = name
        self._last_name = name.decode("utf-8", "surrogateescape")
        self.entries += 1
        crc = crc64.update(view[start:start + data], 0) if data else 0
        try:
            self.packer.add_file(name, size, crc64.digest(crc) if size > 0 else None)
        except ArchiveError as exc:
            raise self._fail(str(exc), entry=self._last_name) from None
        return after

    def _on_block(self, block: bytes, block_offset: int) -> None:
        if self._state == _ZERO2:
            if block == _ZERO_BLOCK:
                self._end_of_archive()
                return
            raise self._fail("archive/tar: invalid tar header: a zero block followed by data",
                             offset=block_offset)
        if block == _ZERO_BLOCK:
            self._state = _ZERO2
            return
        self._entry_offset = block_offset
        try:
            hdr = _parse_header(block)
        except ValueError as exc:
            raise self._fail(f"archive/tar: invalid tar header: {exc}") from None
        flag = hdr.typeflag
        if flag in (0x78, 0x67, 0x4C, 0x4B):  # 'x', 'g', 'L', 'K': meta entries
            if hdr.size < 0:
                raise self._fail("archive/tar: invalid tar header: negative size")
            if hdr.size > _MAX_META:
                raise self._fail("archive/tar: header field too long")
            self._meta_type = flag
            self._pending = hdr
            self._meta.clear()
            self._need = hdr.size
            self._state = _META
            if not self._need:
                self._end_meta()
            return
        self._pending = hdr
        if hdr.is_gnu_sparse_extended:
            self._state = _EXT
            return
        self._start_entry_data()

    def _end_meta(self) -> None:
        hdr = self._pending
        assert hdr is not None
        flag = self._meta_type
        pad = -hdr.size % BLOCK
        if flag in (0x78, 0x67):
            try:
                records = _parse_pax(bytes(self._meta))
            except ValueError as exc:
                raise self._fail(f"archive/tar: invalid tar header: {exc}") from None
            if flag == 0x67:  # a global header is reported as an entry of its own
                name = records.get(b"path") or hdr.name
                self._pax, self._long_name = {}, b""
                self._emit_entry(name, 0, 0, 0, pad)
                return
            self._pax = records
        else:
            value = _cstring(bytes(self._meta))
            if flag == 0x4C:
                self._long_name = value
        self._need = pad
        self._state = _PAD if pad else _HEADER

    def _start_entry_data(self) -> None:
        hdr = self._pending
        assert hdr is not None
        name, size, uid, gid = hdr.name, hdr.size, hdr.uid, hdr.gid
        pax = self._pax
        try:
            if pax:
                if pax.get(b"path"):
                    name = pax[b"path"]
                if pax.get(b"uid"):
                    uid = _decimal(pax[b"uid"])
                if pax.get(b"gid"):
                    gid = _decimal(pax[b"gid"])
                if pax.get(b"size"):
                    size = _decimal(pax[b"size"])
        except ValueError as exc:
            raise self._fail(f"archive/tar: invalid tar header: {exc}") from None
        if self._long_name:
            name = self._long_name
        self._pax, self._long_name = {}, b""
        flag = hdr.typeflag
        if flag == 0 and name.endswith(b"/"):
            flag = ord("5")
        data = 0 if flag in _HEADER_ONLY else size
        if data < 0 or size < 0:
            raise self._fail("archive/tar: invalid tar header: negative size")
        self._emit_entry(name, size, uid, gid, -data % BLOCK, data)

    def _emit_entry(self, name: bytes, size: int, uid: int, gid: int, pad: int, data: int = 0) -> None:
        if not _is_whiteout(name):
            self.uids.add(uid & 0xFFFFFFFF)
            self.gids.add(gid & 0xFFFFFFFF)
        if self._raw:
            self.packer.add_segment(self._raw)
            self._raw = bytearray()
        self._name = name
        self._last_name = name.decode("utf-8", "surrogateescape")
        self._size = size
        self._crc = 0
        self.entries += 1
        self._need = data
        self._after_pad = pad
        if data:
            self._state = _BODY
            return
        self._end_body()

    def _end_body(self) -> None:
        size = self._size
        try:
            self.packer.add_file(self._name, size, crc64.digest(self._crc) if size > 0 else None)
        except ArchiveError as exc:
            raise self._fail(str(exc), entry=self._last_name) from None
        self._need = self._after_pad
        self._state = _PAD if self._need else _HEADER

    def _end_of_archive(self) -> None:
        if self._raw:
            self.packer.add_segment(self._raw)
            self._raw = bytearray()
        self._state = _TRAILER

    def close(self, eof_with_data: bool = False) -> None:
        """The stream ended: check it ended where an archive may end, and write the last segments.

        tar-split ends with the empty segment of its final zero-length read. Readers that
        deliver their last bytes together with EOF (containers/storage's xz and, for short
        tails, zstd readers) give no such read: pass *eof_with_data* then, and no empty
        segment follows a non-empty tail.
        """
        state = self._state
        if state in (_FAILED, _DONE):
            raise TarFormatError("tar stream already failed or closed", entry=self._last_name,
                                 offset=self.offset)
        if state in (_HEADER, _ZERO2) and self._blk:
            raise self._fail("unexpected EOF in a tar header", offset=self.offset - len(self._blk))
        if state == _BODY:
            raise self._fail(f"unexpected EOF: {self._need} bytes of the contents missing",
                             entry=self._last_name, offset=self.offset)
        if state in (_META, _EXT):
            raise self._fail("unexpected EOF in a tar header", offset=self.offset)
        # EOF where Go's reader accepts it: between entries, after one zero block, or inside
        # padding. (tar-split drops an incomplete padding; it is kept here so that the
        # recorded diff-digest can still be reproduced.)
        if self._raw:
            self.packer.add_segment(self._raw)
            self._raw = bytearray()
        tail = bool(self._trailer) or self.trailer_size > 0
        if self._trailer:
            self.packer.add_segment(self._trailer)
            self._trailer.clear()
        if not (eof_with_data and tail):
            self.packer.add_segment(b"")  # tar-split v0.11's final empty read
        self._state = _DONE


# ---------------------------------------------------------------- rebuilding the tar


FileOpener = Callable[[str], IO[bytes]]


def assemble(entries: Iterable[Entry], open_file: FileOpener, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The archive bytes described by *entries*; file contents come from ``open_file(path)``.

    Each file must give exactly its recorded size and CRC, otherwise ArchiveError (raised
    lazily, when the stream reaches that file).
    """
    for entry in entries:
        if entry.type == SEGMENT_TYPE:
            if entry.payload:
                yield entry.payload
            continue
        if entry.type != FILE_TYPE:
            raise ArchiveError(f"unknown tar-split entry type {entry.type}")
        if entry.size <= 0:
            continue
        name = entry.path
        try:
            handle = open_file(name)
        except OSError as exc:
            raise ArchiveError(f"reading {name!r} to rebuild the layer's tar: {exc}") from exc
        try:
            left, crc = entry.size, 0
            while left:
                data = handle.read(min(left, chunk_size))
                if not data:
                    raise ArchiveError(f"file {name!r} is shorter than the {entry.size} bytes recorded")
                crc = crc64.update(data, crc)
                left -= len(data)
                yield data
            if handle.read(1):
                raise ArchiveError(f"file {name!r} is longer than the {entry.size} bytes recorded")
        except OSError as exc:
            raise ArchiveError(f"reading {name!r} to rebuild the layer's tar: {exc}") from exc
        finally:
            handle.close()
        if entry.payload is not None and crc64.digest(crc) != entry.payload:
            raise ArchiveError(f"file integrity checksum failed for {name!r}")
