"""copy: files or directories into a layer, possibly from another layer (Go's chrootarchive
``CopyWithTar`` through the layers' mount points, with their ID maps and ``--chown``)."""

from __future__ import annotations

import os
import posixpath
from typing import TYPE_CHECKING, Any, BinaryIO

from lamina.errors import LaminaError

from .flags import go_quote
from .output import err, go_error

if TYPE_CHECKING:
    from lamina.types import IDMappings


class _CopyError(Exception):
    pass


def _parse_uint32(text: str) -> int:
    if not text or not text.isascii() or not text.isdigit():
        raise ValueError(f'strconv.ParseUint: parsing "{go_quote(text)}": invalid syntax')
    value = int(text)
    if value > 0xFFFFFFFF:
        raise ValueError(f'strconv.ParseUint: parsing "{go_quote(text)}": value out of range')
    return value


def _join(mount: str, path: str) -> str:
    """Go's filepath.Join: concatenate, then Clean (a trailing slash is dropped)."""
    return posixpath.normpath(mount + "/" + path)


def _in_layer(store: Any, spec: str, mounted: list[str]) -> tuple[IDMappings, str] | None:
    """(the ID maps, the host path) of a copy argument: ``LAYER:PATH`` mounts LAYER (its ID is
    added to *mounted*), a plain path is the host's. None after printing Go's error."""
    from lamina.types import IDMappings

    if ":" not in spec:
        return IDMappings(), spec
    key, path = spec.split(":", 1)
    try:
        layer = store.layer(key)
    except Exception as exc:
        err(f'error finding layer "{go_quote(key)}": {go_error(exc)}\n')
        return None
    try:
        mount = store.mount(layer.id, layer.mount_label)
    except Exception as exc:
        err(f'error mounting layer "{layer.id}": {go_error(exc)}\n')
        return None
    mounted.append(layer.id)
    return IDMappings(tuple(layer.uidmap), tuple(layer.gidmap)), _join(mount, path)


def _rechown(stream: BinaryIO, uid: int, gid: int) -> BinaryIO:
    """The tar *stream* with every entry owned by uid:gid (Go's ChownOpts)."""
    import tarfile
    import tempfile

    spool = tempfile.TemporaryFile()
    with tarfile.open(fileobj=stream, mode="r|") as src, \
            tarfile.open(fileobj=spool, mode="w|", format=tarfile.PAX_FORMAT) as dst:
        for info in src:
            info.uid, info.gid = uid, gid
            info.uname = info.gname = ""
            dst.addfile(info, src.extractfile(info) if info.isreg() else None)
    spool.seek(0)
    return spool  # type: ignore[return-value]


def _mkdir_all_and_chown_new(path: str, mode: int, uid: int, gid: int) -> None:
    """idtools.MkdirAllAndChownNew: create missing directories and chown only those."""
    missing = []
    p = path
    while p and not os.path.exists(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        os.mkdir(d, mode)
        os.chown(d, uid, gid)


def copy_with_tar(src: str, dst: str, tar_maps: Any, chown: tuple[int, int] | None, untar_maps: Any) -> None:
    from lamina.archive import apply_tar, tar_tree
    from lamina.types import ApplyDiffOpts

    st = os.stat(src)
    import stat as stat_mod

    if not stat_mod.S_ISDIR(st.st_mode):
        _copy_file_with_tar(src, dst, st, tar_maps, chown, untar_maps)
        return
    uid, gid = untar_maps.root_pair()
    _mkdir_all_and_chown_new(dst, 0o755, uid, gid)
    stream = tar_tree(src, tar_maps)
    if chown is not None:
        stream = _rechown(stream, *chown)
    with stream:
        apply_tar(dst, stream, ApplyDiffOpts(diff=stream, mappings=untar_maps), whiteouts="keep")


def _copy_file_with_tar(src: str, dst: str, st: os.stat_result, tar_maps: Any, chown: tuple[int, int] | None,
                        untar_maps: Any) -> None:
    import io
    import stat as stat_mod
    import tarfile

    from lamina.archive import apply_tar
    from lamina.types import ApplyDiffOpts

    if dst.endswith("/"):
        dst = os.path.join(dst, os.path.basename(src))
    os.makedirs(os.path.dirname(dst) or ".", mode=0o700, exist_ok=True)
    name = os.path.basename(dst)
    if os.path.isdir(dst) and not os.path.islink(dst):
        # Go untars with NoOverwriteDirNonDir, inside a chroot of the destination directory.
        raise _CopyError(f'processing tar file(cannot overwrite directory "/{go_quote(name)}" with '
                         'non-directory "/"): exit status 1')
    info = tarfile.TarInfo(name)
    info.size = st.st_size
    info.mode = stat_mod.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    if chown is not None:
        info.uid, info.gid = chown
    else:
        info.uid, info.gid = tar_maps.to_container(st.st_uid, st.st_gid)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar, open(src, "rb") as fh:
        tar.addfile(info, fh)
    buf.seek(0)
    apply_tar(os.path.dirname(dst) or ".", buf, ApplyDiffOpts(diff=buf, mappings=untar_maps), whiteouts="keep")


def copy(ctx: Any) -> int:
    store = ctx.store
    args = list(ctx.args)
    chown = None
    spec = ctx.flags.get("chown", "")
    if spec:
        parts = spec.split(":", 1)
        if len(parts) == 1:
            parts.append(parts[0])
        try:
            uid = _parse_uint32(parts[0])
        except ValueError as exc:
            err(f'error "{go_quote(parts[0])}" as a numeric UID: {exc}')  # Go prints no newline here
            return 1
        try:
            gid = _parse_uint32(parts[1])
        except ValueError as exc:
            err(f'error "{go_quote(parts[1])}" as a numeric GID: {exc}')
            return 1
        chown = (uid, gid)
    mounted: list[str] = []
    try:
        resolved = _in_layer(store, args[-1], mounted)
        if resolved is None:
            return 1
        untar_maps, target = resolved
        for source in args[:-1]:
            resolved = _in_layer(store, source, mounted)
            if resolved is None:
                return 1
            tar_maps, source = resolved
            try:
                copy_with_tar(source, target, tar_maps, chown, untar_maps)
            except Exception as exc:
                err(f'error copying "{go_quote(source)}" to "{go_quote(target)}": {go_error(exc, "stat")}\n')
                return 1
        return 0
    finally:
        for layer_id in reversed(mounted):
            try:
                store.unmount(layer_id)
            except (LaminaError, OSError) as exc:  # keep the copy's own error; say what was left
                err(f"unmounting {layer_id} after copy: {go_error(exc)}\n")
