"""Images in and out of a store: OCI image layouts and ``docker save`` archives.

:func:`import_image` stores an image the way containers/image (skopeo, podman) does, so the Go
tools see the same records: layer IDs chained from the diff_ids, the image ID = the config
digest, the config and manifests as big data under skopeo's keys, podman-style names.
:func:`export_image` writes an image back out with the same config bytes and diff_ids.

References use skopeo's transport syntax: ``oci:DIR[:TAG]`` and ``docker-archive:FILE[:REF]``.
Every blob is checked against its digest and size; a bad source raises :class:`ImageFormatError`
and leaves no layer or image of its own behind.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import platform
import re
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator

from .errors import ArchiveError, DuplicateID, ImageUnknown, LaminaError, LayerUnknown
from .layercontent import UNCOMPRESSED

if TYPE_CHECKING:
    from .records import Image, Layer
    from .store import Store

__all__ = [
    "ImageFormatError", "TransferError", "ImageReference", "parse_reference", "normalize_name",
    "chain_layer_ids", "import_image", "export_image",
]


class TransferError(LaminaError):
    """An import or export cannot be done as asked: a bad reference, option or destination,
    an ambiguous source, or an image that cannot be written out."""


class ImageFormatError(ArchiveError):
    """The image source is malformed: a missing blob, a digest or size that does not match, an
    unsupported media type, invalid JSON, or a layer that cannot be applied."""


# ---------------------------------------------------------------- media types

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
LAYER_TYPES = frozenset({
    OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    DOCKER_LAYER,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
})
REF_NAME = "org.opencontainers.image.ref.name"

# compression option -> (media type of exported layers, zlib/zstd kind)
COMPRESSIONS = {"none": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}

_JSON_LIMIT = 8 << 20  # manifests, indexes and configs are small; refuse to slurp anything bigger
_CHUNK = 1 << 20
_DIGEST = re.compile(r"^(sha256|sha384|sha512):([0-9a-f]+)$")
_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIFF_ID = re.compile(r"^sha256:[0-9a-f]{64}$")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _go_json(value: Any) -> bytes:
    """Compact JSON as Go's json.Marshal writes it (``<``, ``>``, ``&`` escaped), keys in given order."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text.encode("utf-8")


# ---------------------------------------------------------------- references and names


@dataclass(frozen=True)
class ImageReference:
    """A parsed transport reference: ``transport`` is ``oci`` or ``docker-archive``; ``ref`` is the
    tag (oci) or the image name / ``@N`` index (docker-archive), empty when not given."""

    transport: str
    path: str
    ref: str = ""

    def __str__(self) -> str:
        return f"{self.transport}:{self.path}" + (f":{self.ref}" if self.ref else "")


def parse_reference(text: str) -> ImageReference:
    """Parse ``oci:DIR[:TAG]`` or ``docker-archive:FILE[:REF]``; the path ends at its first colon,
    as in containers/image. Raises :class:`TransferError` for anything else."""
    transport, sep, rest = text.partition(":")
    if not sep or transport not in ("oci", "docker-archive"):
        raise TransferError(f"invalid image reference {text!r}: expected oci:DIR[:TAG] or "
                            "docker-archive:FILE[:NAME:TAG]")
    path, _, ref = rest.partition(":")
    if not path:
        raise TransferError(f"invalid image reference {text!r}: the path is empty")
    if transport == "oci" and ref and not re.fullmatch(r"[A-Za-z0-9._:/@+-]+", ref):
        raise TransferError(f"invalid image reference {text!r}: invalid tag {ref!r}")
    return ImageReference(transport, path, ref)


_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"^{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_REF_DIGEST = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")


def normalize_name(name: str) -> str:
    """A image name in containers/image's normalised form, as podman and skopeo store it.

    ``test`` -> ``docker.io/library/test:latest``; ``foo/bar:1`` -> ``docker.io/foo/bar:1``;
    ``localhost/x`` -> ``localhost/x:latest``; a name with a digest gets no tag. Raises
    :class:`TransferError` for names Docker's reference grammar rejects (e.g. upper case).
    """
    rest, at, digest = name.partition("@")
    if at and not _REF_DIGEST.match(digest):
        raise TransferError(f"invalid image name {name!r}: invalid digest {digest!r}")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    tag = ""
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise TransferError(f"invalid image name {name!r}: invalid tag {tag!r}")
    first, sep, remainder = rest.partition("/")
    if sep and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        domain, path = first, remainder
        if not _DOMAIN.match(domain):
            raise TransferError(f"invalid image name {name!r}: invalid registry {domain!r}")
    else:
        domain, path = "docker.io", rest
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in path:
        path = "library/" + path
    if path.lower() != path:
        raise TransferError(f"invalid image name {name!r}: repository name must be lowercase")
    if not path or not all(_PATH_COMPONENT.match(c) for c in path.split("/")):
        raise TransferError(f"invalid image name {name!r}: invalid repository name {path!r}")
    full = f"{domain}/{path}"
    if len(full) > 255:
        raise TransferError(f"invalid image name {name!r}: repository name must not be more than 255 characters")
    if tag:
        full += ":" + tag
    elif not at:
        full += ":latest"
    if at:
        full += "@" + digest
    return full


def chain_layer_ids(diff_ids: list[str]) -> list[str]:
    """Layer IDs as containers/image gives them: the first is its diff_id's hex, every later one
    the sha256 hex of ``<parent ID>+<diff_id hex>`` (verified against skopeo 1.9)."""
    ids: list[str] = []
    for diff_id in diff_ids:
        hex_ = diff_id.split(":", 1)[1]
        ids.append(hex_ if not ids else hashlib.sha256(f"{ids[-1]}+{hex_}".encode()).hexdigest())
    return ids


def _go_time(text: str, what: str) -> str:
    """An RFC 3339 timestamp re-encoded as Go marshals the parsed time.Time (RFC3339Nano)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|z|[+-]\d\d:\d\d)", text)
    if m is None:
        raise ImageFormatError(f"{what}: invalid created time {text!r} (not RFC 3339)")
    base, frac, zone = m.groups()
    frac = (frac or "")[:9].rstrip("0")
    if zone in ("Z", "z", "+00:00", "-00:00"):
        zone = "Z"
    return base + (f".{frac}" if frac else "") + zone


# ---------------------------------------------------------------- the host platform


def _host_platform() -> tuple[str, str, list[str]]:
    """(os, GOARCH, acceptable variants best first) of this machine."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386",
            "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine)
    if arch is None and machine.startswith("arm"):
        level = int(machine[4]) if len(machine) > 4 and machine[4].isdigit() else 7
        return "linux", "arm", [f"v{v}" for v in range(level, 4, -1)] + [""]
    if arch == "arm64":
        return "linux", arch, ["v8", ""]
    return "linux", arch or machine, [""]


def _pick_platform(descriptors: list[dict[str, Any]], what: str) -> dict[str, Any]:
    """The manifest descriptor of an index that fits this machine (containers/image's choice)."""
    want_os, want_arch, variants = _host_platform()
    best: tuple[int, int] | None = None
    chosen: dict[str, Any] | None = None
    for pos, desc in enumerate(descriptors):
        plat = desc.get("platform") or {}
        if not isinstance(plat, dict) or plat.get("os") != want_os or plat.get("architecture") != want_arch:
            continue
        variant = plat.get("variant", "") or ""
        if variant not in variants:
            continue
        rank = (variants.index(variant), pos)
        if best is None or rank < best:
            best, chosen = rank, desc
    if chosen is None:
        have = sorted({"/".join(filter(None, (str((d.get("platform") or {}).get("os", "?")),
                                              str((d.get("platform") or {}).get("architecture", "?")),
                                              str((d.get("platform") or {}).get("variant", "")))))
                       for d in descriptors})
        raise TransferError(f"{what}: no image for {want_os}/{want_arch} (the index has {', '.join(have) or 'none'})")
    return chosen


# ---------------------------------------------------------------- reading helpers


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageFormatError(f"{what} is not valid JSON: {exc}") from None


def _check_digest(value: Any, what: str) -> tuple[str, str]:
    """(algorithm, hex) of a well-formed digest string."""
    m = _DIGEST.match(value) if isinstance(value, str) else None
    if m is None or len(m.group(2)) != _HEX_LEN[m.group(1)]:
        raise ImageFormatError(f"{what}: invalid or unsupported digest {value!r}")
    return m.group(1), m.group(2)


def _descriptor(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImageFormatError(f"{what}: descriptor is not a JSON object")
    _check_digest(value.get("digest"), what)
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageFormatError(f"{what}: descriptor has no valid size")
    media = value.get("mediaType", "")
    if not isinstance(media, str):
        raise ImageFormatError(f"{what}: mediaType is not a string")
    return value


class _VerifyingReader(io.RawIOBase):
    """Reads *inner*, hashing and counting; at EOF the digest and size must match or reading
    raises :class:`ImageFormatError` (also kept in ``error``). ``size``/``digest`` None: not checked.
    Decompression errors of *inner* become ImageFormatError too."""

    def __init__(self, inner: BinaryIO, what: str, digest: str | None, size: int | None) -> None:
        super().__init__()
        self._inner = inner
        self.what = what
        self.expected_digest = digest
        self.expected_size = size
        algorithm = digest.split(":", 1)[0] if digest else "sha256"
        self._hash = hashlib.new(algorithm)
        self._algorithm = algorithm
        self.count = 0
        self.verified = False
        self.error: ImageFormatError | None = None

    def readable(self) -> bool:
        return True

    def _fail(self, message: str, cause: BaseException | None = None) -> ImageFormatError:
        self.error = ImageFormatError(f"{self.what}: {message}")
        if cause is not None:
            self.error.__cause__ = cause
        return self.error

    def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
        if self.error is not None:
            raise self.error
        if self.verified:
            return 0
        try:
            data = self._inner.read(len(buffer))
        except (EOFError, zlib.error, lzma.LZMAError, tarfile.TarError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # a real I/O error, not bad data
            raise self._fail(f"cannot be decompressed: {exc or type(exc).__name__}", exc) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("zstandard"):
                raise self._fail(f"cannot be decompressed: {exc}", exc) from exc
            raise
        if not data:
            self._finish()
            return 0
        n = len(data)
        self.count += n
        if self.expected_size is not None and self.count > self.expected_size:
            raise self._fail(f"is longer than the {self.expected_size} bytes its descriptor gives")
        self._hash.update(data)
        buffer[:n] = data
        return n

    def _finish(self) -> None:
        if self.expected_size is not None and self.count != self.expected_size:
            raise self._fail(f"has {self.count} bytes, its descriptor says {self.expected_size} (truncated?)")
        got = f"{self._algorithm}:{self._hash.hexdigest()}"
        if self.expected_digest is not None and got != self.expected_digest:
            raise self._fail(f"digest mismatch: expected {self.expected_digest}, content has {got}")
        self.verified = True

    @property
    def digest(self) -> str:
        return f"{self._algorithm}:{self._hash.hexdigest()}"

    def drain(self) -> None:
        """Read to the end (and so verify)."""
        while self.read(_CHUNK):
            pass

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()


def _decompressing(raw: BinaryIO) -> BinaryIO:
    """*raw* (a buffered stream) decompressed according to its magic bytes (gzip, bzip2, xz, zstd)."""
    buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw)  # type: ignore[arg-type]
    head = buffered.peek(6)[:6]  # type: ignore[attr-defined]
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(buffered, "rb")  # type: ignore[return-value]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(buffered, "rb")  # type: ignore[return-value]
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        try:
            import zstandard
        except ImportError:
            raise TransferError("a layer is zstd-compressed; install the Python package zstandard") from None
        return zstandard.ZstdDecompressor().stream_reader(  # type: ignore[no-any-return]
            buffered, read_across_frames=True, closefd=True)
    return buffered  # type: ignore[return-value]


# ---------------------------------------------------------------- what a source yields


@dataclass
class _SourceLayer:
    """One layer of a source image. ``open`` returns the stream to hand to the store (verified)."""

    index: int
    diff_id: str
    what: str
    open: Callable[[], _VerifyingReader]


@dataclass
class _SourceImage:
    """A resolved, checked image: config, manifests (exact bytes) and layers in order.

    For a docker archive the manifest is generated once the layer sizes are known
    (``make_manifest``), exactly as containers/image generates it.
    """

    config: bytes
    config_digest: str
    created: str
    layers: list[_SourceLayer]
    default_names: list[str]
    manifest: bytes = b""
    list_manifest: tuple[str, bytes] | None = None
    make_manifest: Callable[[list[int]], bytes] | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in self.closers:
            close()


def _parse_config(config: bytes, what: str, layer_count: int | None) -> tuple[list[str], str]:
    """(diff_ids, created in Go's form or "") of an image config, checked."""
    doc = _json(config, what)
    if not isinstance(doc, dict):
        raise ImageFormatError(f"{what} is not a JSON object")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids", []), list):
        raise ImageFormatError(f"{what} has no rootfs.diff_ids list")
    diff_ids = rootfs.get("diff_ids") or []
    for diff_id in diff_ids:
        if not isinstance(diff_id, str) or not _DIFF_ID.match(diff_id):
            raise ImageFormatError(f"{what}: invalid or unsupported diff_id {diff_id!r} (sha256 expected)")
    if layer_count is not None and len(diff_ids) != layer_count:
        raise ImageFormatError(f"{what} lists {len(diff_ids)} diff_ids but the manifest has {layer_count} layers")
    created = doc.get("created")
    if created is None or created == "":
        return list(diff_ids), ""
    if not isinstance(created, str):
        raise ImageFormatError(f"{what}: created is not a string")
    return list(diff_ids), _go_time(created, what)


# ---------------------------------------------------------------- OCI image layout (reading)


class _OCILayout:
    """An OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``)."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        if not os.path.isdir(directory):
            raise TransferError(f"oci:{directory}: not a directory")
        layout = os.path.join(directory, "oci-layout")
        if os.path.exists(layout):
            doc = _json(self._read_file(layout, "oci-layout"), f"oci:{directory}: oci-layout")
            version = doc.get("imageLayoutVersion") if isinstance(doc, dict) else None
            if version != "1.0.0":
                raise ImageFormatError(f"oci:{directory}: unsupported image layout version {version!r}")

    @staticmethod
    def _read_file(path: str, what: str) -> bytes:
        try:
            with open(path, "rb") as fh:
                data = fh.read(_JSON_LIMIT + 1)
        except FileNotFoundError:
            raise ImageFormatError(f"{what}: file {path} is missing") from None
        if len(data) > _JSON_LIMIT:
            raise ImageFormatError(f"{what}: {path} is larger than {_JSON_LIMIT} bytes")
        return data

    def blob_path(self, digest: str, what: str) -> str:
        algorithm, hex_ = _check_digest(digest, what)
        return os.path.join(self.dir, "blobs", algorithm, hex_)

    def check_blob(self, desc: dict[str, Any], what: str) -> str:
        """The blob's path after checking it exists with the descriptor's size."""
        path = self.blob_path(desc["digest"], what)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise ImageFormatError(f"{what}: blob {desc['digest']} is missing from the layout "
                                   f"({path})") from None
        if size != desc["size"]:
            raise ImageFormatError(f"{what}: blob {desc['digest']} has {size} bytes, its descriptor says "
                                   f"{desc['size']}")
        return path

    def read_blob(self, desc: dict[str, Any], what: str) -> bytes:
        """A small (JSON) blob, verified against its descriptor."""
        path = self.check_blob(desc, what)
        if desc["size"] > _JSON_LIMIT:
            raise ImageFormatError(f"{what}: {desc['size']} bytes is too large for a manifest or config")
        with open(path, "rb") as fh:
            reader = _VerifyingReader(fh, f"{what} blob {desc['digest']}", desc["digest"], desc["size"])
            return reader.read() or b""

    def open_blob(self, desc: dict[str, Any], what: str) -> _VerifyingReader:
        path = self.check_blob(desc, what)
        return _VerifyingReader(open(path, "rb"), f"{what} blob {desc['digest']}", desc["digest"], desc["size"])

    def resolve(self, tag: str) -> _SourceImage:
        where = f"oci:{self.dir}"
        index = _json(self._read_file(os.path.join(self.dir, "index.json"), where), f"{where}: index.json")
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list):
            raise ImageFormatError(f"{where}: index.json has no manifests list")
        descs = [_descriptor(d, f"{where}: index.json entry {i}") for i, d in enumerate(manifests)]
        tags = [str((d.get("annotations") or {}).get(REF_NAME, "")) for d in descs]
        if tag:
            if tag not in tags:
                raise TransferError(f"{where}: no image tagged {tag!r} (tags: "
                                    f"{', '.join(repr(t) for t in tags if t) or 'none'})")
            top = descs[tags.index(tag)]
        elif len(descs) == 1:
            top = descs[0]
        elif not descs:
            raise TransferError(f"{where}: the layout holds no image")
        elif all(d.get("platform") for d in descs):
            top = _pick_platform(descs, where)
        else:
            raise TransferError(f"{where} holds {len(descs)} images; choose one with oci:DIR:TAG "
                                f"(tags: {', '.join(repr(t) for t in tags if t) or 'none'})")
        return self._image(top, where + (f":{tag}" if tag else ""))

    def _image(self, top: dict[str, Any], where: str) -> _SourceImage:
        desc, what = top, f"{where}: manifest"
        data = self.read_blob(desc, what)
        media = self._media_type(desc, data, what)
        list_manifest: tuple[str, bytes] | None = None
        depth = 0
        while media in INDEX_TYPES:
            if list_manifest is None:
                list_manifest = (desc["digest"], data)
            depth += 1
            if depth > 4:
                raise ImageFormatError(f"{where}: image indexes nested too deeply")
            doc = _json(data, f"{what} {desc['digest']}")
            entries = doc.get("manifests") if isinstance(doc, dict) else None
            if not isinstance(entries, list) or not entries:
                raise ImageFormatError(f"{what} {desc['digest']}: index has no manifests")
            entries = [_descriptor(e, f"{what} {desc['digest']} entry {i}") for i, e in enumerate(entries)]
            desc = _pick_platform(entries, f"{where}: index {desc['digest']}")
            data = self.read_blob(desc, what)
            media = self._media_type(desc, data, what)
        if media not in MANIFEST_TYPES:
            raise ImageFormatError(f"{what} {desc['digest']}: unsupported manifest media type {media!r}")
        manifest = _json(data, f"{what} {desc['digest']}")
        if not isinstance(manifest, dict) or manifest.get("schemaVersion") != 2:
            raise ImageFormatError(f"{what} {desc['digest']}: not a schema 2 image manifest")
        cdesc = _descriptor(manifest.get("config"), f"{what}: config")
        cmedia = cdesc.get("mediaType", "")
        if cmedia not in CONFIG_TYPES:
            raise ImageFormatError(f"{where}: unsupported config media type {cmedia!r}")
        if _check_digest(cdesc["digest"], f"{where}: config")[0] != "sha256":
            raise ImageFormatError(f"{where}: the config digest {cdesc['digest']} is not sha256 (image IDs are)")
        raw_layers = manifest.get("layers")
        if not isinstance(raw_layers, list):
            raise ImageFormatError(f"{what} {desc['digest']}: no layers list")
        ldescs = []
        for i, raw in enumerate(raw_layers):
            ldesc = _descriptor(raw, f"{where}: layer {i + 1}")
            lmedia = ldesc.get("mediaType", "")
            if lmedia not in LAYER_TYPES:
                raise ImageFormatError(f"{where}: layer {i + 1} ({ldesc['digest']}) has unsupported media "
                                       f"type {lmedia!r}")
            ldescs.append(ldesc)
        config = self.read_blob(cdesc, f"{where}: config")
        diff_ids, created = _parse_config(config, f"{where}: config {cdesc['digest']}", len(ldescs))
        for i, ldesc in enumerate(ldescs):  # every blob present with its size before anything is stored
            self.check_blob(ldesc, f"{where}: layer {i + 1}")
        layers = [
            _SourceLayer(i, diff_ids[i], f"{where}: layer {i + 1} ({ldesc['digest']})",
                         (lambda d=ldesc, n=i: self.open_blob(d, f"{where}: layer {n + 1}")))
            for i, ldesc in enumerate(ldescs)
        ]
        return _SourceImage(config=config, config_digest=cdesc["digest"], created=created, layers=layers,
                            default_names=[], manifest=data, list_manifest=list_manifest)

    @staticmethod
    def _media_type(desc: dict[str, Any], data: bytes, what: str) -> str:
        """The media type from the descriptor and the blob's own field (they must agree)."""
        doc = _json(data, f"{what} {desc['digest']}")
        own = doc.get("mediaType", "") if isinstance(doc, dict) else ""
        given = desc.get("mediaType", "")
        if own and given and own != given:
            raise ImageFormatError(f"{what} {desc['digest']}: media type {own!r} differs from the "
                                   f"descriptor's {given!r}")
        media = own or given
        if not media and isinstance(doc, dict):  # a media-type-less OCI document
            media = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "config" in doc else ""
        if media not in INDEX_TYPES and media not in MANIFEST_TYPES:
            raise ImageFormatError(f"{what} {desc['digest']}: unsupported media type {media!r}")
        return media


# ---------------------------------------------------------------- docker-archive (reading)


class _DockerArchive:
    """A ``docker save`` tarball: ``manifest.json`` with Config, RepoTags and Layers."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.tar = tarfile.open(path, "r:*")
        except FileNotFoundError:
            raise TransferError(f"docker-archive:{path}: no such file") from None
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise ImageFormatError(f"docker-archive:{path}: not a tar archive: {exc}") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            for member in self.tar.getmembers():
                self.members[self._norm(member.name)] = member
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            self.tar.close()
            raise ImageFormatError(f"docker-archive:{path}: corrupt tar archive: {exc}") from None

    @staticmethod
    def _norm(name: str) -> str:
        return os.path.normpath("/" + name).lstrip("/")

    def open_member(self, name: str, what: str) -> BinaryIO:
        member = self.members.get(self._norm(name)) if isinstance(name, str) else None
        if member is None:
            raise ImageFormatError(f"{what}: {name!r} is missing from the archive")
        try:
            fh = self.tar.extractfile(member)
        except (tarfile.TarError, KeyError) as exc:
            raise ImageFormatError(f"{what}: {name!r} cannot be read: {exc}") from None
        if fh is None:
            raise ImageFormatError(f"{what}: {name!r} is not a regular file")
        return fh  # type: ignore[return-value]

    def read_small(self, name: str, what: str) -> bytes:
        with self.open_member(name, what) as fh:
            data = fh.read(_JSON_LIMIT + 1)
        if len(data) > _JSON_LIMIT:
            raise ImageFormatError(f"{what}: {name!r} is larger than {_JSON_LIMIT} bytes")
        return data

    def resolve(self, ref: str) -> _SourceImage:
        where = f"docker-archive:{self.path}"
        entries = _json(self.read_small("manifest.json", where), f"{where}: manifest.json")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ImageFormatError(f"{where}: manifest.json is not a list of objects")
        if ref.startswith("@"):
            if not ref[1:].isdigit() or int(ref[1:]) >= len(entries):
                raise TransferError(f"{where}: no image at index {ref[1:]!r} ({len(entries)} images)")
            entry = entries[int(ref[1:])]
        elif ref:
            wanted = normalize_name(ref)
            found = [e for e in entries
                     if wanted in [normalize_name(t) for t in e.get("RepoTags") or [] if isinstance(t, str)]]
            if not found:
                raise TransferError(f"{where}: no image tagged {ref!r}")
            entry = found[0]
        elif len(entries) == 1:
            entry = entries[0]
        else:
            raise TransferError(f"{where} holds {len(entries)} images; choose one with "
                                f"docker-archive:FILE:NAME:TAG or docker-archive:FILE:@INDEX")
        config_name = entry.get("Config")
        layer_names = entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list) \
                or not all(isinstance(n, str) for n in layer_names):
            raise ImageFormatError(f"{where}: manifest.json entry needs Config and Layers")
        repo_tags = [t for t in entry.get("RepoTags") or [] if isinstance(t, str)]
        config = self.read_small(config_name, f"{where}: config")
        config_digest = _sha256(config)
        m = re.search(r"(?:^|/)([0-9a-f]{64})(?:\.json)?$", config_name)
        if m is not None and m.group(1) != config_digest.split(":", 1)[1]:
            raise ImageFormatError(f"{where}: config {config_name!r} has digest {config_digest}, not the one "
                                   "its name gives (digest mismatch)")
        diff_ids, created = _parse_config(config, f"{where}: config {config_digest}", len(layer_names))
        for i, name in enumerate(layer_names):  # all present before anything is stored
            member = self.members.get(self._norm(name))
            if member is None:
                raise ImageFormatError(f"{where}: layer {i + 1}: {name!r} is missing from the archive")

        def opener(name: str, n: int, diff_id: str) -> Callable[[], _VerifyingReader]:
            def open_layer() -> _VerifyingReader:
                what = f"{where}: layer {n + 1} ({name})"
                return _VerifyingReader(_decompressing(self.open_member(name, what)), what, diff_id, None)
            return open_layer

        layers = [_SourceLayer(i, diff_ids[i], f"{where}: layer {i + 1} ({name})", opener(name, i, diff_ids[i]))
                  for i, name in enumerate(layer_names)]

        def make_manifest(sizes: list[int]) -> bytes:
            # containers/image's docker-archive source generates this schema 2 manifest: the layers
            # are addressed by diff_id, with uncompressed sizes, under the gzip media type.
            doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                   "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": config_digest},
                   "layers": [{"mediaType": DOCKER_LAYER, "size": size, "digest": diff_id}
                              for size, diff_id in zip(sizes, diff_ids)]}
            return _go_json(doc)

        names = []
        for tag in repo_tags:
            try:
                names.append(normalize_name(tag))
            except TransferError as exc:
                raise ImageFormatError(f"{where}: RepoTags: {exc}") from None
        return _SourceImage(config=config, config_digest=config_digest, created=created, layers=layers,
                            default_names=names, make_manifest=make_manifest, closers=[self.tar.close])


# ---------------------------------------------------------------- import


def _exact_layer(store: "Store", layer_id: str) -> "Layer | None":
    try:
        layer = store.layer(layer_id)
    except LayerUnknown:
        return None
    return layer if layer.id == layer_id else None


def _exact_image(store: "Store", image_id: str) -> "Image | None":
    try:
        image = store.image(image_id)
    except ImageUnknown:
        return None
    return image if image.id == image_id else None


def import_image(store: "Store", source: str, name: str | None = None) -> "Image":
    """Store the image at *source* (``oci:DIR[:TAG]`` or ``docker-archive:FILE[:REF]``) and return it.

    The image is named *name* (normalised like podman: ``test`` -> ``docker.io/library/test:latest``);
    without one a docker archive's RepoTags are used and an OCI image stays unnamed. A name
    another image had moves to this one. Layers already in the store (same chained ID) are
    reused; an image with the same ID (same config) gets the new manifest and names.

    Raises :class:`TransferError` for a bad reference or an ambiguous source and
    :class:`ImageFormatError` for a malformed one; then every layer and image this call
    created is deleted again.
    """
    ref = parse_reference(source)
    names = [normalize_name(name)] if name else None
    reader = _OCILayout(ref.path) if ref.transport == "oci" else _DockerArchive(ref.path)
    try:
        src = reader.resolve(ref.ref)
    except BaseException:
        if isinstance(reader, _DockerArchive):
            reader.tar.close()
        raise
    try:
        return _store_image(store, src, src.default_names if names is None else names)
    finally:
        src.close()


def _apply_layer(store: "Store", layer_src: _SourceLayer, layer_id: str, parent: str) -> tuple["Layer", int, bool]:
    """Create (or reuse) one layer; returns (layer, uncompressed size, created by this call)."""
    existing = _exact_layer(store, layer_id)
    if existing is None:
        stream = layer_src.open()
        try:
            try:
                layer = store.create_layer(id=layer_id, parent=parent or None, writeable=False, diff=stream)
            except DuplicateID:
                # Another process stored the same layer meanwhile: use theirs.
                existing = _exact_layer(store, layer_id)
                if existing is None:
                    raise
            except Exception as exc:
                if stream.error is not None and exc is not stream.error:
                    raise stream.error from exc
                if isinstance(exc, ArchiveError) and not isinstance(exc, ImageFormatError):
                    raise ImageFormatError(f"{layer_src.what} cannot be applied: {exc}") from exc
                raise
            else:
                if not stream.verified:
                    # The store stopped reading early: read the rest so the digest is checked.
                    try:
                        stream.drain()
                    except ImageFormatError:
                        _delete_layers(store, [layer.id], None)
                        raise
                if layer.uncompressed_digest != layer_src.diff_id:
                    _delete_layers(store, [layer.id], None)
                    raise ImageFormatError(f"{layer_src.what}: its uncompressed content has digest "
                                           f"{layer.uncompressed_digest}, the config's diff_id is "
                                           f"{layer_src.diff_id}")
                return layer, layer.uncompressed_size, True
        finally:
            stream.close()
    if existing.uncompressed_digest and existing.uncompressed_digest != layer_src.diff_id:
        raise TransferError(f"layer {layer_id} is already in the store with diff digest "
                            f"{existing.uncompressed_digest}, but {layer_src.what} has diff_id {layer_src.diff_id}")
    with layer_src.open() as stream:  # reused: the blob is still checked against its digest
        stream.drain()
        size = stream.count
    if layer_src.diff_id == stream.digest:
        return existing, size, False  # the blob is the uncompressed layer itself
    return existing, existing.uncompressed_size or _uncompressed_size(layer_src), False


def _uncompressed_size(layer_src: _SourceLayer) -> int:
    with layer_src.open() as stream, _decompressing(stream) as plain:  # type: ignore[arg-type]
        total = 0
        while True:
            data = plain.read(_CHUNK)
            if not data:
                return total
            total += len(data)


def _delete_layers(store: "Store", layer_ids: list[str], error: BaseException | None) -> None:
    """Delete *layer_ids* (children first); failures become notes on *error* (or are raised)."""
    for layer_id in reversed(layer_ids):
        try:
            store.delete_layer(layer_id)
        except (LaminaError, OSError) as exc:
            if error is None:
                raise
            error.add_note(f"could not remove layer {layer_id} created by the failed import: {exc}")


def _store_image(store: "Store", src: _SourceImage, names: list[str]) -> "Image":
    created_layers: list[str] = []
    created_image = ""
    try:
        layer_ids = chain_layer_ids([layer.diff_id for layer in src.layers])
        sizes: list[int] = []
        parent = ""
        for layer_src, layer_id in zip(src.layers, layer_ids):
            layer, size, created = _apply_layer(store, layer_src, layer_id, parent)
            if created:
                created_layers.append(layer.id)
            sizes.append(size)
            parent = layer.id
        manifest = src.make_manifest(sizes) if src.make_manifest is not None else src.manifest
        manifest_digest = _sha256(manifest)
        top_digest = src.list_manifest[0] if src.list_manifest else manifest_digest
        image_id = src.config_digest.split(":", 1)[1]
        # containers/image's record: metadata with the (empty) signature sizes of the manifest,
        # big data config / manifest-<list> / manifest-<digest> / manifest / signature-<hex>.
        metadata = _go_json({"signatures-sizes": {manifest_digest: []}}).decode()
        big_data: list[tuple[str, bytes]] = [(src.config_digest, src.config)]
        if src.list_manifest:
            big_data.append((f"manifest-{src.list_manifest[0]}", src.list_manifest[1]))
        big_data += [(f"manifest-{manifest_digest}", manifest), ("manifest", manifest),
                     (f"signature-{manifest_digest.split(':', 1)[1]}", b"")]
        existing = _exact_image(store, image_id)
        if existing is None:
            image = store.create_image(id=image_id, top_layer=parent or None, metadata=metadata,
                                       digest=top_digest, created=src.created)
            created_image = image.id
            old_names: list[str] = []
        else:
            if existing.top_layer != parent:
                raise TransferError(f"image with ID {image_id} already exists, but uses a different top layer "
                                    f"({existing.top_layer or 'none'}, not {parent or 'none'})")
            store.set_metadata(image_id, metadata)
            old_names = list(existing.names)
        for key, data in big_data:
            store.set_big_data("image", image_id, key, data)
        new_names = list(dict.fromkeys([*names, *old_names]))
        if names:
            store.set_names(image_id, new_names)
        return store.image(image_id)
    except BaseException as exc:
        if created_image:
            try:
                store.delete(created_image)
            except (LaminaError, OSError) as cleanup:
                exc.add_note(f"could not remove image {created_image} created by the failed import: {cleanup}")
        _delete_layers(store, created_layers, exc)
        raise


# ---------------------------------------------------------------- export


@dataclass
class _ExportImage:
    """What an export writes: the exact config, its diff_ids, the layer chain bottom-up."""

    image: "Image"
    config: bytes
    config_digest: str
    diff_ids: list[str]
    layers: list["Layer"]
    annotations: dict[str, str]


def _find_image(store: "Store", key: str) -> "Image":
    """The image *key* names: an ID, name or ID prefix, else its normalised name (``test``)."""
    try:
        return store.image(key)
    except ImageUnknown:
        try:
            normalized = normalize_name(key)
        except TransferError:
            raise ImageUnknown(key) from None
        return store.image(normalized)


def _collect(store: "Store", key: str) -> _ExportImage:
    image = _find_image(store, key)
    what = f"image {image.id}"
    manifest: Any = None
    candidates = ["manifest"] + [n for n in image.big_data_names if n.startswith("manifest-")]
    for name in candidates:
        if name not in image.big_data_names:
            continue
        doc = _json(store.big_data("image", image.id, name), f"{what}: {name}")
        if isinstance(doc, dict) and doc.get("schemaVersion") == 2 and isinstance(doc.get("config"), dict):
            manifest = doc
            break
    if manifest is None:
        raise TransferError(f"{what} has no schema 2 image manifest in its big data; it cannot be exported")
    cdesc = _descriptor(manifest["config"], f"{what}: manifest config")
    config_digest = cdesc["digest"]
    if config_digest not in image.big_data_names:
        raise TransferError(f"{what}: its config {config_digest} is not stored with it")
    config = store.big_data("image", image.id, config_digest)
    if _sha256(config) != config_digest:
        raise TransferError(f"{what}: the stored config does not match its digest {config_digest}")
    diff_ids, _ = _parse_config(config, f"{what}: config", None)
    chain: list[Layer] = []
    layer_id = image.top_layer
    while layer_id:
        layer = store.layer(layer_id)
        chain.append(layer)
        layer_id = layer.parent
    chain.reverse()
    if len(chain) != len(diff_ids):
        raise TransferError(f"{what} has {len(chain)} layers but its config lists {len(diff_ids)} diff_ids")
    for layer, diff_id in zip(chain, diff_ids):
        if layer.uncompressed_digest and layer.uncompressed_digest != diff_id:
            raise TransferError(f"{what}: layer {layer.id} has diff digest {layer.uncompressed_digest}, "
                                f"the config says {diff_id}")
    annotations = manifest.get("annotations") if manifest.get("mediaType", OCI_MANIFEST) == OCI_MANIFEST else None
    return _ExportImage(image, config, config_digest, diff_ids, chain,
                        dict(annotations) if isinstance(annotations, dict) else {})


def _compressor(kind: str) -> Any:
    if kind == "gzip":
        return zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip wrapper, mtime 0: reproducible
    if kind == "zstd":
        try:
            import zstandard
        except ImportError:
            raise TransferError("zstd compression needs the Python package zstandard") from None
        return zstandard.ZstdCompressor(level=3).compressobj()
    return None


def _layer_chunks(store: "Store", layer: "Layer", diff_id: str) -> Iterator[bytes]:
    """The layer's exact uncompressed tar; fails at the end unless it hashes to *diff_id*."""
    hasher = hashlib.sha256()
    stream = store.diff(None, layer.id, compression=UNCOMPRESSED)
    try:
        while True:
            data = stream.read(_CHUNK)
            if not data:
                break
            hasher.update(data)
            yield data
    finally:
        stream.close()
    if "sha256:" + hasher.hexdigest() != diff_id:
        raise TransferError(f"layer {layer.id} does not reproduce its diff_id {diff_id} "
                            f"(its diff has sha256:{hasher.hexdigest()})")


class _BlobWriter:
    """Writes blobs into ``blobs/sha256`` (temp file, then rename); remembers which are new."""

    def __init__(self, directory: str) -> None:
        self.dir = os.path.join(directory, "blobs", "sha256")
        os.makedirs(self.dir, exist_ok=True)
        self.created: list[str] = []

    def write_chunks(self, chunks: Iterator[bytes]) -> tuple[str, int]:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-blob-", dir=self.dir)
        hasher = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for data in chunks:
                    hasher.update(data)
                    size += len(data)
                    out.write(data)
            os.chmod(tmp, 0o644)
            final = os.path.join(self.dir, hasher.hexdigest())
            if os.path.exists(final):
                os.unlink(tmp)
            else:
                os.rename(tmp, final)
                self.created.append(final)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return "sha256:" + hasher.hexdigest(), size

    def write(self, data: bytes) -> tuple[str, int]:
        return self.write_chunks(iter([data]))

    def remove_created(self) -> None:
        for path in self.created:
            if os.path.exists(path):
                os.unlink(path)


def _compressed(chunks: Iterator[bytes], kind: str) -> Iterator[bytes]:
    compressor = _compressor(kind)
    if compressor is None:
        yield from chunks
        return
    for data in chunks:
        out = compressor.compress(data)
        if out:
            yield out
    tail = compressor.flush()
    if tail:
        yield tail


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def export_image(store: "Store", image: str, dest: str, *, compression: str = "none") -> str:
    """Write *image* (ID, name or ID prefix) to *dest* and return a digest of what was written.

    ``oci:DIR[:TAG]``: the layout is created or extended (an entry with the same tag is
    replaced); layers are written uncompressed by default, or with *compression* ``gzip`` or
    ``zstd``; returns the new manifest's digest. ``docker-archive:FILE[:NAME:TAG]``: a new
    ``docker load``-able tarball with uncompressed layers, tagged NAME:TAG or the image's
    names; returns the config digest (the image ID). The config bytes are the stored ones
    and every layer must reproduce its diff_id, or :class:`TransferError` is raised and
    nothing new is left behind.
    """
    ref = parse_reference(dest)
    if compression not in COMPRESSIONS:
        raise TransferError(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")
    exp = _collect(store, image)
    if ref.transport == "oci":
        return _write_oci(store, exp, ref, compression)
    if compression != "none":
        raise TransferError("docker-archive layers are always uncompressed; use --compression none")
    return _write_docker_archive(store, exp, ref)


def _write_oci(store: "Store", exp: _ExportImage, ref: ImageReference, compression: str) -> str:
    directory = ref.path
    index_path = os.path.join(directory, "index.json")
    layout_path = os.path.join(directory, "oci-layout")
    index: dict[str, Any] = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        loaded = _json(_OCILayout._read_file(index_path, f"oci:{directory}"), f"oci:{directory}: index.json")
        if not isinstance(loaded, dict) or not isinstance(loaded.get("manifests"), list):
            raise TransferError(f"oci:{directory}: the existing index.json is not an image index")
        index = loaded
    elif os.path.isdir(directory) and os.listdir(directory) and not os.path.exists(layout_path):
        raise TransferError(f"oci:{directory}: the directory exists and is not an OCI layout")
    os.makedirs(directory, exist_ok=True)
    blobs = _BlobWriter(directory)
    try:
        layers = []
        for layer, diff_id in zip(exp.layers, exp.diff_ids):
            digest, size = blobs.write_chunks(_compressed(_layer_chunks(store, layer, diff_id), compression))
            layers.append({"mediaType": COMPRESSIONS[compression], "digest": digest, "size": size})
        config_digest, config_size = blobs.write(exp.config)
        manifest_doc: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": layers,
        }
        if exp.annotations:
            manifest_doc["annotations"] = exp.annotations
        manifest_digest, manifest_size = blobs.write(_go_json(manifest_doc))
        entry: dict[str, Any] = {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest_size}
        if ref.ref:
            entry["annotations"] = {REF_NAME: ref.ref}
        kept = [d for d in index["manifests"]
                if not (ref.ref and isinstance(d, dict) and (d.get("annotations") or {}).get(REF_NAME) == ref.ref)]
        index["manifests"] = [*kept, entry]
        if not os.path.exists(layout_path):
            _write_atomic(layout_path, b'{"imageLayoutVersion": "1.0.0"}')
        _write_atomic(index_path, _go_json(index))
    except BaseException:
        blobs.remove_created()
        raise
    return manifest_digest


def _write_docker_archive(store: "Store", exp: _ExportImage, ref: ImageReference) -> str:
    path = ref.path
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        raise TransferError(f"docker-archive:{path} exists; docker-archive cannot modify an existing archive")
    if ref.ref:
        tags = [normalize_name(ref.ref)]
    else:
        tags = [n for n in exp.image.names if "@" not in n and ":" in n.rsplit("/", 1)[-1]]
    config_hex = exp.config_digest.split(":", 1)[1]
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-docker-archive-", dir=directory)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            layer_names = []
            for layer, diff_id in zip(exp.layers, exp.diff_ids):
                with tempfile.TemporaryFile(dir=directory) as spool:
                    size = 0
                    for data in _layer_chunks(store, layer, diff_id):
                        spool.write(data)
                        size += len(data)
                    spool.seek(0)
                    name = diff_id.split(":", 1)[1] + ".tar"
                    if name not in layer_names:
                        tar.addfile(_tar_info(name, size), spool)
                    layer_names.append(name)
            tar.addfile(_tar_info(f"{config_hex}.json", len(exp.config)), io.BytesIO(exp.config))
            manifest = _go_json([{"Config": f"{config_hex}.json", "RepoTags": tags, "Layers": layer_names}])
            tar.addfile(_tar_info("manifest.json", len(manifest)), io.BytesIO(manifest))
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return exp.config_digest


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.mtime = 0
    return info
