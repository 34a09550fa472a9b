"""Naive diff machinery: two-tree change detection, tar export and secure tar application.

This is the Python counterpart of containers/storage's ``pkg/archive`` pieces that the
``NaiveDiffDriver`` uses (``ChangesDirs``, ``ExportChanges``, ``TarWithOptions``,
``ApplyUncompressedLayer``/``UnpackLayer``, ``ChangesSize``) plus the vfs driver's
``DirCopy``.  Only the standard library is used; tar streams are produced and consumed
incrementally, never buffered whole.

Security model of :func:`apply_tar` (layers are untrusted input):

* every path is resolved from a directory file descriptor of *dest*, one component at a
  time with ``O_NOFOLLOW``; a symlink met in a *parent* component is resolved as if *dest*
  were ``/`` (like Go's chroot'ed extractor / ``RESOLVE_IN_ROOT``), so it can never lead
  outside *dest*;
* the last component is never followed: an existing entry is removed and recreated;
* ``..`` that would climb above *dest* is refused (:class:`UnsafeArchive`), absolute names
  are taken relative to *dest*;
* hardlink targets must resolve inside *dest* without crossing any symlink;
* metadata calls on created entries never follow symlinks.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import functools
import grp
import logging
import os
import pwd
import shutil
import stat
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Generator, Iterable, Iterator

from lamina.errors import ArchiveError, UnsafeArchive
from lamina.tarsplit import block_sum
from lamina.types import ApplyDiffOpts, Change, ChangeKind, IDMappings

__all__ = [
    "WHITEOUT_PREFIX",
    "WHITEOUT_META_PREFIX",
    "WHITEOUT_OPAQUE",
    "OVERRIDE_STAT_XATTR",
    "changes_dirs",
    "changes_size",
    "export_changes",
    "tar_tree",
    "apply_tar",
    "copy_tree",
]

_LOG = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OVERRIDE_STAT_XATTR = "user.containers.override_stat"
_OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_CAPABILITY_XATTR = "security.capability"

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_CHUNK = 1 << 20
_MAX_SPECIAL = 1 << 20  # largest PAX / GNU long-name payload accepted (Go: maxSpecialFileSize)
_MAX_SYMLINK_HOPS = 40

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PARENT_CACHE = 64  # open parent directories kept by the extractor
_ACL_DEFAULT_XATTR = "system.posix_acl_default"

# tar type flags
_REG = b"0"
_AREG = b"\0"
_CONTIG = b"7"
_LNK = b"1"
_SYM = b"2"
_CHR = b"3"
_BLK = b"4"
_DIR = b"5"
_FIFO = b"6"
_PAX = b"x"
_GPAX = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"
_HEADER_ONLY = frozenset({_LNK, _SYM, _CHR, _BLK, _DIR, _FIFO})


# ---------------------------------------------------------------------------- tar codec


@dataclass(slots=True)
class TarHeader:
    """One logical tar entry (extension headers already folded in)."""

    name: str
    typeflag: bytes
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    atime_ns: int | None = None
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    offset: int = 0
    uname: str = ""
    gname: str = ""

    def where(self) -> str:
        return f"tar entry {self.name!r} at offset {self.offset}"


def _pad_len(size: int) -> int:
    return -size % _BLOCK


def _fits_octal(value: int, width: int) -> bool:
    return 0 <= value < 8 ** (width - 1)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _base256(value: int, width: int) -> bytes:
    raw = bytearray(value.to_bytes(width, "big", signed=True))
    if value >= 0:
        raw[0] |= 0x80
    return bytes(raw)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while True:
        m = len(str(n)) + len(body)
        if m == n:
            return str(n).encode() + body
        n = m


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for a name that fits the ustar prefix/name fields, else None."""
    if len(name) <= 100:
        return b"", name
    limit = min(len(name), 156)
    if len(name) <= 156 and name.endswith(b"/"):
        limit -= 1  # a directory's trailing slash cannot be the split point
    i = name.rfind(b"/", 0, limit)
    if i <= 0:
        return None
    prefix, rest = name[:i], name[i + 1 :]
    if not rest or len(rest) > 100 or len(prefix) > 155:
        return None
    return prefix, rest


def _ustar_block(
    name: bytes,
    prefix: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes,
    devmajor: int,
    devminor: int,
    uname: bytes = b"",
    gname: bytes = b"",
) -> bytes:
    blk = bytearray(_BLOCK)
    blk[0 : len(name)] = name
    blk[100:108] = _octal(mode, 8)
    blk[108:116] = _octal(uid, 8)
    blk[116:124] = _octal(gid, 8)
    blk[124:136] = _octal(size, 12)
    blk[136:148] = _octal(mtime, 12)
    blk[148:156] = b" " * 8
    blk[156:157] = typeflag
    blk[157 : 157 + len(linkname)] = linkname
    blk[257:263] = b"ustar\0"
    blk[263:265] = b"00"
    blk[265 : 265 + len(uname)] = uname
    blk[297 : 297 + len(gname)] = gname
    blk[329:337] = _octal(devmajor, 8) if _fits_octal(devmajor, 8) else _base256(devmajor, 8)
    blk[337:345] = _octal(devminor, 8) if _fits_octal(devminor, 8) else _base256(devminor, 8)
    blk[345 : 345 + len(prefix)] = prefix
    blk[148:156] = b"%06o\0 " % sum(blk)
    return bytes(blk)


def encode_header(h: TarHeader) -> bytes:
    """Header blocks for *h*: plain ustar, preceded by a PAX header when needed."""
    pax: list[tuple[bytes, bytes]] = []
    name_b = os.fsencode(h.name)
    link_b = os.fsencode(h.linkname)

    split = _split_ustar(name_b) if name_b.isascii() else None
    if split is None:
        pax.append((b"path", name_b))
        prefix, short = b"", name_b[:100]
    else:
        prefix, short = split
    if len(link_b) > 100 or not link_b.isascii():
        pax.append((b"linkpath", link_b))
        link_field = link_b[:100]
    else:
        link_field = link_b

    uid, gid, size = h.uid, h.gid, h.size
    if not _fits_octal(uid, 8):
        pax.append((b"uid", str(uid).encode()))
        uid = 0
    if not _fits_octal(gid, 8):
        pax.append((b"gid", str(gid).encode()))
        gid = 0
    if not _fits_octal(size, 12):
        pax.append((b"size", str(size).encode()))
        size = 0
    mtime = h.mtime_ns // 1_000_000_000
    if not _fits_octal(mtime, 12):
        pax.append((b"mtime", str(mtime).encode()))
        mtime = 0
    owner_names = []
    for key, value in ((b"uname", h.uname), (b"gname", h.gname)):
        raw = os.fsencode(value)
        if len(raw) > 31 or not raw.isascii():
            pax.append((key, raw))
            raw = b""
        owner_names.append(raw)
    for key in sorted(h.xattrs):
        if "=" in key or "\0" in key:
            _LOG.warning("not archiving xattr %r of %s: name cannot be stored in PAX", key, h.name)
            continue
        pax.append((b"SCHILY.xattr." + os.fsencode(key), h.xattrs[key]))

    out = b""
    if pax:
        data = b"".join(_pax_record(k, v) for k, v in pax)
        base = os.fsencode(os.path.basename(h.name.rstrip("/")) or "entry")
        pax_name = (b"PaxHeaders.0/" + base)[:100]
        out += _ustar_block(pax_name, b"", 0o644, 0, 0, len(data), 0, _PAX, b"", 0, 0)
        out += data + bytes(_pad_len(len(data)))
    out += _ustar_block(
        short, prefix, h.mode, uid, gid, size, mtime, h.typeflag, link_field, h.devmajor, h.devminor,
        owner_names[0], owner_names[1],
    )
    return out


@functools.lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@functools.lru_cache(maxsize=256)
def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def host_owner_names(uid: int, gid: int) -> tuple[str, str]:
    """The host's user and group names for a file's owner, as containers/storage 1.43 writes them
    into generated diffs (empty where the host has no such user or group)."""
    return _user_name(uid), _group_name(gid)


def _cstring(field_: bytes) -> bytes:
    i = field_.find(b"\0")
    return field_ if i < 0 else field_[:i]


# name, mode, uid, gid, size, mtime, chksum, typeflag, linkname, magic+version, uname, gname,
# devmajor, devminor, prefix: the ustar header block's fields
_HEADER_FIELDS = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s")
_PLAIN_TYPES = frozenset((b"0", b"\0", b"1", b"2", b"5"))
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # os.fsdecode's


def _plain_header(block: bytes) -> TarHeader | None:
    """The entry of a header block that needs no care: only octal numbers (none negative), an
    unsigned checksum that matches, a regular, link or directory type. None for anything
    else, which the careful parser then handles (and reports)."""
    (name, mode, uid, gid, size, mtime, chksum, typeflag, linkname, magic, _uname, _gname,
     devmajor, devminor, prefix) = _HEADER_FIELDS.unpack_from(block)
    if typeflag not in _PLAIN_TYPES or (
            mode[0] | uid[0] | gid[0] | size[0] | mtime[0] | chksum[0] | devmajor[0] | devminor[0]) & 0x80:
        return None
    try:
        if int(chksum.strip(b" \0") or b"0", 8) != block_sum(block) - sum(chksum) + 8 * 0x20:
            return None
        h = TarHeader(
            name="",
            typeflag=typeflag,
            mode=int(mode.strip(b" \0") or b"0", 8),
            uid=int(uid.strip(b" \0") or b"0", 8),
            gid=int(gid.strip(b" \0") or b"0", 8),
            size=int(size.strip(b" \0") or b"0", 8),
            mtime_ns=int(mtime.strip(b" \0") or b"0", 8) * 1_000_000_000,
            linkname=_cstring(linkname).decode(_FS_ENCODING, _FS_ERRORS) if linkname[0] else "",
            devmajor=int(devmajor.strip(b" \0") or b"0", 8),
            devminor=int(devminor.strip(b" \0") or b"0", 8),
        )
    except ValueError:
        return None
    if h.size < 0 or h.uid < 0 or h.gid < 0:
        return None
    name = _cstring(name)
    if magic[:6] == b"ustar\0":
        prefix = _cstring(prefix)
        if prefix:
            name = prefix + b"/" + name
    h.name = name.decode(_FS_ENCODING, _FS_ERRORS)
    return h


def _parse_number(field_: bytes, what: str, where: str) -> int:
    if field_ and field_[0] & 0x80:
        if field_[0] & 0x40:  # negative, two's complement
            return int.from_bytes(field_, "big", signed=True)
        return int.from_bytes(bytes([field_[0] & 0x7F]) + field_[1:], "big")
    text = field_.strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ArchiveError(f"{where}: invalid {what} field {field_!r}") from None


def _parse_pax_time(value: bytes, where: str) -> int:
    text = value.decode("ascii", "replace")
    neg = text.startswith("-")
    if neg:
        text = text[1:]
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ArchiveError(f"{where}: invalid PAX time {value!r}")
    ns = int(whole) * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
    return -ns if neg else ns


def _parse_pax(data: bytes, where: str) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # trailing NUL padding written by some tools
            break
        sp = data.find(b" ", pos)
        if sp < 0:
            raise ArchiveError(f"{where}: malformed PAX record")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise ArchiveError(f"{where}: malformed PAX record length") from None
        rec = data[pos : pos + length]
        if length <= sp - pos + 1 or len(rec) != length or not rec.endswith(b"\n"):
            raise ArchiveError(f"{where}: malformed PAX record")
        key, eq, value = rec[sp - pos + 1 : -1].partition(b"=")
        if not eq or not key:
            raise ArchiveError(f"{where}: malformed PAX record")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos += length
    return records


class _TarReader:
    """Incremental tar parser over a binary stream (ustar, GNU and PAX extensions)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.offset = 0
        self._remaining = 0  # unread data + padding of the current entry
        self._current: TarHeader | None = None

    def _read(self, n: int) -> bytes:
        first = self._stream.read(n)
        if len(first) == n or not first:
            self.offset += len(first)
            return first
        chunks: list[bytes] = [first]
        got = len(first)
        while got < n:
            b = self._stream.read(n - got)
            if not b:
                break
            chunks.append(b)
            got += len(b)
        self.offset += got
        return b"".join(chunks)

    def _read_full(self, n: int, where: "str | TarHeader") -> bytes:
        """Exactly *n* bytes; *where* (a text, or the entry being read) names the place in errors."""
        start = self.offset
        data = self._read(n)
        if len(data) != n:
            if not isinstance(where, str):
                where = where.where()
            raise ArchiveError(
                f"{where}: unexpected end of archive at offset {start + len(data)} "
                f"({n - len(data)} bytes missing)"
            )
        return data

    def _skip_rest(self) -> None:
        while self._remaining:
            where = self._current if self._current is not None else f"offset {self.offset}"
            got = len(self._read_full(min(self._remaining, _CHUNK), where))
            self._remaining -= got

    def drain(self) -> None:
        """Read whatever follows the end-of-archive marker (so stream hashes cover it)."""
        while self._read(_CHUNK):
            pass

    def read_data(self, size: int) -> bytes:
        """Up to *size* bytes of the current entry's data (b"" once it is consumed)."""
        h = self._current
        assert h is not None
        data_left = self._remaining - _pad_len(h.size)
        n = min(size, data_left)
        if n <= 0:
            return b""
        data = self._read_full(n, h)
        self._remaining -= n
        return data

    def next(self) -> TarHeader | None:
        """The next entry, or None at the end of the archive."""
        if self._remaining:
            self._skip_rest()
        self._current = None
        start = self.offset
        block = self._read(_BLOCK)
        if len(block) == _BLOCK:
            h = _plain_header(block)  # (None for a zero block too: its checksum cannot match)
            if h is not None:
                h.offset = start
                return self._started(h)
        return self._next_careful(block, start)

    def _started(self, h: TarHeader) -> TarHeader:
        """*h*, its type normalised, made the current entry."""
        if h.typeflag == _AREG:
            h.typeflag = _DIR if h.name.endswith("/") else _REG
        elif h.typeflag == _CONTIG:
            h.typeflag = _REG
        if h.typeflag in _HEADER_ONLY:
            h.size = 0
        self._remaining = h.size + _pad_len(h.size)
        self._current = h
        return h

    def _next_careful(self, block: bytes, start: int) -> TarHeader | None:
        """next() from the header *block* just read at *start*: every extension and check."""
        pax: dict[str, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        hoff = start
        while True:
            where = f"tar header at offset {hoff}"
            pending = bool(pax) or long_name is not None or long_link is not None
            if not block:
                if pending:
                    raise ArchiveError(f"{where}: unexpected end of archive after extended header")
                return None
            if len(block) < _BLOCK:
                raise ArchiveError(f"{where}: unexpected end of archive (truncated header)")
            if block == _ZERO_BLOCK:
                if pending:
                    raise ArchiveError(f"{where}: end-of-archive marker after extended header")
                second = self._read(_BLOCK)
                if not second or second == _ZERO_BLOCK:
                    return None
                if len(second) < _BLOCK:
                    raise ArchiveError(
                        f"tar header at offset {hoff + _BLOCK}: unexpected end of archive"
                    )
                raise ArchiveError(f"tar header at offset {hoff + _BLOCK}: invalid tar header")
            self._check_sum(block, where)
            typeflag = block[156:157]
            size = _parse_number(block[124:136], "size", where)
            if size < 0:
                raise ArchiveError(f"{where}: negative size")
            if typeflag in (_PAX, _GPAX, _GNU_LONGNAME, _GNU_LONGLINK):
                if size > _MAX_SPECIAL:
                    raise ArchiveError(f"{where}: extended header too large ({size} bytes)")
                data = self._read_full(size, where)
                self._read_full(_pad_len(size), where)
                if typeflag == _PAX:
                    pax.update(_parse_pax(data, where))
                elif typeflag == _GPAX:
                    _LOG.debug("%s: PAX global header ignored", where)
                elif typeflag == _GNU_LONGNAME:
                    long_name = _cstring(data)
                else:
                    long_link = _cstring(data)
                hoff = self.offset
                block = self._read(_BLOCK)
                continue
            h = self._build(block, typeflag, size, where)
            h.offset = start
            if long_name is not None:
                h.name = os.fsdecode(long_name)
            if long_link is not None:
                h.linkname = os.fsdecode(long_link)
            self._apply_pax(h, pax, where)
            return self._started(h)

    @staticmethod
    def _check_sum(block: bytes, where: str) -> None:
        stored = _parse_number(block[148:156], "checksum", where)
        unsigned = block_sum(block) - sum(block[148:156]) + 8 * 0x20
        if stored == unsigned:
            return
        # signed sum (old writers): only worth counting the high bytes when the unsigned one fails
        high = sum(1 for b in block[:148] if b & 0x80) + sum(1 for b in block[156:] if b & 0x80)
        if stored != unsigned - 256 * high:
            raise ArchiveError(f"{where}: header checksum mismatch (corrupt archive)")

    @staticmethod
    def _build(block: bytes, typeflag: bytes, size: int, where: str) -> TarHeader:
        name = _cstring(block[0:100])
        if block[257:263] == b"ustar\0":
            prefix = _cstring(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        return TarHeader(
            name=os.fsdecode(name),
            typeflag=typeflag,
            mode=_parse_number(block[100:108], "mode", where),
            uid=_parse_number(block[108:116], "uid", where),
            gid=_parse_number(block[116:124], "gid", where),
            size=size,
            mtime_ns=_parse_number(block[136:148], "mtime", where) * 1_000_000_000,
            linkname=os.fsdecode(_cstring(block[157:257])),
            devmajor=_parse_number(block[329:337], "devmajor", where),
            devminor=_parse_number(block[337:345], "devminor", where),
        )

    @staticmethod
    def _apply_pax(h: TarHeader, pax: dict[str, bytes], where: str) -> None:
        for key, value in pax.items():
            try:
                if key.startswith("SCHILY.xattr."):
                    h.xattrs[key[len("SCHILY.xattr.") :]] = value
                elif key.startswith("GNU.sparse."):
                    raise ArchiveError(f"{where}: GNU sparse files are not supported")
                elif not value:
                    continue
                elif key == "path":
                    h.name = os.fsdecode(value)
                elif key == "linkpath":
                    h.linkname = os.fsdecode(value)
                elif key == "size":
                    h.size = int(value)
                elif key == "uid":
                    h.uid = int(value)
                elif key == "gid":
                    h.gid = int(value)
                elif key == "mtime":
                    h.mtime_ns = _parse_pax_time(value, where)
                elif key == "atime":
                    h.atime_ns = _parse_pax_time(value, where)
            except ValueError:
                raise ArchiveError(f"{where}: invalid PAX value for {key!r}: {value!r}") from None
        if h.size < 0 or h.uid < 0 or h.gid < 0:
            raise ArchiveError(f"{where}: negative size or owner")


class _GeneratorStream(io.RawIOBase):
    """A readable raw stream fed lazily by an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: "bytearray | memoryview") -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        super().close()


def chunks_stream(chunks: Iterator[bytes]) -> BinaryIO:
    """A buffered, read-only stream over *chunks*, produced lazily as it is read."""
    return io.BufferedReader(_GeneratorStream(chunks), buffer_size=1 << 16)


# ---------------------------------------------------------------------------- paths


def _clean_name(raw: str, where: "str | TarHeader") -> list[str]:
    """Lexically cleaned components of an archive path, relative to the root.

    Raises UnsafeArchive for names that climb above the root or end in ``..``; *where* (a
    text, or the entry) names the place in errors."""
    if "/." not in raw and "//" not in raw and not raw.startswith(".") and "\0" not in raw:
        # the usual name: nothing to clean
        parts = raw.split("/")
        if parts[-1] == "":
            parts.pop()
        if "" not in parts:
            return parts
    if not isinstance(where, str):
        where = where.where()
    if "\0" in raw:
        raise ArchiveError(f"{where}: name contains a NUL byte")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if parts and parts[-1] == "..":
        raise UnsafeArchive(f"{where}: name {raw!r} ends in '..'")
    out: list[str] = []
    for p in parts:
        if p == "..":
            if not out:
                raise UnsafeArchive(f"{where}: {raw!r} points outside the destination")
            out.pop()
        else:
            out.append(p)
    return out


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _libc_syscall() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).syscall  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_RESOLVE_NO_MAGICLINKS, _RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 0x02, 0x04, 0x08
_syscall = _libc_syscall()
_openat2_usable: bool | None = None if _syscall is not None else False
_BENEATH_HOW = _OpenHow(_DIR_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
_BENEATH_HOW_SIZE = ctypes.c_size_t(ctypes.sizeof(_OpenHow))
_BENEATH_HOW_REF = ctypes.byref(_BENEATH_HOW)
_SYS_OPENAT2_NR = ctypes.c_long(_SYS_OPENAT2)


def _open_beneath(root_fd: int, comps: list[str]) -> int | None:
    """The directory *comps* below *root_fd* opened with one openat2 (no symlink anywhere, no
    ``..``); None when that is not possible (then the caller walks component by component)."""
    global _openat2_usable
    if "." in comps or ".." in comps or "" in comps:
        return None
    path = os.fsencode("/".join(comps))
    if b"\x00" in path:
        return None
    assert _syscall is not None
    fd = _syscall(_SYS_OPENAT2_NR, ctypes.c_int(root_fd), path, _BENEATH_HOW_REF, _BENEATH_HOW_SIZE)
    if fd >= 0:
        _openat2_usable = True
        return int(fd)
    if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM) and _openat2_usable is None:
        _openat2_usable = False  # an old kernel or a seccomp filter
    return None


def _open_dir(
    root_fd: int,
    comps: Iterable[str],
    *,
    follow: bool,
    create: Callable[[int, str], None] | None = None,
) -> tuple[int, list[str]]:
    """Open the directory *comps* below *root_fd*; return (new fd, real components).

    No component is ever followed by the kernel.  With *follow*, a symlink component is
    resolved by hand as if *root_fd* were ``/`` (``..`` stops at the root), so the walk
    cannot leave the tree; without it a symlink raises UnsafeArchive.  *create* makes a
    missing component (then it is opened).  The caller closes the returned fd."""
    comps = list(comps)
    if comps and _openat2_usable is not False:
        # fast path: one openat2 that refuses every symlink and never leaves root_fd gives
        # the same directory as the walk below when every component is a real directory
        # (anything else, including a missing component, falls back to the walk)
        fast = _open_beneath(root_fd, comps)
        if fast is not None:
            return fast, comps
    stack: list[int] = []
    names: list[str] = []
    pending = list(comps)
    pending.reverse()
    hops = 0
    try:
        while pending:
            c = pending.pop()
            if c in ("", "."):
                continue
            if c == "..":
                if stack:
                    os.close(stack.pop())
                    names.pop()
                continue
            cur = stack[-1] if stack else root_fd
            try:
                fd = os.open(c, _DIR_FLAGS, dir_fd=cur)
            except FileNotFoundError:
                if create is None:
                    raise
                create(cur, c)
                fd = os.open(c, _DIR_FLAGS, dir_fd=cur)
            except OSError as e:
                if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                st = os.stat(c, dir_fd=cur, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", "/".join(names + [c]))
                if not follow:
                    raise UnsafeArchive(
                        f"path component {'/'.join(names + [c])!r} is a symbolic link"
                    ) from None
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", c) from None
                target = os.readlink(c, dir_fd=cur)
                if target.startswith("/"):
                    while stack:
                        os.close(stack.pop())
                    names.clear()
                parts = target.split("/")
                parts.reverse()
                pending.extend(parts)
                continue
            stack.append(fd)
            names.append(c)
        result = stack.pop() if stack else os.dup(root_fd)
        return result, names
    finally:
        for fd in stack:
            os.close(fd)


def _process_umask() -> int | None:
    """This process's umask, read without changing it (``/proc/self/status``, Linux 4.7+)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError) as e:
        _LOG.debug("umask not readable from /proc/self/status: %s", e)
    return None


def _has_default_acl(dir_fd: int) -> bool:
    """Whether the directory carries a default ACL (which, not the umask, shapes new files' modes).
    True when that cannot be told, so that the caller stays on the safe side."""
    try:
        os.getxattr(dir_fd, _ACL_DEFAULT_XATTR)
    except OSError as e:
        return e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
    return True


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _proc_path(dir_fd: int, name: str) -> str:
    """A path naming *name* inside the directory open as *dir_fd* (for l*xattr calls)."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def _remove_at(dir_fd: int, name: str, st: os.stat_result | None = None) -> None:
    """Remove *name* (a whole tree if it is a directory) without following symlinks."""
    if st is None:
        st = _lstat_at(dir_fd, name)
        if st is None:
            return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _ns_parts(ns: int) -> tuple[int, int]:
    return ns // 1_000_000_000, ns % 1_000_000_000


# ---------------------------------------------------------------------------- changes


class _Node:
    __slots__ = ("st", "cap", "children", "added")

    def __init__(self, st: os.stat_result | None, cap: bytes | None) -> None:
        self.st = st
        self.cap = cap
        self.children: dict[str, _Node] = {}
        self.added = False

    @property
    def is_dir(self) -> bool:
        return self.st is None or stat.S_ISDIR(self.st.st_mode)


def _get_capability(dir_fd: int, name: str) -> bytes | None:
    try:
        return os.getxattr(_proc_path(dir_fd, name), _CAPABILITY_XATTR, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise


def _same_fs_time(a_ns: int, b_ns: int) -> bool:
    """containers/storage 1.43 sameFsTime: equal, or same second with either nsec zero."""
    if a_ns == b_ns:
        return True
    a_s, a_n = _ns_parts(a_ns)
    b_s, b_n = _ns_parts(b_ns)
    return a_s == b_s and (a_n == 0 or b_n == 0)


def _stat_different(old: os.stat_result, new: os.stat_result) -> bool:
    if (
        old.st_mode != new.st_mode
        or old.st_uid != new.st_uid
        or old.st_gid != new.st_gid
        or old.st_rdev != new.st_rdev
    ):
        return True
    # Go tests ``mode & S_IFDIR != S_IFDIR``, which also skips block devices and sockets.
    if old.st_mode & stat.S_IFDIR != stat.S_IFDIR:
        if not _same_fs_time(old.st_mtime_ns, new.st_mtime_ns) or old.st_size != new.st_size:
            return True
    return False


def _sorted_names(dir_fd: int | None) -> list[tuple[str, int]]:
    if dir_fd is None:
        return []
    with os.scandir(dir_fd) as it:
        entries = [(e.name, e.inode()) for e in it]
    entries.sort(key=lambda e: os.fsencode(e[0]))
    return entries


def _merged_names(fd1: int | None, fd2: int | None, same_dev: bool) -> list[str]:
    """Union of both listings, minus names that are the very same inode on the same device."""
    n1, n2 = _sorted_names(fd1), _sorted_names(fd2)
    out: list[str] = []
    i = j = 0
    while i < len(n1) and j < len(n2):
        a, b = os.fsencode(n1[i][0]), os.fsencode(n2[j][0])
        if a < b:
            out.append(n1[i][0])
            i += 1
        elif a > b:
            out.append(n2[j][0])
            j += 1
        else:
            if n1[i][1] != n2[j][1] or not same_dev:
                out.append(n1[i][0])
            i += 1
            j += 1
    out.extend(n[0] for n in n1[i:])
    out.extend(n[0] for n in n2[j:])
    return out


@dataclass
class _WalkFrame:
    fd1: int | None
    fd2: int | None
    node1: _Node | None
    node2: _Node | None
    names: Iterator[str]


def _collect(old_dir: str | None, new_dir: str) -> tuple[_Node, _Node]:
    """Parallel walk of both trees (Go's collectFileInfoForChanges)."""
    root1, root2 = _Node(None, None), _Node(None, None)
    fd2 = os.open(new_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fd1: int | None = None
    frames: list[_WalkFrame] = []
    try:
        if old_dir is not None:
            fd1 = os.open(old_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        same_dev = fd1 is not None and os.fstat(fd1).st_dev == os.fstat(fd2).st_dev
        frames.append(_WalkFrame(fd1, fd2, root1, root2, iter(_merged_names(fd1, fd2, same_dev))))
        fd1 = None  # owned by the frame now
        while frames:
            fr = frames[-1]
            name = next(fr.names, None)
            if name is None:
                frames.pop()
                for fd in (fr.fd1, fr.fd2):
                    if fd is not None and fd != fd2:
                        os.close(fd)
                continue
            c1 = _lstat_at(fr.fd1, name) if fr.fd1 is not None else None
            c2 = _lstat_at(fr.fd2, name) if fr.fd2 is not None else None
            n1 = n2 = None
            if c1 is not None and fr.fd1 is not None and fr.node1 is not None:
                n1 = _Node(c1, _get_capability(fr.fd1, name))
                fr.node1.children[name] = n1
            if c2 is not None and fr.fd2 is not None and fr.node2 is not None:
                n2 = _Node(c2, _get_capability(fr.fd2, name))
                fr.node2.children[name] = n2
            d1 = c1 is not None and stat.S_ISDIR(c1.st_mode)
            d2 = c2 is not None and stat.S_ISDIR(c2.st_mode)
            if not (d1 or d2):
                continue
            cfd1 = os.open(name, _DIR_FLAGS, dir_fd=fr.fd1) if d1 and fr.fd1 is not None else None
            try:
                cfd2 = os.open(name, _DIR_FLAGS, dir_fd=fr.fd2) if d2 and fr.fd2 is not None else None
            except BaseException:
                if cfd1 is not None:
                    os.close(cfd1)
                raise
            frames.append(_WalkFrame(cfd1, cfd2, n1, n2, iter(())))
            same = c1 is not None and c2 is not None and c1.st_dev == c2.st_dev
            frames[-1].names = iter(_merged_names(cfd1, cfd2, same))
    finally:
        for fr in frames:
            for fd in (fr.fd1, fr.fd2):
                if fd is not None and fd != fd2:
                    os.close(fd)
        if fd1 is not None:
            os.close(fd1)
        os.close(fd2)
    return root1, root2


def _join(parent: str, name: str) -> str:
    return ("/" if parent == "/" else parent + "/") + name


def _compute_changes(new_root: _Node, old_root: _Node) -> list[Change]:
    """Go's FileInfo.addChanges, iteratively (deep trees must not hit the recursion limit)."""
    out: list[Change] = []
    # frames: (True, new, old, path) = enter; (False, new, path, size_at_entry) = exit
    stack: list[tuple[bool, _Node, _Node | None, str, int]] = [(True, new_root, old_root, "/", 0)]
    while stack:
        enter, new, old, path, size_at_entry = stack.pop()
        if not enter:
            if len(out) > size_at_entry and new.is_dir and not new.added and path != "/":
                out.append(Change(path, ChangeKind.MODIFY))
            continue
        size_at_entry = len(out)
        if old is None:
            out.append(Change(path, ChangeKind.ADD))
            new.added = True
        old_children = dict(old.children) if old is not None and new.is_dir else {}
        stack.append((False, new, None, path, size_at_entry))
        for name, nchild in new.children.items():
            ochild = old_children.pop(name, None)
            cpath = _join(path, name)
            if ochild is not None:
                assert ochild.st is not None and nchild.st is not None
                if _stat_different(ochild.st, nchild.st) or ochild.cap != nchild.cap:
                    out.append(Change(cpath, ChangeKind.MODIFY))
                    nchild.added = True
            stack.append((True, nchild, ochild, cpath, 0))
        for name in old_children:
            out.append(Change(_join(path, name), ChangeKind.DELETE))
    return out


def _sort_changes(changes: Iterable[Change]) -> list[Change]:
    return sorted(changes, key=lambda c: os.fsencode(c.path))


def changes_dirs(layer: str, parent: str | None) -> list[Change]:
    """Changes that turn *parent* into *layer* (containers/storage ``ChangesDirs``).

    Add: only in *layer*; Delete: only in *parent* (a deleted directory is one Delete);
    Modify: type/permission bits, owner, rdev, ``security.capability`` or (non-directories)
    size or mtime differ, and any directory that contains an Add/Delete/Modify.  Paths are
    absolute; the result is sorted by path.  With *parent* None everything is an Add."""
    old_root, new_root = _collect(parent, layer)
    return _sort_changes(_compute_changes(new_root, old_root))


def changes_size(layer: str, changes: list[Change]) -> int:
    """Sum of sizes of added/modified non-directories in *layer* (Go's ``ChangesSize``);
    files with several links are counted once per inode."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for ch in changes:
        if ch.kind == ChangeKind.DELETE:
            continue
        path = os.path.join(layer, ch.path.lstrip("/"))
        try:
            st = os.lstat(path)
        except OSError as e:
            _LOG.error("can not stat %r: %s", path, e)
            continue
        if stat.S_ISDIR(st.st_mode):
            continue
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
        total += st.st_size
    return total


# ---------------------------------------------------------------------------- export


def _type_bits(mode: int) -> tuple[bytes, int]:
    fmt = stat.S_IFMT(mode)
    if fmt == stat.S_IFREG:
        return _REG, fmt
    if fmt == stat.S_IFDIR:
        return _DIR, fmt
    if fmt == stat.S_IFLNK:
        return _SYM, fmt
    if fmt == stat.S_IFCHR:
        return _CHR, fmt
    if fmt == stat.S_IFBLK:
        return _BLK, fmt
    if fmt == stat.S_IFIFO:
        return _FIFO, fmt
    raise ValueError(f"unsupported file type {oct(fmt)}")


def _read_export_xattrs(path: str | int) -> dict[str, bytes]:
    """security.capability and user.* xattrs (what Go's addTarFile archives)."""
    follow = isinstance(path, int)
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out: dict[str, bytes] = {}
    for name in names:
        if name == _CAPABILITY_XATTR or name.startswith("user."):
            try:
                out[name] = os.getxattr(path, name, follow_symlinks=follow)
            except OSError as e:
                if e.errno == errno.ENODATA:
                    continue
                raise
    return out


class TreeExporter:
    """Turns files of a tree (addressed through a root fd) into tar chunks."""

    def __init__(self, root_fd: int, mappings: IDMappings) -> None:
        self.root_fd = root_fd
        self.mappings = mappings
        self.seen: dict[tuple[int, int], str] = {}

    def emit(
        self, dir_fd: int, leaf: str, name: str
    ) -> Generator[bytes, None, os.stat_result | None]:
        """Chunks for *leaf* in *dir_fd*, archived as *name*; returns its lstat (or None)."""
        st = _lstat_at(dir_fd, leaf)
        if st is None:
            _LOG.warning("not archiving %r: it disappeared", name)
            return None
        fd: int | None = None
        try:
            if stat.S_ISREG(st.st_mode):
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                fd = os.open(leaf, flags, dir_fd=dir_fd)
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    _LOG.warning("not archiving %r: it changed type while being read", name)
                    return None
            try:
                typeflag, fmt = _type_bits(st.st_mode)
            except ValueError:
                _LOG.warning("not archiving %r: sockets cannot be stored in tar", name)
                return st
            is_dir = typeflag == _DIR
            h = TarHeader(
                name=name + "/" if is_dir else name,
                typeflag=typeflag,
                mode=fmt | stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                mtime_ns=(st.st_mtime_ns // 1_000_000_000) * 1_000_000_000,
            )
            h.uname, h.gname = host_owner_names(st.st_uid, st.st_gid)
            if typeflag == _SYM:
                h.linkname = os.readlink(leaf, dir_fd=dir_fd)
            elif typeflag in (_CHR, _BLK):
                h.devmajor, h.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            h.xattrs = _read_export_xattrs(fd if fd is not None else _proc_path(dir_fd, leaf))
            if typeflag == _REG:
                h.size = st.st_size
            if not is_dir and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                first = self.seen.get(key)
                if first is not None:
                    h.typeflag, h.linkname, h.size = _LNK, first, 0
                else:
                    self.seen[key] = name
            base = name.rsplit("/", 1)[-1]
            if not base.startswith(WHITEOUT_PREFIX) and not self.mappings.empty:
                try:
                    h.uid, h.gid = self.mappings.to_container(st.st_uid, st.st_gid)
                except ValueError as e:
                    raise ArchiveError(f"cannot archive {name!r}: {e}") from e
            yield encode_header(h)
            if h.typeflag == _REG and h.size:
                assert fd is not None
                yield from _file_chunks(fd, h.size, name)
            return st
        finally:
            if fd is not None:
                os.close(fd)


def _file_chunks(fd: int, size: int, name: str) -> Iterator[bytes]:
    left = size
    while left:
        chunk = os.read(fd, min(left, _CHUNK))
        if not chunk:
            _LOG.warning("%r shrank while being archived; padding with zeros", name)
            while left:
                n = min(left, _CHUNK)
                yield bytes(n)
                left -= n
            break
        left -= len(chunk)
        yield chunk
    pad = _pad_len(size)
    if pad:
        yield bytes(pad)


def _sorted_listing(dir_fd: int) -> list[str]:
    return sorted(os.listdir(dir_fd), key=os.fsencode)


def _tar_tree_chunks(root: str, mappings: IDMappings) -> Iterator[bytes]:
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    frames: list[tuple[int, str, Iterator[str]]] = []
    try:
        ex = TreeExporter(root_fd, mappings)
        frames.append((os.dup(root_fd), "", iter(_sorted_listing(root_fd))))
        while frames:
            fd, prefix, names = frames[-1]
            leaf = next(names, None)
            if leaf is None:
                frames.pop()
                os.close(fd)
                continue
            name = prefix + leaf
            st = yield from ex.emit(fd, leaf, name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                cfd = os.open(leaf, _DIR_FLAGS, dir_fd=fd)
                frames.append((cfd, name + "/", iter(_sorted_listing(cfd))))
        yield bytes(2 * _BLOCK)
    finally:
        for fd, _, _ in frames:
            os.close(fd)
        os.close(root_fd)


def tar_tree(root: str, mappings: IDMappings) -> BinaryIO:
    """Lazily produced uncompressed tar of everything below *root* (not *root* itself).

    Order is Go's ``filepath.Walk`` order; owners are mapped host -> container through
    *mappings*; hardlinks within the tree become link entries; security.capability and
    user.* xattrs go into PAX records; mtimes are truncated to seconds (as Go does)."""
    return chunks_stream(_tar_tree_chunks(root, mappings))


def _export_chunks(layer: str, changes: list[Change], mappings: IDMappings) -> Iterator[bytes]:
    root_fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    cached: tuple[tuple[str, ...], int] | None = None
    try:
        ex = TreeExporter(root_fd, mappings)
        for ch in _sort_changes(changes):
            comps = _clean_name(ch.path, f"change {ch.path!r}")
            if not comps:
                raise ValueError(f"change {ch.path!r} names the layer root")
            if ch.kind == ChangeKind.DELETE:
                wh = "/".join(comps[:-1] + [WHITEOUT_PREFIX + comps[-1]])
                now = time.time_ns() // 1_000_000_000 * 1_000_000_000
                yield encode_header(TarHeader(name=wh, typeflag=_REG, mtime_ns=now))
                continue
            parent = tuple(comps[:-1])
            if cached is None or cached[0] != parent:
                if cached is not None:
                    os.close(cached[1])
                    cached = None
                try:
                    pfd, _ = _open_dir(root_fd, parent, follow=False)
                except FileNotFoundError:
                    _LOG.warning("not archiving %r: its directory disappeared", ch.path)
                    continue
                cached = (parent, pfd)
            yield from ex.emit(cached[1], comps[-1], "/".join(comps))
        yield bytes(2 * _BLOCK)
    finally:
        if cached is not None:
            os.close(cached[1])
        os.close(root_fd)


def export_changes(layer: str, changes: list[Change], mappings: IDMappings) -> BinaryIO:
    """Lazily produced uncompressed tar of *changes* taken from *layer* (Go's ExportChanges).

    Changes are emitted sorted by path; Add/Modify carry the entry from *layer* (parent
    directories are present because :func:`changes_dirs` lists them as Modify); Delete
    becomes an empty AUFS whiteout file ``dir/.wh.name``.  Entries that vanish meanwhile
    are skipped with a warning; an owner outside *mappings* raises ArchiveError on read."""
    return chunks_stream(_export_chunks(layer, list(changes), mappings))


# ---------------------------------------------------------------------------- apply


_WHITEOUT_MODES = ("delete", "keep", "overlay")


class _Applier:
    def __init__(self, dest: str, opts: ApplyDiffOpts, whiteouts: str) -> None:
        self.opts = opts
        self.whiteouts = whiteouts
        self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.size = 0
        self.unpacked: set[str] = set()
        self.ancestors: set[str] = set()
        self.dir_times: list[tuple[list[str], int, int]] = []
        self.root_ids = opts.mappings.root_pair()
        self._identity = opts.mappings.empty  # no ID maps: archive IDs are host IDs
        #: Owners and modes are set as the archive says, failures are errors: no special cases.
        self._plain_meta = opts.force_mask is None and not opts.ignore_chown_errors
        # Open parent directories by archive path (entries come grouped by directory). Dropped,
        # all but the one in use, whenever a directory or symlink is removed or replaced (see
        # _removing): a cached fd must never stand for a path that now names something else.
        self._dirs: dict[tuple[str, ...], tuple[int, list[str]]] = {}
        # A regular file is created with its final mode and owned by this process. Where that
        # already is what the archive asks for, fchown/fchmod are skipped (two of the six
        # calls per file). Owner: the file's gid comes from its parent when that is
        # set-gid (or the fs mounted grpid), so the parent's gid must be ours too. Mode: the
        # umask shapes it, unless the parent has a default ACL. Both facts are kept per cached
        # parent fd (_parent_facts), and forgotten whenever a directory's metadata is set.
        self._creator = (os.geteuid(), os.getegid())
        umask = _process_umask()
        self._umask = 0o777 if umask is None else umask  # unknown: only mode 0 passes untouched
        self._parent_facts: dict[int, tuple[int, bool]] = {}

    def close(self) -> None:
        self._forget_dirs()
        os.close(self.root_fd)

    def _forget_dirs(self, keep: int = -1) -> None:
        """Close the cached parent fds, except *keep* (still in use), which stays cached."""
        kept = {k: v for k, v in self._dirs.items() if v[0] == keep}
        for fd, _ in self._dirs.values():
            if fd != keep and fd != self.root_fd:
                os.close(fd)
        self._dirs = kept
        self._parent_facts.clear()  # (keyed by fd: a closed fd's number may come back)

    def _new_file_meta_needed(self, pfd: int, uid: int, gid: int, mode: int) -> tuple[bool, bool]:
        """(fchown needed, fchmod needed) for a file or node just created in *pfd* with
        ``mode & 0o777``."""
        facts = self._parent_facts.get(pfd)
        if facts is None:
            facts = self._parent_facts[pfd] = (os.fstat(pfd).st_gid, _has_default_acl(pfd))
        parent_gid, default_acl = facts
        euid, egid = self._creator
        chown = uid != euid or gid != egid or parent_gid != egid
        # set-id and sticky bits are not given to open() (and chown would clear set-id bits)
        chmod = default_acl or mode & (self._umask | 0o7000) != 0
        return chown, chmod

    # -- helpers

    def _host_ids(self, h: TarHeader) -> tuple[int, int]:
        if self._identity:
            return h.uid, h.gid
        try:
            return self.opts.mappings.to_host(h.uid, h.gid)
        except ValueError as e:
            raise ArchiveError(f"{h.where()}: {e}") from e

    def _chown(self, fn: Callable[[], None], what: str) -> None:
        try:
            fn()
        except OSError as e:
            if not self.opts.ignore_chown_errors:
                raise
            _LOG.warning("ignoring chown error on %s: %s", what, e)

    def _mkdir_parent(self, dir_fd: int, name: str) -> None:
        mode = self.opts.force_mask if self.opts.force_mask is not None else 0o755
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        uid, gid = self.root_ids
        self._chown(lambda: os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False), name)
        os.chmod(name, mode, dir_fd=dir_fd, follow_symlinks=False)

    def _removing(self, pfd: int, st: os.stat_result) -> None:
        """About to remove something below *pfd*: a directory or a symlink may be on the path of
        a cached parent, so those are dropped (other files cannot be)."""
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            self._forget_dirs(keep=pfd)

    def _parent(self, comps: list[str]) -> tuple[int, list[str]]:
        """(fd, real path) of the entry's parent directory; the fd is cached: do not close it."""
        key = tuple(comps[:-1])
        found = self._dirs.get(key)
        if found is not None:
            return found
        if key:
            found = _open_dir(self.root_fd, key, follow=True, create=self._mkdir_parent)
            if len(self._dirs) >= _PARENT_CACHE:
                self._forget_dirs()
        else:
            found = (self.root_fd, [])
        self._dirs[key] = found
        return found

    def _record(self, real: list[str]) -> None:
        key = "/".join(real)
        self.unpacked.add(key)
        parent = key.rpartition("/")[0]
        while parent and parent not in self.ancestors:  # (usually known already: one lookup)
            self.ancestors.add(parent)
            parent = parent.rpartition("/")[0]

    # -- main loop

    def run(self, stream: BinaryIO) -> int:
        reader = _TarReader(stream)
        while True:
            h = reader.next()
            if h is None:
                break
            try:
                self._entry(h, reader)
            except ArchiveError as e:
                msg = str(e)
                if h.where() not in msg:
                    msg = f"{h.where()}: {msg}"
                raise type(e)(msg) from e
            except (OSError, ValueError) as e:
                raise ArchiveError(f"{h.where()}: {e}") from e
        reader.drain()
        self._finish_dirs()
        return self.size

    def _entry(self, h: TarHeader, reader: _TarReader) -> None:
        comps = _clean_name(h.name, h)
        if comps and comps[0].startswith(WHITEOUT_META_PREFIX) and comps != [WHITEOUT_OPAQUE]:
            _LOG.debug("%s: AUFS metadata skipped", h.where())
            return
        base = comps[-1] if comps else ""
        if base.startswith(WHITEOUT_PREFIX) and self.whiteouts != "keep":
            self._whiteout(h, comps)
            return
        if not comps:
            self._root_entry(h)
            return
        if h.typeflag in (_CHR, _BLK) and not self.opts.allow_devices:
            raise UnsafeArchive(f"{h.where()}: device nodes are not allowed in this layer")
        pfd, real_parent = self._parent(comps)
        self._create(h, pfd, comps[-1], reader)
        self._record(real_parent + [comps[-1]])
        if h.typeflag == _DIR:
            self.dir_times.append((real_parent + [comps[-1]], *self._times(h)))

    @staticmethod
    def _times(h: TarHeader) -> tuple[int, int]:
        atime = h.atime_ns if h.atime_ns is not None and h.atime_ns > h.mtime_ns else h.mtime_ns
        return atime, h.mtime_ns

    def _root_entry(self, h: TarHeader) -> None:
        if h.typeflag != _DIR:
            raise UnsafeArchive(f"{h.where()}: a non-directory cannot replace the destination root")
        uid, gid = self._host_ids(h)
        fd = self.root_fd
        self._parent_facts.clear()
        self._chown(lambda: os.fchown(fd, uid, gid), "the root")
        self._set_xattrs(h, fd, None, None)
        os.fchmod(fd, self._mode(h))
        self.dir_times.append(([], *self._times(h)))

    def _mode(self, h: TarHeader) -> int:
        return self.opts.force_mask if self.opts.force_mask is not None else h.mode & 0o7777

    def _whiteout(self, h: TarHeader, comps: list[str]) -> None:
        base = comps[-1]
        pfd, real_parent = self._parent(comps)
        if base == WHITEOUT_OPAQUE:
            if self.whiteouts == "overlay":
                os.setxattr(pfd, _OVERLAY_OPAQUE_XATTR, b"y")
            else:
                self._forget_dirs(keep=pfd)
                self._clear_opaque(pfd, "/".join(real_parent))
            return
        orig = base[len(WHITEOUT_PREFIX) :]
        if orig in ("", ".", ".."):
            raise UnsafeArchive(f"{h.where()}: invalid whiteout name {base!r}")
        existing = _lstat_at(pfd, orig)
        if existing is not None:
            self._removing(pfd, existing)
            _remove_at(pfd, orig, existing)
        if self.whiteouts == "overlay":
            uid, gid = self._host_ids(h)
            os.mknod(orig, stat.S_IFCHR | 0, os.makedev(0, 0), dir_fd=pfd)
            if self._new_file_meta_needed(pfd, uid, gid, 0)[0]:  # (born ours, like a new file)
                self._chown(
                    lambda: os.chown(orig, uid, gid, dir_fd=pfd, follow_symlinks=False), orig
                )

    def _clear_opaque(self, dir_fd: int, prefix: str) -> None:
        """Remove everything below *dir_fd* that this archive did not put there."""
        stack: list[tuple[int, str]] = [(os.dup(dir_fd), prefix)]
        try:
            while stack:
                fd, pre = stack.pop()
                try:
                    for name in os.listdir(fd):
                        key = f"{pre}/{name}" if pre else name
                        st = _lstat_at(fd, name)
                        if st is None:
                            continue
                        if key in self.unpacked or key in self.ancestors:
                            if stat.S_ISDIR(st.st_mode):
                                stack.append((os.open(name, _DIR_FLAGS, dir_fd=fd), key))
                            continue
                        _remove_at(fd, name, st)
                finally:
                    os.close(fd)
        finally:
            for fd, _ in stack:
                os.close(fd)

    def _replace(self, pfd: int, leaf: str, keep_dir: bool = False) -> None:
        """Remove what is at *leaf* (nothing is fine), except a directory when *keep_dir*."""
        existing = _lstat_at(pfd, leaf)
        if existing is not None and not (keep_dir and stat.S_ISDIR(existing.st_mode)):
            self._removing(pfd, existing)
            _remove_at(pfd, leaf, existing)

    def _create(self, h: TarHeader, pfd: int, leaf: str, reader: _TarReader) -> None:
        uid, gid = self._host_ids(h)
        t = h.typeflag
        # Directories and regular files (most entries) are created first and only on EEXIST is
        # the old entry looked at and replaced; other kinds replace whatever is there first.
        if t == _DIR:
            try:
                os.mkdir(leaf, 0o700, dir_fd=pfd)
            except FileExistsError:
                self._replace(pfd, leaf, keep_dir=True)  # an existing directory is kept as it is
                with contextlib.suppress(FileExistsError):
                    os.mkdir(leaf, 0o700, dir_fd=pfd)
            fd = os.open(leaf, _DIR_FLAGS, dir_fd=pfd)
            self._parent_facts.clear()  # this directory may be a cached parent: its facts change
            try:
                self._fd_meta(h, fd, uid, gid, leaf)
            finally:
                os.close(fd)
        elif t == _REG:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            quick = self._plain_meta and not h.xattrs
            mode = h.mode & 0o7777
            initial = mode & 0o777 if quick else 0o600
            try:
                fd = os.open(leaf, flags, initial, dir_fd=pfd)
            except FileExistsError:
                self._replace(pfd, leaf)
                fd = os.open(leaf, flags, initial, dir_fd=pfd)
            try:
                left = h.size
                while left:
                    chunk = reader.read_data(min(left, _CHUNK))
                    if not chunk:  # (read_data raises on a short archive; this guards the loop)
                        raise ArchiveError(f"{h.where()}: the entry's data ended early")
                    written = os.write(fd, chunk)
                    if written != len(chunk):  # a short write: the rest in a loop
                        _write_all(fd, memoryview(chunk)[written:])
                    left -= len(chunk)
                self.size += h.size
                if quick:  # the usual file: _fd_meta's calls inlined, each only where it changes something
                    chown, chmod = self._new_file_meta_needed(pfd, uid, gid, mode)
                    if chown:
                        os.fchown(fd, uid, gid)
                    if chmod:
                        os.fchmod(fd, mode)
                else:
                    self._fd_meta(h, fd, uid, gid, leaf)
                os.utime(fd, ns=self._times(h))
            finally:
                os.close(fd)
        elif t == _SYM:
            self._replace(pfd, leaf)
            os.symlink(h.linkname, leaf, dir_fd=pfd)
            self._path_meta(h, pfd, leaf, uid, gid, is_symlink=True)
        elif t == _LNK:
            self._replace(pfd, leaf)
            self._hardlink(h, pfd, leaf)
            st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
            self._path_meta(h, pfd, leaf, uid, gid, is_symlink=stat.S_ISLNK(st.st_mode))
        elif t in (_CHR, _BLK, _FIFO):
            kind = {_CHR: stat.S_IFCHR, _BLK: stat.S_IFBLK, _FIFO: stat.S_IFIFO}[t]
            dev = os.makedev(h.devmajor, h.devminor) if t != _FIFO else 0
            self._replace(pfd, leaf)
            os.mknod(leaf, kind | 0o600, dev, dir_fd=pfd)
            self._path_meta(h, pfd, leaf, uid, gid, is_symlink=False)
        else:
            raise ArchiveError(f"{h.where()}: unhandled tar entry type {t!r}")

    def _hardlink(self, h: TarHeader, pfd: int, leaf: str) -> None:
        tcomps = _clean_name(h.linkname, f"{h.where()} (hardlink target)")
        if not tcomps:
            raise UnsafeArchive(f"{h.where()}: hardlink to the destination root")
        try:
            tfd, _ = _open_dir(self.root_fd, tcomps[:-1], follow=False)
        except FileNotFoundError:
            raise ArchiveError(f"{h.where()}: hardlink target {h.linkname!r} not found") from None
        try:
            tst = _lstat_at(tfd, tcomps[-1])
            if tst is None:
                raise ArchiveError(f"{h.where()}: hardlink target {h.linkname!r} not found")
            if stat.S_ISDIR(tst.st_mode):
                raise UnsafeArchive(f"{h.where()}: hardlink target {h.linkname!r} is a directory")
            os.link(tcomps[-1], leaf, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def _set_xattrs(self, h: TarHeader, fd: int | None, pfd: int | None, leaf: str | None) -> None:
        for key in sorted(h.xattrs):
            if key.startswith("trusted.overlay."):
                _LOG.warning("%s: refusing to set %s from an archive", h.where(), key)
                continue
            try:
                if fd is not None:
                    os.setxattr(fd, key, h.xattrs[key])
                else:
                    assert pfd is not None and leaf is not None
                    os.setxattr(_proc_path(pfd, leaf), key, h.xattrs[key], follow_symlinks=False)
            except OSError as e:
                if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    _LOG.warning("%s: xattr %s not supported here: %s", h.where(), key, e)
                    continue
                if e.errno == errno.EPERM and key.startswith("user.") and fd is None:
                    _LOG.warning("%s: user xattr %s not allowed on this file type", h.where(), key)
                    continue
                raise

    def _override_stat(self, h: TarHeader, target: int | str, uid: int, gid: int) -> None:
        if self.opts.force_mask is None:
            return
        value = f"{uid}:{gid}:0{h.mode & 0o7777:o}".encode()
        os.setxattr(target, OVERRIDE_STAT_XATTR, value)

    def _fd_meta(self, h: TarHeader, fd: int, uid: int, gid: int, what: str) -> None:
        self._chown(lambda: os.fchown(fd, uid, gid), what)
        self._set_xattrs(h, fd, None, None)
        os.fchmod(fd, self._mode(h))
        self._override_stat(h, fd, uid, gid)

    def _path_meta(
        self, h: TarHeader, pfd: int, leaf: str, uid: int, gid: int, *, is_symlink: bool
    ) -> None:
        self._chown(
            lambda: os.chown(leaf, uid, gid, dir_fd=pfd, follow_symlinks=False), leaf
        )
        self._set_xattrs(h, None, pfd, leaf)
        if not is_symlink:
            os.chmod(leaf, self._mode(h), dir_fd=pfd, follow_symlinks=False)
            st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                self._override_stat(h, _proc_path(pfd, leaf), uid, gid)
        os.utime(leaf, ns=self._times(h), dir_fd=pfd, follow_symlinks=False)

    def _finish_dirs(self) -> None:
        for names, atime, mtime in self.dir_times:
            try:
                fd, _ = _open_dir(self.root_fd, names, follow=False)
            except (FileNotFoundError, NotADirectoryError, UnsafeArchive) as e:
                _LOG.debug("directory %r vanished before its times could be set: %s", names, e)
                continue
            try:
                os.utime(fd, ns=(atime, mtime))
            finally:
                os.close(fd)


def apply_tar(dest: str, stream: BinaryIO, opts: ApplyDiffOpts, *, whiteouts: str = "delete") -> int:
    """Extract the uncompressed tar *stream* into the directory *dest*; return the unpacked
    size (sum of regular file sizes, like Go's ``ApplyLayer``).

    *whiteouts*: ``"delete"`` applies AUFS whiteouts (``.wh.name`` removes ``name``,
    ``.wh..wh..opq`` empties its directory of everything this archive did not write);
    ``"keep"`` stores them as plain files; ``"overlay"`` converts them (0:0 character device
    / ``trusted.overlay.opaque=y``).  Owners are mapped container -> host with
    ``opts.mappings``.  With ``opts.force_mask`` every created file and directory gets
    exactly that mode and the original ``uid:gid:0mode`` is kept in the xattr
    ``user.containers.override_stat``.  Raises ArchiveError for corrupt/truncated input and
    UnsafeArchive for entries that would escape *dest* or are not allowed."""
    if whiteouts not in _WHITEOUT_MODES:
        raise ValueError(f"whiteouts must be one of {_WHITEOUT_MODES}, not {whiteouts!r}")
    applier = _Applier(dest, opts, whiteouts)
    try:
        return applier.run(stream)
    finally:
        applier.close()


# ---------------------------------------------------------------------------- copy


_NO_COPY_FILE_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)


def _copy_data(src_fd: int, dst_fd: int, size: int) -> None:
    left = size
    use_cfr = True
    while left > 0:
        if use_cfr:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(left, 1 << 30))
            except OSError as e:
                if e.errno not in _NO_COPY_FILE_RANGE:
                    raise
                use_cfr = False
                continue
        else:
            chunk = os.read(src_fd, min(left, _CHUNK))
            _write_all(dst_fd, chunk)
            n = len(chunk)
        if n == 0:
            break  # the source shrank
        left -= n
    # copy anything the file grew by (a live source), until EOF
    while True:
        chunk = os.read(src_fd, _CHUNK)
        if not chunk:
            break
        _write_all(dst_fd, chunk)


def _copy_xattrs(src: int | str, dst: int | str, what: str) -> None:
    follow = isinstance(src, int)
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for name in names:
        try:
            value = os.getxattr(src, name, follow_symlinks=follow)
        except OSError as e:
            if e.errno == errno.ENODATA:
                continue
            raise
        try:
            os.setxattr(dst, name, value, follow_symlinks=isinstance(dst, int))
        except OSError as e:
            if e.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                _LOG.warning("cannot copy xattr %s of %s: %s", name, what, e)
                continue
            raise


def copy_tree(src: str, dst: str) -> None:
    """Copy the tree *src* to *dst* (created if missing), keeping owners, modes (set-id
    bits included), all readable xattrs, hardlinks within *src*, devices, fifos, sockets,
    symlinks and atime/mtime in nanoseconds.  *dst* itself gets *src*'s metadata."""
    sroot = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    frames: list[tuple[int, int, list[str], Iterator[str]]] = []
    pending_dirs: list[tuple[list[str], int, int, int]] = []  # path, mode, atime, mtime
    try:
        try:
            os.mkdir(dst, 0o700)
        except FileExistsError:
            if not os.path.isdir(dst) or os.path.islink(dst):
                raise
        droot = os.open(dst, _DIR_FLAGS)
        try:
            rst = os.fstat(sroot)
            os.fchown(droot, rst.st_uid, rst.st_gid)
            _copy_xattrs(sroot, droot, src)
            pending_dirs.append(([], stat.S_IMODE(rst.st_mode), rst.st_atime_ns, rst.st_mtime_ns))
            links: dict[tuple[int, int], str] = {}
            frames.append((os.dup(sroot), os.dup(droot), [], iter(_sorted_listing(sroot))))
            while frames:
                sfd, dfd, path, names = frames[-1]
                name = next(names, None)
                if name is None:
                    frames.pop()
                    os.close(sfd)
                    os.close(dfd)
                    continue
                st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
                rel = path + [name]
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISDIR(st.st_mode):
                    os.mkdir(name, 0o700, dir_fd=dfd)
                    csfd = os.open(name, _DIR_FLAGS, dir_fd=sfd)
                    try:
                        cdfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                    except BaseException:
                        os.close(csfd)
                        raise
                    frames.append((csfd, cdfd, rel, iter(_sorted_listing(csfd))))
                    os.fchown(cdfd, st.st_uid, st.st_gid)
                    _copy_xattrs(csfd, cdfd, "/".join(rel))
                    pending_dirs.append((rel, mode, st.st_atime_ns, st.st_mtime_ns))
                    continue
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    os.link(links[key], name, src_dir_fd=droot, dst_dir_fd=dfd, follow_symlinks=False)
                    continue
                if stat.S_ISREG(st.st_mode):
                    s = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
                    try:
                        d = os.open(
                            name,
                            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                            0o600,
                            dir_fd=dfd,
                        )
                        try:
                            _copy_data(s, d, st.st_size)
                            os.fchown(d, st.st_uid, st.st_gid)
                            _copy_xattrs(s, d, "/".join(rel))
                            os.fchmod(d, mode)
                            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
                        finally:
                            os.close(d)
                    finally:
                        os.close(s)
                else:
                    if stat.S_ISLNK(st.st_mode):
                        os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
                    else:
                        os.mknod(name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=dfd)
                    os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
                    _copy_xattrs(_proc_path(sfd, name), _proc_path(dfd, name), "/".join(rel))
                    if not stat.S_ISLNK(st.st_mode):
                        os.chmod(name, mode, dir_fd=dfd, follow_symlinks=False)
                    times = (st.st_atime_ns, st.st_mtime_ns)
                    os.utime(name, ns=times, dir_fd=dfd, follow_symlinks=False)
                if st.st_nlink > 1:
                    links[key] = "/".join(rel)
            for rel, mode, atime, mtime in reversed(pending_dirs):
                fd, _ = _open_dir(droot, rel, follow=False)
                try:
                    os.fchmod(fd, mode)
                    os.utime(fd, ns=(atime, mtime))
                finally:
                    os.close(fd)
        finally:
            os.close(droot)
    finally:
        for sfd, dfd, _, _ in frames:
            os.close(sfd)
            os.close(dfd)
        os.close(sroot)
