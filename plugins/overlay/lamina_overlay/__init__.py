"""The overlay graph driver, on containers/storage's disk layout.

Layout (``home`` = ``<graphroot>/overlay``)::

    home/                  0700, bind-mounted onto itself with private propagation (skip_mount_home)
    home/.has-mount-program   "false" or "true"
    home/l/XXXX…          26-character base32 short links -> ../<id>/diff
    home/<id>/diff/        the layer's own files (upper dir); whiteouts are 0:0 char devices,
                           opaque dirs carry trusted.overlay.opaque=y (AUFS .wh. files with a mount_program)
    home/<id>/link         the layer's short link name
    home/<id>/lower        ``l/A:l/B:…`` nearest parent first (absent for base layers)
    home/<id>/work/        overlay work dir;  home/<id>/merged/  mount point
    home/<id>/empty/       lower dir of a base layer

Mounts go through mount(2) (ctypes). Mount data longer than a page is retried with paths relative
to the home, then with descriptor numbers relative to /proc/self/fd (as 1.62 does), from a
thread with its own working directory; chains of up to 500 layers mount.

Differences from containers/storage 1.43, on purpose:

* idmapped lower layers are never used (``driver_supports_shifting`` stays False, the
  ``idmapped-lower-dir`` probe is not run or cached); layers with other ID maps are chowned.
* ``driver_apply_diff`` returns the bytes of regular files unpacked (lamina's contract), not Go's
  ``directory.Size`` of the whole diff dir.
* the driver refuses to create a layer whose directory is complete (DuplicateID), where Go
  silently replaces it.
* ``driver_cleanup`` unmounts the home only when it is a bind mount of itself.
* ``overlay.additionallayerstore`` and ``use_composefs`` are refused as unsupported.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import shutil
import stat
import subprocess
import threading
from typing import BinaryIO, Callable

from lamina.errors import DriverNotSupported, DuplicateID, InvalidOption, LayerUnknown
from lamina.fsutil import remove_tree
from lamina.hookspecs import hookimpl
from lamina.types import ApplyDiffOpts, Change, CreateOpts, DriverConfig, IDMappings, MountOpts

from . import _sys, nativediff, probes
from .options import OverlayOptions, parse_options, parse_storage_opt

__all__ = ["Driver", "MAX_DEPTH"]

_LOG = logging.getLogger(__name__)

#: Lower layers a mount may have (containers/storage 1.62 and the kernel's OVL_MAX_STACK; 1.43 used 128).
MAX_DEPTH = 500
_LINK_DIR = "l"
_LOWER_FILE = "lower"
_ID_LENGTH = 26
_DEFAULT_PERMS = 0o555


def _new_link_id() -> str:
    return base64.b32encode(os.urandom(20)).decode()[:_ID_LENGTH]


def _selinux_enabled() -> bool:
    return os.path.exists("/sys/fs/selinux/enforce")


def format_mount_label(data: str, label: str, *, selinux: bool | None = None) -> str:
    """Append ``context="<label>"`` to mount data when SELinux is on and a label is given
    (go-selinux's FormatMountLabel; without SELinux the kernel would refuse the option)."""
    enabled = _selinux_enabled() if selinux is None else selinux
    if label and enabled:
        return f'{data},context="{label}"'
    return data


class _RefCounter:
    """Per-mountpoint use counts, as containers/storage's RefCounter: the first time a path is
    seen, a mount already present (made by another process) counts as one use."""

    def __init__(self, is_mounted: Callable[[str], bool]) -> None:
        self._is_mounted = is_mounted
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _adjust(self, path: str, delta: int) -> int:
        with self._lock:
            if path not in self._counts:
                self._counts[path] = 1 if self._is_mounted(path) else 0
            elif not self._is_mounted(path):
                self._counts[path] = 0
            count = max(0, self._counts[path] + delta)
            self._counts[path] = count
            return count

    def increment(self, path: str) -> int:
        return self._adjust(path, 1)

    def decrement(self, path: str) -> int:
        return self._adjust(path, -1)

    def forget(self, path: str) -> None:
        with self._lock:
            self._counts.pop(path, None)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _write_file(path: str, data: str, mode: int) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data.encode("utf-8", "surrogateescape"))
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _kernel_overlay_available() -> bool:
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            if any(line.split()[-1:] == ["overlay"] for line in f):
                return True
    except OSError as e:
        _LOG.debug("cannot read /proc/filesystems: %s", e)
    return os.path.isdir(f"/lib/modules/{os.uname().release}/kernel/fs/overlayfs")


class Driver:
    """overlay: layers are overlayfs upper dirs stacked through short links (see the module doc).

    Options: ``overlay.mountopt``, ``overlay.mount_program``, ``overlay.imagestore`` /
    ``overlay.additionalimagestore``, ``overlay.size``, ``overlay.inodes``,
    ``overlay.skip_mount_home``, ``overlay.ignore_chown_errors``, ``overlay.force_mask``.
    """

    name = "overlay"

    # ---------------------------------------------------------------- host checks

    @classmethod
    def check_host(cls, graph_root: str) -> None:
        """Raise DriverNotSupported when neither kernel overlay nor fuse-overlayfs can work for *graph_root*."""
        fuse = shutil.which("fuse-overlayfs")
        reasons: list[str] = []
        if os.geteuid() != 0:
            reasons.append("kernel overlay mounts need root")
        elif not _kernel_overlay_available():
            reasons.append("'overlay' not found as a supported filesystem on this host. Please ensure kernel "
                           "is new enough and has overlay support loaded.")
        else:
            magic, fs_name = probes.backing_fs_name(graph_root)
            if magic in probes.INCOMPATIBLE_FS:
                reasons.append(f"'overlay' is not supported over {fs_name}, a mount_program is required")
        if reasons and fuse is None:
            raise DriverNotSupported(cls.name, reasons[0] + " (and fuse-overlayfs is not installed)")

    # ---------------------------------------------------------------- construction

    def __init__(self, config: DriverConfig) -> None:
        self.config = config
        self.home = os.path.abspath(config.home)
        self.runhome = os.path.join(config.run_root, os.path.basename(self.home))
        self.options: OverlayOptions = parse_options(config.options)
        self.uid_maps = config.uid_maps
        self.gid_maps = config.gid_maps
        self._lock = threading.RLock()
        self.quota: object | None = None

        os.makedirs(self.home, mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(self.home, _LINK_DIR), mode=0o755, exist_ok=True)
        os.makedirs(self.runhome, mode=0o700, exist_ok=True)
        self.fs_magic, self.backing_fs = probes.backing_fs_name(self.home)

        o = self.options
        if o.mount_program:
            _write_file(os.path.join(self.home, ".has-mount-program"), "true", 0o600)
            self.supports_d_type = _sys.supports_d_type(self.home)
            self.using_metacopy = False
            self._supports_volatile: bool | None = True
        else:
            if o.force_mask is not None:
                raise InvalidOption("'force_mask' is supported only with 'mount_program'")
            if self.fs_magic in probes.INCOMPATIBLE_FS:
                raise DriverNotSupported(
                    self.name, f"'overlay' is not supported over {self.backing_fs}, a mount_program is required")
            if os.geteuid() != 0:
                raise DriverNotSupported(self.name, "kernel overlay mounts need root; set overlay.mount_program")
            self.supports_d_type = self._check_overlay()
            _write_file(os.path.join(self.home, ".has-mount-program"), "false", 0o600)
            self.using_metacopy = self._cached_probe(
                f"metacopy({o.mount_options})", lambda: probes.probe_metacopy(self.home, o.mount_options))
            self._supports_volatile = None

        if self.backing_fs == "xfs":
            from .quota import QuotaControl

            try:
                self.quota = QuotaControl(self.home)
            except OSError as e:
                if o.quota_size or o.quota_inodes:
                    raise InvalidOption("storage options overlay.size and overlay.inodes not supported. "
                                        f"Filesystem does not support Project Quota: {e}") from e
        elif o.quota_size or o.quota_inodes:
            raise InvalidOption("storage option overlay.size and overlay.inodes only supported for backingFS XFS. "
                                f"Found {self.backing_fs}")

        self._naive_only = self._check_native_diff()
        checker = probes.FS_MAGIC_FUSE if o.mount_program else probes.FS_MAGIC_OVERLAY
        self._ctr = _RefCounter(lambda p: self._is_mounted(p, checker))
        if not o.skip_mount_home:
            self._make_home_private()

    def _cached_probe(self, feature: str, probe: Callable[[], bool]) -> bool:
        cached = probes.cached_feature_check(self.runhome, feature)
        if cached is not None:
            return cached[0]
        value = probe()
        probes.cached_feature_record(self.runhome, feature, value)
        return value

    def _check_overlay(self) -> bool:
        cached = probes.cached_feature_check(self.runhome, "overlay")
        if cached is not None:
            if not cached[0]:
                raise DriverNotSupported(self.name, cached[1] or "kernel does not support overlay fs")
            return True
        try:
            probes.probe_overlay(self.home)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            why = f"kernel does not support overlay fs: {e.strerror or e}"
            probes.cached_feature_record(self.runhome, "overlay", False, why)
            raise DriverNotSupported(self.name, why) from e
        probes.cached_feature_record(self.runhome, "overlay", True)
        return True

    def _check_native_diff(self) -> bool:
        """True when only the naive diff may be used (mount program, or the kernel's upper dirs
        cannot be read as diffs); cached as ``native-diff(<mountopt>)``."""
        if self.options.mount_program:
            return True
        feature = f"native-diff({self.options.mount_options})"
        cached = probes.cached_feature_check(self.runhome, feature)
        if cached is not None:
            return not cached[0]
        text = ""
        try:
            probes.probe_native_diff(self.home, self.options.mount_options)
            naive = False
        except OSError as e:
            text = f"Not using native diff for overlay, this may cause degraded performance for building images: {e}"
            _LOG.info(text)
            naive = True
        probes.cached_feature_record(self.runhome, feature, not naive, text)
        return naive

    def _make_home_private(self) -> None:
        """containers/storage's mount.MakePrivate(home): bind the home onto itself if it is not a
        mount point yet, then make it private so layer mounts do not propagate."""
        if not _sys.is_mountpoint(self.home):
            _sys.mount(self.home, self.home, "none", _sys.MS_BIND, "")
        _sys.mount("", self.home, "none", _sys.MS_PRIVATE, "")

    @staticmethod
    def _is_mounted(path: str, magic: int) -> bool:
        try:
            if probes.backing_fs_name(path)[0] != magic or not os.path.isdir(path):
                return False
        except FileNotFoundError:
            return False
        parent = os.path.dirname(path)
        try:
            return os.stat(parent).st_dev != os.stat(path).st_dev
        except FileNotFoundError:
            return False

    # ---------------------------------------------------------------- paths

    def _check_id(self, id: str) -> None:
        if not id or "/" in id or id in (".", "..") or id == _LINK_DIR or "\0" in id:
            raise LayerUnknown(id)

    def _dir2(self, id: str) -> tuple[str, bool]:
        """(layer directory, found in an additional image store)."""
        self._check_id(id)
        own = os.path.join(self.home, id)
        if os.path.exists(own):
            return own, False
        for store in self.options.image_stores:
            candidate = os.path.join(store, self.name, id)
            if os.path.exists(candidate):
                return candidate, True
        return own, False

    def _dir(self, id: str) -> str:
        return self._dir2(id)[0]

    def _lower_link_path(self, link: str) -> str:
        """Where a ``l/XXXX`` entry of a lower file lives: this home, else an image store."""
        own = os.path.join(self.home, link)
        if os.path.lexists(own):
            return own
        for store in self.options.image_stores:
            candidate = os.path.join(store, self.name, link)
            if os.path.lexists(candidate):
                return candidate
        return own

    def _lowers(self, dir: str) -> list[str]:
        text = _read_text(os.path.join(dir, _LOWER_FILE))
        return [l for l in (text or "").split(":") if l]

    def _lower_dirs(self, id: str) -> list[str]:
        """Absolute diff dirs of the layer's lowers, nearest first (Go's getLowerDirs)."""
        out: list[str] = []
        for link in self._lowers(self._dir(id)):
            path = self._lower_link_path(link)
            try:
                target = os.readlink(path)
            except FileNotFoundError:
                _LOG.warning("Can't read link %r because it does not exist; recreating the missing symlinks", path)
                self._recreate_symlinks()
                target = os.readlink(path)
            out.append(os.path.normpath(os.path.join(os.path.dirname(path), target)))
        return out

    def _is_parent(self, id: str, parent: str | None) -> bool:
        try:
            lowers = self._lower_dirs(id)
        except OSError as e:
            _LOG.debug("overlay: lowers of %s unreadable (%s); using the naive diff", id, e)
            return False
        if not parent:
            return not lowers
        if not lowers:
            return False
        return os.path.dirname(lowers[0]) == self._dir(parent)

    def _own_diff_dirs(self, dir: str) -> list[str]:
        """``diff`` and then ``diff1``, ``diff2``… (left by ID-map updates) of a layer directory."""
        out = [os.path.join(dir, "diff")]
        n = 1
        while os.path.isdir(os.path.join(dir, f"diff{n}")):
            out.append(os.path.join(dir, f"diff{n}"))
            n += 1
        return out

    # ---------------------------------------------------------------- life cycle

    @hookimpl
    def driver_create(self, id: str, parent: str | None, opts: CreateOpts, read_write: bool) -> bool:
        if opts.storage_opt:
            if read_write and self.quota is None:
                raise InvalidOption("--storage-opt is supported only for overlay over xfs with 'pquota' mount option")
            if not read_write and any(k.lower() in ("size", "inodes") for k in opts.storage_opt):
                key = next(k for k in opts.storage_opt if k.lower() in ("size", "inodes"))
                raise InvalidOption(f"--storage-opt {key.lower()} is only supported for ReadWrite Layers")
        with self._lock:
            self._create(id, parent, opts, read_write)
        return True

    def _create(self, id: str, parent: str | None, opts: CreateOpts, read_write: bool) -> None:
        self._check_id(id)
        dir = os.path.join(self.home, id)
        maps = opts.id_mappings if not opts.id_mappings.empty else IDMappings(self.uid_maps, self.gid_maps)
        root_uid, root_gid = maps.root_pair()
        parent_dir = None
        if parent:
            parent_dir = self._dir(parent)
            if not os.path.isdir(parent_dir):
                raise LayerUnknown(parent)
            st = os.stat(parent_dir)
            root_uid, root_gid = st.st_uid, st.st_gid
        if os.path.lexists(dir):
            if os.path.exists(os.path.join(dir, "link")):
                raise DuplicateID(id)
            _LOG.warning("Trying to create a layer %r while directory %r already exists; removing it first", id, dir)
            self._remove(id)
        os.makedirs(os.path.join(self.home, _LINK_DIR), mode=0o755, exist_ok=True)
        os.mkdir(dir, 0o700)
        try:
            os.chown(dir, root_uid, root_gid)
            size, inodes = parse_storage_opt(opts.storage_opt) if opts.storage_opt else (0, 0)
            if self.quota is not None and read_write:
                self.quota.set_quota(dir, size or self.options.quota_size,  # type: ignore[attr-defined]
                                     inodes or self.options.quota_inodes)
            perms = self.options.force_mask if self.options.force_mask is not None else _DEFAULT_PERMS
            if parent_dir is not None:
                perms = stat.S_IMODE(os.stat(os.path.join(parent_dir, "diff")).st_mode)
            self._mkdir_as(os.path.join(dir, "diff"), perms, root_uid, root_gid)
            link = _new_link_id()
            # link file first: removing the layer finds the short link through it, so a crash
            # between the two leaves no dangling l/ entry behind
            _write_file(os.path.join(dir, "link"), link, 0o644)
            os.symlink(os.path.join("..", id, "diff"), os.path.join(self.home, _LINK_DIR, link))
            self._mkdir_as(os.path.join(dir, "work"), 0o700, root_uid, root_gid)
            self._mkdir_as(os.path.join(dir, "merged"), 0o700, root_uid, root_gid)
            if parent_dir is None:
                self._mkdir_as(os.path.join(dir, "empty"), 0o700, root_uid, root_gid)
                return
            _write_file(os.path.join(dir, _LOWER_FILE), self._lower_for_child(parent_dir), 0o644)
        except BaseException:
            self._remove(id)
            raise

    @staticmethod
    def _mkdir_as(path: str, mode: int, uid: int, gid: int) -> None:
        os.mkdir(path, 0o700)
        os.chown(path, uid, gid)
        os.chmod(path, mode)

    def _lower_for_child(self, parent_dir: str) -> str:
        link = _read_text(os.path.join(parent_dir, "link"))
        if link is None:
            _LOG.warning("Can't read parent link %r; recreating the missing links", os.path.join(parent_dir, "link"))
            self._recreate_symlinks()
            link = _read_text(os.path.join(parent_dir, "link"))
            if link is None:
                raise FileNotFoundError(errno.ENOENT, "parent layer has no link file", os.path.join(parent_dir, "link"))
        lowers = [f"{_LINK_DIR}/{link.strip()}"] + self._lowers(parent_dir)
        if len(lowers) > MAX_DEPTH:
            raise OSError(errno.EINVAL, f"max depth exceeded: a layer may have at most {MAX_DEPTH} parents")
        return ":".join(lowers)

    @hookimpl
    def driver_remove(self, id: str) -> bool:
        with self._lock:
            self._remove(id)
        return True

    def _remove(self, id: str) -> None:
        self._check_id(id)
        dir = os.path.join(self.home, id)
        link = _read_text(os.path.join(dir, "link"))
        if link:
            link_path = os.path.join(self.home, _LINK_DIR, link.strip())
            try:
                os.unlink(link_path)
            except FileNotFoundError:
                _LOG.debug("overlay: link %s of %s was already gone", link_path, id)
        merged = os.path.join(dir, "merged")
        if os.path.isdir(merged) and _sys.is_mountpoint(merged):
            self._unmount(merged)
        self._ctr.forget(merged)
        if self.quota is not None:
            self.quota.clear_quota(dir)  # type: ignore[attr-defined]
        remove_tree(dir)

    @hookimpl
    def driver_exists(self, id: str) -> bool:
        try:
            return os.path.exists(self._dir(id))
        except LayerUnknown:
            return False

    # ---------------------------------------------------------------- short links

    def _recreate_symlinks(self) -> None:
        """Repair ``l/`` and ``<id>/link`` from each other (containers/storage's recreateSymlinks)."""
        link_dir = os.path.join(self.home, _LINK_DIR)
        os.makedirs(link_dir, mode=0o755, exist_ok=True)
        entries = sorted(os.listdir(self.home))
        errors: list[str] = []
        for _ in range(10):
            errors = []
            progress = False
            for name in entries:
                layer_dir = os.path.join(self.home, name)
                if name == _LINK_DIR or not os.path.isdir(layer_dir) or os.path.islink(layer_dir):
                    continue
                if not os.path.isdir(os.path.join(layer_dir, "diff")):
                    continue  # probe scratch dirs, staging
                data = _read_text(os.path.join(layer_dir, "link"))
                if data is None:
                    errors.append(f"reading name of symlink for {name!r}: no link file")
                    continue
                link_path = os.path.join(link_dir, data.strip("\n"))
                if not os.path.lexists(link_path):
                    os.symlink(os.path.join("..", name, "diff"), link_path)
                    progress = True
            for link in sorted(os.listdir(link_dir)):
                path = os.path.join(link_dir, link)
                try:
                    target = os.readlink(path)
                except OSError as e:
                    errors.append(f"reading target of link {link!r}: {e}")
                    continue
                parts = target.split("/")
                if len(parts) != 3 or parts[0] != ".." or parts[2] != "diff":
                    errors.append(f"link target of {link!r} looks weird: {target!r}")
                    os.unlink(path)
                    progress = True
                    continue
                link_file = os.path.join(self.home, parts[1], "link")
                if not os.path.isdir(os.path.join(self.home, parts[1])):
                    continue
                if _read_text(link_file) != link:
                    _write_file(link_file, link, 0o644)
                    progress = True
            if not progress:
                break
        if errors:
            _LOG.warning("overlay: while recreating short links: %s", "; ".join(errors))

    # ---------------------------------------------------------------- mounting

    @hookimpl
    def driver_get(self, id: str, opts: MountOpts) -> str:
        with self._lock:
            return self._get(id, opts)

    def _get(self, id: str, opts: MountOpts) -> str:
        dir, in_store = self._dir2(id)
        if not os.path.isdir(dir):
            raise LayerUnknown(id)
        read_write = not in_store
        o = self.options
        global_opts = [x for x in o.mount_options.split(",") if x]
        opts_list = [x for x in opts.options if x] or list(global_opts)
        if "metacopy=on" in global_opts and "metacopy=on" not in opts_list and opts.options and self.using_metacopy:
            opts_list.append("metacopy=on")
        if not self.using_metacopy and "metacopy=on" in opts_list:
            _LOG.warning("Ignoring metacopy option, not supported with booted kernel")
            opts_list = [x for x in opts_list if x != "metacopy=on"]
        if "ro" in opts_list:
            read_write = False

        lowers = self._lowers(dir)
        if len(lowers) > MAX_DEPTH:
            raise OSError(errno.EINVAL, f"max depth exceeded: {len(lowers)} lower layers (at most {MAX_DEPTH})")
        link = _read_text(os.path.join(dir, "link"))
        if link is None and not in_store:
            _LOG.warning("Can't read link file of %s; recreating the missing links", id)
            self._recreate_symlinks()

        abs_lowers: list[str] = []
        rel_lowers: list[str] = []
        perms: int | None = None
        for extra in self._own_diff_dirs(dir)[1:]:
            abs_lowers.append(extra)
            rel_lowers.append(extra if in_store else os.path.join(id, os.path.basename(extra)))
            if perms is None:
                perms = stat.S_IMODE(os.stat(extra).st_mode)
        for l in lowers:
            path = os.path.join(self.home, l)
            rel = l
            if not os.path.exists(path):
                found = None
                for store in o.image_stores:
                    candidate = os.path.join(store, self.name, l)
                    if os.path.exists(candidate):
                        found = candidate
                        break
                if found is not None:
                    path = rel = found
                else:
                    _LOG.warning("Can't stat lower layer %r; recreating the missing symlinks", path)
                    self._recreate_symlinks()
                    if not os.path.exists(path):
                        raise FileNotFoundError(errno.ENOENT, f"can't stat lower layer {path!r}", path)
            if perms is None:
                perms = stat.S_IMODE(os.stat(path).st_mode)
            abs_lowers.append(path)
            rel_lowers.append(rel)
            n = 1
            while os.path.isdir(os.path.join(path, "..", f"diff{n}")):
                abs_lowers.append(os.path.join(path, "..", f"diff{n}"))
                rel_lowers.append(os.path.join(rel, "..", f"diff{n}"))
                n += 1
        if not abs_lowers:
            empty = os.path.join(dir, "empty")
            if not os.path.isdir(empty):
                os.mkdir(empty, 0o700)
            abs_lowers.append(empty)
            rel_lowers.append(empty if in_store else os.path.join(id, "empty"))
        if perms is None:
            perms = o.force_mask if o.force_mask is not None else _DEFAULT_PERMS

        root_uid, root_gid = IDMappings(self.uid_maps, self.gid_maps).root_pair()
        diff_dir = os.path.join(dir, "diff")
        if not os.path.isdir(diff_dir):
            self._mkdir_as(diff_dir, perms, root_uid, root_gid)
        merged = os.path.join(dir, "merged")
        if not os.path.isdir(merged):
            self._mkdir_as(merged, 0o700, root_uid, root_gid)
        if self._ctr.increment(merged) > 1:
            return merged
        try:
            if opts.volatile and "volatile" not in opts_list and self._volatile_supported():
                opts_list.append("volatile")
            work_dir = os.path.join(dir, "work")
            # the kernel refuses to remount a volatile upper whose marker is still there
            remove_tree(os.path.join(work_dir, "work", "incompat", "volatile"))
            self._mount(id, dir, merged, read_write, abs_lowers, rel_lowers, opts_list, opts.mount_label, in_store)
        except BaseException:
            self._ctr.decrement(merged)
            raise
        return merged

    def _volatile_supported(self) -> bool:
        if self._supports_volatile is None:
            self._supports_volatile = self._cached_probe("volatile", lambda: probes.probe_volatile(self.home))
        return self._supports_volatile

    @staticmethod
    def _overlay_data(lowers: list[str], upper: str | None, work: str, extra: list[str]) -> str:
        if upper is not None:
            data = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
        else:
            data = f"lowerdir={':'.join(lowers)}"
        return ",".join([data, *extra]) if extra else data

    def build_mount_data(self, id: str, read_write: bool, lowers: list[str], opts_list: list[str],
                         mount_label: str, *, relative: bool = False, selinux: bool | None = None) -> str:
        """The overlay mount data for layer *id* over *lowers* (absolute, or relative to the home)."""
        base = id if relative else os.path.join(self.home, id)
        diff, work = os.path.join(base, "diff"), os.path.join(base, "work")
        if read_write:
            data = self._overlay_data(lowers, diff, work, opts_list)
        else:
            data = self._overlay_data([diff, *lowers], None, work, opts_list)
        return format_mount_label(data, mount_label, selinux=selinux)

    def _mount(self, id: str, dir: str, merged: str, read_write: bool, abs_lowers: list[str],
               rel_lowers: list[str], opts_list: list[str], label: str, in_store: bool) -> None:
        if in_store:  # a layer of a read-only image store: absolute paths only
            diff = os.path.join(dir, "diff")
            data = format_mount_label(self._overlay_data([diff, *abs_lowers], None, "", opts_list), label)
        else:
            data = self.build_mount_data(id, read_write, abs_lowers, opts_list, label)
        if self.options.mount_program:
            self._mount_with_program(merged, data)
            return
        flags, fsdata = _sys.parse_mount_options(data)
        if len(fsdata) < _sys.PAGE_SIZE:
            self._mount_checked(merged, flags, fsdata, data)
            return
        rel_data = self.build_mount_data(id, read_write, rel_lowers, opts_list, label, relative=True)
        rel_flags, rel_fsdata = _sys.parse_mount_options(rel_data)
        home = self.home

        def from_home() -> None:
            os.chdir(home)
            if len(rel_fsdata) < _sys.PAGE_SIZE:
                self._mount_checked(os.path.join(id, "merged"), rel_flags, rel_fsdata, rel_data)
                return
            # Still too long: open every lower and name it by descriptor number from /proc/self/fd.
            fds: list[int] = []
            try:
                for lower in rel_lowers:
                    fds.append(os.open(lower, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
                fd_lowers = [str(fd) for fd in fds]
                fd_data = self._overlay_data(
                    fd_lowers if read_write else [str(os.open(os.path.join(id, "diff"), os.O_RDONLY | os.O_CLOEXEC)), *fd_lowers],
                    os.path.join(home, id, "diff") if read_write else None,
                    os.path.join(home, id, "work"), opts_list)
                if not read_write:
                    fds.append(int(fd_data.split("=", 1)[1].split(":", 1)[0]))
                fd_data = format_mount_label(fd_data, label)
                fd_flags, fd_fsdata = _sys.parse_mount_options(fd_data)
                if len(fd_fsdata) >= _sys.PAGE_SIZE:
                    raise OSError(errno.E2BIG, f"cannot mount layer, mount data too large {len(fd_fsdata)} >= "
                                               f"page size {_sys.PAGE_SIZE}")
                os.chdir("/proc/self/fd")
                self._mount_checked(merged, fd_flags, fd_fsdata, fd_data)
            finally:
                for fd in fds:
                    os.close(fd)

        _sys.run_in_private_cwd(from_home)

    @staticmethod
    def _mount_checked(target: str, flags: int, fsdata: str, shown: str) -> None:
        try:
            _sys.mount("overlay", target, "overlay", flags, fsdata)
        except OSError as e:
            raise OSError(e.errno, f"creating overlay mount to {target}, mount_data={shown!r}: "
                                   f"{os.strerror(e.errno or 0)}") from e

    def _mount_with_program(self, target: str, data: str) -> None:
        proc = subprocess.run([self.options.mount_program, "-o", data, target], cwd=self.home,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              check=False)
        if proc.returncode != 0:
            output = proc.stderr.decode(errors="replace").strip() or "<stderr empty>"
            raise OSError(errno.EIO, f"using mount program {self.options.mount_program}: {output}")

    @hookimpl
    def driver_put(self, id: str) -> bool:
        with self._lock:
            dir = self._dir(id)
            if not os.path.isdir(dir):
                raise LayerUnknown(id)
            merged = os.path.join(dir, "merged")
            if self._ctr.decrement(merged) > 0:
                return True
            self._unmount(merged)
            try:
                os.rmdir(merged)  # 1.43 removes merged/ on unmount and recreates it on mount
            except FileNotFoundError:
                _LOG.debug("overlay: %s was already gone", merged)
            except OSError as e:
                _LOG.debug("overlay: failed to remove mountpoint %s: %s", merged, e)
        return True

    def _unmount(self, merged: str) -> None:
        if self.options.mount_program:
            for tool in ("fusermount3", "fusermount"):
                exe = shutil.which(tool)
                if exe is None:
                    continue
                done = subprocess.run([exe, "-u", merged], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, check=False)
                if done.returncode == 0:
                    return
        try:
            _sys.umount(merged, _sys.MNT_DETACH)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                raise

    # ---------------------------------------------------------------- information

    @hookimpl
    def driver_status(self) -> list[tuple[str, str]]:
        return [
            ("Backing Filesystem", self.backing_fs),
            ("Supports d_type", str(self.supports_d_type).lower()),
            ("Native Overlay Diff", str(not self._naive_only).lower()),
            ("Using metacopy", str(self.using_metacopy).lower()),
        ]

    @hookimpl
    def driver_metadata(self, id: str) -> dict[str, str]:
        dir = self._dir(id)
        if not os.path.isdir(dir):
            raise LayerUnknown(id)
        meta = {
            "WorkDir": os.path.join(dir, "work"),
            "MergedDir": os.path.join(dir, "merged"),
            "UpperDir": os.path.join(dir, "diff"),
        }
        lowers = self._lower_dirs(id)
        if lowers:
            meta["LowerDir"] = ":".join(lowers)
        return meta

    @hookimpl
    def driver_cleanup(self) -> bool:
        with self._lock:
            remove_tree(os.path.join(self.home, "staging"))
            if not self.options.skip_mount_home and _sys.is_self_bind(self.home):
                try:
                    _sys.umount(self.home, _sys.MNT_DETACH)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
        return True

    @hookimpl
    def driver_additional_image_stores(self) -> list[str]:
        return list(self.options.image_stores)

    @hookimpl
    def driver_read_write_disk_usage(self, id: str) -> tuple[int, int]:
        """(bytes, inodes) of the layer's own ``diff/`` (Go's directory.Usage of the upper dir)."""
        diff = os.path.join(self._dir(id), "diff")
        if not os.path.isdir(diff):
            raise LayerUnknown(id)
        return nativediff.directory_size(diff), nativediff.inode_count(diff)

    # ---------------------------------------------------------------- native diffs

    def _native(self, id: str, parent: str | None) -> bool:
        return not self._naive_only and self._is_parent(id, parent)

    @hookimpl
    def driver_diff(self, id: str, id_mappings: IDMappings, parent: str | None,
                    parent_mappings: IDMappings, mount_label: str) -> BinaryIO | None:
        if not self._native(id, parent):
            return None
        diff = os.path.join(self._dir(id), "diff")
        return nativediff.overlay_diff_tar(diff, self._lower_dirs(id), id_mappings)

    @hookimpl
    def driver_changes(self, id: str, id_mappings: IDMappings, parent: str | None,
                       parent_mappings: IDMappings, mount_label: str) -> list[Change] | None:
        if not self._native(id, parent):
            return None
        return nativediff.overlay_changes(self._lower_dirs(id), os.path.join(self._dir(id), "diff"))

    @hookimpl
    def driver_diff_size(self, id: str, id_mappings: IDMappings, parent: str | None,
                         parent_mappings: IDMappings, mount_label: str) -> int | None:
        if not self._native(id, parent):
            return None
        return nativediff.directory_size(os.path.join(self._dir(id), "diff"))

    @hookimpl
    def driver_apply_diff(self, id: str, parent: str | None, opts: ApplyDiffOpts) -> int | None:
        if self.options.ignore_chown_errors:
            opts.ignore_chown_errors = True
        if self.options.force_mask is not None:
            opts.force_mask = self.options.force_mask
        if not self._is_parent(id, parent):
            return None  # the core's naive apply through a mount, with the options set above
        from lamina.archive import apply_tar

        diff = os.path.join(self._dir(id), "diff")
        whiteouts = "keep" if self.options.mount_program else "overlay"
        return apply_tar(diff, opts.diff, opts, whiteouts=whiteouts)

    @hookimpl
    def driver_diff_getter(self, id: str) -> Callable[[str], BinaryIO] | None:
        dir = self._dir(id)
        if not os.path.isdir(dir):
            raise LayerUnknown(id)
        return nativediff.DiffFiles([*self._own_diff_dirs(dir), *self._lower_dirs(id)])

    # ---------------------------------------------------------------- ID maps

    @hookimpl
    def driver_update_layer_id_map(self, id: str, to_container: IDMappings, to_host: IDMappings,
                                   mount_label: str) -> bool:
        """Re-own the layer through a mount, then move that copy-up below a fresh ``diff/``
        (containers/storage rotates ``diff`` -> ``diff1``…), so later diffs show only real changes."""
        from lamina.naive import chown_tree_by_maps

        with self._lock:
            dir = self._dir(id)
            global_opts = tuple(x for x in self.options.mount_options.split(",") if x)
            root = self._get(id, MountOpts(mount_label=mount_label, options=global_opts))
            try:
                chown_tree_by_maps(root, to_container, to_host)
            finally:
                self.driver_put(id)
            diffs = self._own_diff_dirs(dir)
            perms = self.options.force_mask
            if perms is None:
                perms = stat.S_IMODE(os.stat(diffs[0]).st_mode)
            for i in range(len(diffs) - 1, -1, -1):
                os.rename(diffs[i], os.path.join(dir, f"diff{i + 1}"))
            uid, gid = to_host.root_pair()
            # the work dir may still reference the old upper in its index: start it afresh
            remove_tree(os.path.join(dir, "work"))
            self._mkdir_as(os.path.join(dir, "work"), 0o700, uid, gid)
            self._mkdir_as(os.path.join(dir, "diff"), perms, uid, gid)
        return True
