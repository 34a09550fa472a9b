"""The Store: layers, images and containers on a graph driver, in containers/storage's format.

A Store shares its graph root and run root live with the Go tools: every method takes the
same POSIX locks containers/storage takes, reloads what another process changed, and writes
the same files. Methods accept a full ID, a name or a unique ID prefix wherever Go does.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator

from . import drivers
from .atomicio import write_file_atomic
from .errors import (
    ContainerUnknown,
    DuplicateID,
    ImageUnknown,
    ImageUsedByContainer,
    InvalidBigDataName,
    LayerHasChildren,
    LayerMounted,
    LayerUnknown,
    LayerUsedByContainer,
    LayerUsedByImage,
    StoreIsReadOnly,
)
from .fsutil import remove_tree
from .graphdriver import DriverProxy, build_driver
from .lockfile import LockFile
from .metastore import (
    ContainerStore,
    ImageStore,
    LayerRecords,
    IMAGE_STORE,
    STABLE,
    VOLATILE,
    RecordStore,
    Source,
    dedupe,
)
from .records import Container, Image, Layer, go_time_now
from .types import Change, CreateOpts, DriverConfig, IDMap, IDMappings, MountOpts

if TYPE_CHECKING:
    from .config import StoreOptions

DigestFunc = Callable[[bytes], str]


def _contiguous(maps: tuple[IDMap, ...]) -> bool:
    """Whether ID map ranges follow one another on both sides (Go's idtools.IsContiguous)."""
    return all(b.container_id == a.container_id + a.size and b.host_id == a.host_id + a.size
               for a, b in zip(maps, maps[1:]))


def sha256_digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


class Store:
    """A containers/storage store rooted at *graph_root* and *run_root*.

    Open one with :meth:`open` (or :func:`lamina.open_store`); close it with :meth:`close` or
    a ``with`` block. Thread-safe; safe to share with other processes, lamina or Go.
    """

    def __init__(
        self,
        graph_root: str,
        run_root: str,
        *,
        driver_name: str = "",
        driver_options: list[str] | tuple[str, ...] = (),
        driver_priority: list[str] | tuple[str, ...] = (),
        uid_map: tuple[IDMap, ...] = (),
        gid_map: tuple[IDMap, ...] = (),
        transient_store: bool = False,
        image_store: str = "",
        plugins: list[object] | tuple[object, ...] = (),
        driver_instance: Any = None,
    ) -> None:
        if not graph_root or not run_root:
            raise ValueError("a store needs both a graph root and a run root")
        self.graph_root = os.path.abspath(graph_root)
        self.run_root = os.path.abspath(run_root)
        self.transient_store = transient_store
        self.image_store_dir = os.path.abspath(image_store) if image_store else ""
        if self.image_store_dir == self.graph_root:
            raise ValueError("the image store must be a different directory from the graph root")
        self.id_mappings = IDMappings(tuple(uid_map), tuple(gid_map))
        for path in (self.graph_root, self.run_root):
            os.makedirs(path, mode=0o700, exist_ok=True)
        for sub in ("mounts", "tmp"):  # 1.43 creates both on every open
            os.makedirs(os.path.join(self.graph_root, sub), mode=0o700, exist_ok=True)
        self.graph_lock = LockFile.get(os.path.join(self.graph_root, "storage.lock"))
        self.userns_lock = LockFile.get(os.path.join(self.graph_root, "userns.lock"))
        with self.graph_lock.locked():
            name = driver_name or drivers.choose_driver(self.graph_root, tuple(driver_priority))
            config = DriverConfig(
                name=name,
                home=os.path.join(self.graph_root, name),
                run_root=self.run_root,
                options=tuple(driver_options),
                uid_maps=tuple(uid_map),
                gid_maps=tuple(gid_map),
                image_store=self.image_store_dir,
            )
            instance = driver_instance if driver_instance is not None else drivers.new_driver(config)
            self.driver: DriverProxy = build_driver(config, instance, plugins=plugins)
            self.driver_name = name
            self.driver_options = tuple(driver_options)
            self._open_stores()
        self._events = self.driver.events

    @classmethod
    def open(cls, options: "StoreOptions | None" = None, **overrides: Any) -> "Store":
        """Open the store described by *options* (default: storage.conf and the environment)."""
        if options is None:
            from .config import load_store_options

            options = load_store_options()
        plugin_objs = []
        if getattr(options, "plugins", None):
            plugin_objs = [drivers.load_plugin(p) for p in options.plugins]
        # The driver is chosen here so that storage.conf's options (additionalimagestores
        # included) can be narrowed to the ones that apply to it.
        name = options.graph_driver_name or drivers.choose_driver(
            os.path.abspath(options.graph_root), tuple(getattr(options, "graph_driver_priority", ()) or ()))
        kwargs: dict[str, Any] = dict(
            driver_name=name,
            driver_options=options.driver_options_for(name),
            driver_priority=list(getattr(options, "graph_driver_priority", []) or []),
            uid_map=tuple(getattr(options, "uid_map", ()) or ()),
            gid_map=tuple(getattr(options, "gid_map", ()) or ()),
            transient_store=bool(getattr(options, "transient_store", False)),
            image_store=getattr(options, "image_store", None) or "",
            plugins=plugin_objs,
        )
        kwargs.update(overrides)
        return cls(options.graph_root, options.run_root, **kwargs)

    # ---------------------------------------------------------------- construction of the record stores

    def _open_stores(self) -> None:
        d = self.driver_name
        g, r = self.graph_root, self.run_root
        volatile_root = r if self.transient_store else g
        layer_sources = [Source(os.path.join(g, f"{d}-layers", "layers.json"), STABLE, True)]
        layer_locks = [os.path.join(g, f"{d}-layers", "layers.lock")]
        images_root = g
        if self.image_store_dir:
            # 1.62's split image store: image records and read-only layers in a second root.
            images_root = self.image_store_dir
            layer_sources.append(
                Source(os.path.join(images_root, f"{d}-layers", "layers.json"), IMAGE_STORE, True))
            layer_locks.append(os.path.join(images_root, f"{d}-layers", "layers.lock"))
        layer_sources.append(Source(os.path.join(volatile_root, f"{d}-layers", "volatile-layers.json"), VOLATILE, False))
        self.layer_store = LayerRecords(
            os.path.join(g, f"{d}-layers"), layer_sources, layer_locks, mounts_dir=os.path.join(r, f"{d}-layers"),
        )
        self.layer_store.incomplete_cleaner = self._remove_layer_data
        self.image_store = ImageStore(
            os.path.join(images_root, f"{d}-images"),
            [Source(os.path.join(images_root, f"{d}-images", "images.json"), STABLE, True)],
            os.path.join(images_root, f"{d}-images", "images.lock"),
        )
        cdir = os.path.join(r if self.transient_store else g, f"{d}-containers")
        csources = [Source(os.path.join(cdir, "containers.json"), STABLE, not self.transient_store),
                    Source(os.path.join(cdir, "volatile-containers.json"), VOLATILE, False)]
        self.container_store = ContainerStore(cdir, csources, os.path.join(cdir, "containers.lock"))
        os.makedirs(os.path.join(r, f"{d}-locks"), mode=0o700, exist_ok=True)
        # The first load of each store happens under its write lock, so incomplete layers are
        # removed and duplicate names repaired as soon as any process opens the store.
        for store in (self.layer_store, self.image_store, self.container_store):
            with store.access(write=True):
                pass
        self.ro_layer_stores: list[LayerRecords] = []
        self.ro_image_stores: list[ImageStore] = []
        for extra in self.driver.additional_image_stores():
            extra = os.path.abspath(extra)
            ldir = os.path.join(extra, f"{d}-layers")
            idir = os.path.join(extra, f"{d}-images")
            if os.path.exists(os.path.join(ldir, "layers.lock")):
                self.ro_layer_stores.append(
                    LayerRecords(ldir, [Source(os.path.join(ldir, "layers.json"), STABLE, True)],
                                 os.path.join(ldir, "layers.lock"), read_only=True))
            if os.path.exists(os.path.join(idir, "images.lock")):
                self.ro_image_stores.append(
                    ImageStore(idir, [Source(os.path.join(idir, "images.json"), STABLE, True)],
                               os.path.join(idir, "images.lock"), read_only=True))
        # Finish or undo what a process that died mid-operation left (lamina.check's intents).
        self._events = self.driver.events
        if self._interrupted_work_left():
            from .check import recover_interrupted

            recover_interrupted(self)

    #: The directory (under the graph root, after the driver's name) of lamina.check's intents.
    INTENTS_SUFFIX = "-intents"

    @property
    def intents_dir(self) -> str:
        return os.path.join(self.graph_root, f"{self.driver_name}{self.INTENTS_SUFFIX}")

    def temp_file_dirs(self) -> list[str]:
        """The directories where interrupted atomic writes leave ``.tmp-*`` files."""
        temp_dirs = {self.layer_store.directory, self.image_store.directory, self.container_store.directory}
        if self.image_store_dir:
            temp_dirs.add(os.path.join(self.image_store_dir, f"{self.driver_name}-layers"))
        if self.layer_store.mounts_path is not None:
            temp_dirs.add(os.path.dirname(self.layer_store.mounts_path))
        return sorted(temp_dirs)

    def _interrupted_work_left(self) -> bool:
        """Whether an intent or a ``.tmp-*`` file is present: a few directory listings, no locks.

        What a dead process left is there before this looks; a live writer's temp file only
        makes the (locked) recovery run for nothing.
        """
        intents = self.intents_dir
        for directory in [intents, *self.temp_file_dirs()]:
            try:
                names = os.listdir(directory)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if directory == intents and names:
                return True
            if any(n.startswith(".tmp-") for n in names):
                return True
        return False

    # ---------------------------------------------------------------- the access mechanism

    @contextlib.contextmanager
    def _access(self, layers: str = "", images: str = "", containers: str = "",
                graph: bool = False) -> Iterator[None]:
        """Lock and refresh the named stores in containers/storage's lock order.

        Each argument is ``""`` (not needed), ``"r"`` (shared) or ``"w"`` (exclusive); read-only
        additional stores are always taken shared alongside their kind. *graph* takes storage.lock.
        """
        with contextlib.ExitStack() as stack:
            if graph:
                stack.enter_context(self.graph_lock.locked())
            if layers:
                stack.enter_context(self.layer_store.access(write=layers == "w"))
                for ro in self.ro_layer_stores:
                    stack.enter_context(ro.access())
            if images:
                stack.enter_context(self.image_store.access(write=images == "w"))
                for ro in self.ro_image_stores:
                    stack.enter_context(ro.access())
            if containers:
                stack.enter_context(self.container_store.access(write=containers == "w"))
            yield

    # ---------------------------------------------------------------- lookups (inside _access)

    def _find_layer(self, key: str) -> tuple[Layer, LayerRecords] | None:
        for store in [self.layer_store, *self.ro_layer_stores]:
            found = store.lookup(key)
            if found is not None:
                return found, store
        if key:
            for store in [self.layer_store, *self.ro_layer_stores]:
                for layer in store.records:
                    if layer.mount_point and layer.mount_point == key:
                        return layer, store
        return None

    def _layer(self, key: str) -> Layer:
        found = self._find_layer(key)
        if found is None:
            raise LayerUnknown(key)
        return found[0]

    def _rw_layer(self, key: str) -> Layer:
        found = self._find_layer(key)
        if found is None:
            raise LayerUnknown(key)
        if found[1] is not self.layer_store:
            raise StoreIsReadOnly(f"layer {found[0].id} is in a read-only image store")
        return found[0]

    def _find_image(self, key: str) -> tuple[Image, ImageStore] | None:
        for store in [self.image_store, *self.ro_image_stores]:
            found = store.lookup(key)
            if found is not None:
                return found, store
        return None

    def _image(self, key: str) -> Image:
        found = self._find_image(key)
        if found is None:
            raise ImageUnknown(key)
        return found[0]

    def _rw_image(self, key: str) -> Image:
        found = self._find_image(key)
        if found is None:
            raise ImageUnknown(key)
        if found[1] is not self.image_store:
            raise StoreIsReadOnly(f"image {found[0].id} is in a read-only image store")
        return found[0]

    def _container(self, key: str) -> Container:
        return self.container_store.get(key)

    # ---------------------------------------------------------------- layers

    def _remove_layer_data(self, layer: Layer) -> None:
        """Remove everything a layer owns on disk except its record (driver data, tar-split, big data)."""
        # Always: a create killed half-way may have left data exists() does not see (vfs's
        # <id>.creating staging copy); the contract makes removing an unknown layer harmless.
        self.driver.remove(layer.id)
        for path in (os.path.join(self.layer_store.directory, f"{layer.id}.tar-split.gz"),):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        remove_tree(self.layer_store.big_data_dir(layer.id))

    def _create_layer_locked(
        self,
        id: str | None,
        parent: str | None,
        names: list[str] | tuple[str, ...],
        mount_label: str,
        writeable: bool,
        id_mappings: IDMappings | None,
        diff: BinaryIO | None = None,
        container_layer: bool = False,
        storage_opt: dict[str, str] | None = None,
        template: Layer | None = None,
    ) -> Layer:
        """Create a layer record and its driver data (layers write-locked).

        With *template* the new layer is a copy of that layer (same parent, contents, digests
        and tar-split) re-owned to *id_mappings*: Go's TemplateLayer, for ID-mapped top layers.
        """
        records = self.layer_store
        if template is not None:
            parent = template.parent or None
        parent_layer = self._layer(parent) if parent else None
        if id is None:
            id = records.unused_id()
        names = dedupe(list(names))
        if any(id in s.by_id for s in self.ro_layer_stores):
            raise DuplicateID(id)
        records.check_new(id, names)
        maps = id_mappings if id_mappings is not None else self.id_mappings
        layer = Layer(
            id=id,
            names=names,
            parent=parent_layer.id if parent_layer else "",
            mount_label=mount_label,
            created=go_time_now(),
            flags={"incomplete": True},
            uidmap=maps.uid_map,
            gidmap=maps.gid_map,
            location=(VOLATILE if container_layer and self.transient_store
                      else IMAGE_STORE if not writeable and self.image_store_dir else STABLE),
        )
        records.add(layer)
        try:
            records.save()
        except BaseException:
            records.discard(layer)  # not on disk: forget it here too (e.g. the disk is full)
            raise
        try:
            opts = CreateOpts(mount_label=mount_label, storage_opt=dict(storage_opt or {}), id_mappings=maps)
            parent_maps = IDMappings(parent_layer.uidmap, parent_layer.gidmap) if parent_layer else IDMappings()
            if template is not None:
                old_maps: IDMappings | None = IDMappings(template.uidmap, template.gidmap)
                self.driver.create_from_template(id, template.id, old_maps, layer.parent or None, parent_maps, opts,
                                                 read_write=writeable)
                self._copy_template_content(template, layer)
            else:
                self.driver.create(id, layer.parent or None, opts, read_write=writeable)
                old_maps = parent_maps if parent_layer is not None else None
            if old_maps is not None and old_maps != maps:
                self.driver.update_layer_id_map(id, old_maps, maps, mount_label)
            if diff is not None:
                from .layercontent import apply_diff_locked

                size = apply_diff_locked(self, layer, diff)
            layer.flags = {k: v for k, v in layer.flags.items() if k != "incomplete"}
            records.save()
        except BaseException:
            # On disk the record is still flagged incomplete (the last save either cleared the flag
            # or failed). Remove the data without saving first: on a full disk that save would fail
            # and keep the data that fills it. A cleanup failure must not hide the original error.
            layer.flags = {**layer.flags, "incomplete": True}
            try:
                self._delete_layer_locked(layer, marked=True)
            except Exception as cleanup:
                import logging

                logging.getLogger("lamina.store").warning(
                    "cleaning up layer %s after a failed create failed too (%s); the next write-locked "
                    "load removes it", id, cleanup)
            raise
        if diff is not None:
            self._events.store_diff_applied(store_root=self.graph_root, layer_id=id,
                                            diff_digest=layer.uncompressed_digest, size=size)
        self._events.store_layer_created(store_root=self.graph_root, layer_id=id, parent=layer.parent or None)
        return layer

    def _copy_template_content(self, template: Layer, layer: Layer) -> None:
        """What describes the template's contents (digests, sizes, owners, tar-split) onto its copy."""
        layer.compressed_digest, layer.compressed_size = template.compressed_digest, template.compressed_size
        layer.uncompressed_digest, layer.uncompressed_size = template.uncompressed_digest, template.uncompressed_size
        layer.compression = template.compression
        layer.uidset, layer.gidset = list(template.uidset), list(template.gidset)
        from .layercontent import tar_split_path

        try:
            with open(tar_split_path(self.layer_store, template.id), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        write_file_atomic(tar_split_path(self.layer_store, layer.id), data, 0o600)

    def _top_layer_for_mapping(self, img: Image, maps: IDMappings) -> Layer:
        """The layer a container of *img* with *maps* goes on (Go's imageTopLayerForMapping).

        The top layer or one of the image's mapped top layers when its ID maps are *maps* (any
        unmapped one when the driver can shift IDs at mount time); otherwise a new ID-mapped
        copy of the top layer, recorded in the image's ``mapped-layers`` (or, when the image or
        the layer is in a read-only store, the top layer itself: the container layer is then
        re-owned on its own). Needs layers and images write-locked.
        """
        shifting = self.driver.supports_shifting() and _contiguous(maps.uid_map) and _contiguous(maps.gid_map)

        def matches(layer: Layer) -> bool:
            if shifting and not layer.uidmap and not layer.gidmap:
                return True
            return layer.uidmap == maps.uid_map and layer.gidmap == maps.gid_map

        first: Layer | None = None
        first_writable = False
        for candidate in [img.top_layer, *img.mapped_top_layers]:
            found = self._find_layer(candidate)
            if found is None:
                continue
            layer, store = found
            if layer.parent and self._find_layer(layer.parent) is None:
                continue
            if matches(layer):
                return layer
            if first is None:
                first, first_writable = layer, store is self.layer_store
        if first is None:
            raise LayerUnknown(img.top_layer)
        if img.read_only or not first_writable:
            return first
        copy_maps = IDMappings() if shifting else maps
        mapped = self._create_layer_locked(None, None, (), first.mount_label, False, copy_maps, template=first)
        try:
            img.mapped_top_layers = [*img.mapped_top_layers, mapped.id]
            self.image_store.save()
        except BaseException:
            img.mapped_top_layers = [x for x in img.mapped_top_layers if x != mapped.id]
            self._delete_layer_locked(mapped)
            raise
        return mapped

    def create_layer(
        self,
        id: str | None = None,
        parent: str | None = None,
        names: list[str] | tuple[str, ...] = (),
        mount_label: str = "",
        writeable: bool = True,
        id_mappings: IDMappings | None = None,
        diff: BinaryIO | None = None,
        storage_opt: dict[str, str] | None = None,
    ) -> Layer:
        """Create a layer (a child of *parent*, or a base layer), optionally filled from *diff*.

        The record is flagged incomplete before the driver does anything and cleared after, so
        a crash leaves nothing the next writer does not clean up.
        """
        with self._access(layers="w", graph=False):
            return self._create_layer_locked(id, parent, names, mount_label, writeable, id_mappings,
                                             diff, storage_opt=storage_opt)

    def put_layer(self, id: str | None, parent: str | None, names: list[str] | tuple[str, ...],
                  diff: BinaryIO | None, mount_label: str = "", writeable: bool = False) -> Layer:
        """Create a layer and fill it from *diff* (containers/storage's PutLayer)."""
        return self.create_layer(id, parent, names, mount_label, writeable, None, diff)

    def _delete_layer_locked(self, layer: Layer, marked: bool = False) -> None:
        """Delete a layer record and its data; interrupted, the next writer finishes it.

        *marked*: the record is already saved flagged incomplete (a create being undone).
        """
        records = self.layer_store
        while layer.mount_count > 0:
            self._unmount_locked(layer, force=True)
        if not marked:
            layer.flags = {**layer.flags, "incomplete": True}
            try:
                records.save()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                # A full disk: the flag cannot be saved first, and removing the data is what frees
                # space for the final save. (Killed in between, check reports the layer as damaged.)
                import logging

                logging.getLogger("lamina.store").warning(
                    "deleting layer %s on a full disk: removing its data before recording the deletion", layer.id)
        self._remove_layer_data(layer)
        records.discard(layer)
        records.save()
        self._events.store_layer_removed(store_root=self.graph_root, layer_id=layer.id)

    def delete_layer(self, key: str) -> None:
        """Delete a layer unless it has children or an image or container uses it."""
        with self._access(layers="w", images="r", containers="r", graph=True):
            layer = self._rw_layer(key)
            for child in self.layer_store.children(layer.id):
                raise LayerHasChildren(f"used by layer {child.id}: layer has children")
            for image in self.image_store.records:
                if image.top_layer == layer.id or layer.id in image.mapped_top_layers:
                    raise LayerUsedByImage(f"used by image {image.id}: layer is in use by an image")
            for ctr in self.container_store.records:
                if ctr.layer == layer.id:
                    raise LayerUsedByContainer(f"used by container {ctr.id}: layer is in use by a container")
            self._delete_layer_locked(layer)

    def layers(self) -> list[Layer]:
        """Every layer: the store's own, then those of read-only additional stores."""
        with self._access(layers="r"):
            out = list(self.layer_store.records)
            for ro in self.ro_layer_stores:
                out.extend(l for l in ro.records if l.id not in self.layer_store.by_id)
            return out

    def layer(self, key: str) -> Layer:
        with self._access(layers="r"):
            return self._layer(key)

    def layers_by_compressed_digest(self, digest: str) -> list[Layer]:
        with self._access(layers="r"):
            return [l for s in [self.layer_store, *self.ro_layer_stores] for l in s.by_compressed_digest(digest)]

    def layers_by_uncompressed_digest(self, digest: str) -> list[Layer]:
        with self._access(layers="r"):
            return [l for s in [self.layer_store, *self.ro_layer_stores] for l in s.by_uncompressed_digest(digest)]

    # ---------------------------------------------------------------- images

    def create_image(
        self,
        id: str | None = None,
        top_layer: str | None = None,
        names: list[str] | tuple[str, ...] = (),
        metadata: str = "",
        digest: str = "",
        created: str = "",
    ) -> Image:
        """Create an image record on *top_layer* (None: an image without layers)."""
        with self._access(layers="r", images="w"):
            layer_id = self._layer(top_layer).id if top_layer else ""
            store = self.image_store
            if id is None:
                id = store.unused_id()
            names = dedupe(list(names))
            store.check_new(id, names)
            image = Image(id=id, digest=digest, names=names, top_layer=layer_id, metadata=metadata,
                          created=created or go_time_now())
            image.recompute_digests()
            store.add(image)
            store.save()
        self._events.store_image_created(store_root=self.graph_root, image_id=id, top_layer=layer_id or None)
        return image

    def images(self) -> list[Image]:
        with self._access(images="r"):
            out = list(self.image_store.records)
            for ro in self.ro_image_stores:
                out.extend(i for i in ro.records if i.id not in self.image_store.by_id)
            return out

    def image(self, key: str) -> Image:
        with self._access(images="r"):
            return self._image(key)

    def images_by_digest(self, digest: str) -> list[Image]:
        with self._access(images="r"):
            return [i for s in [self.image_store, *self.ro_image_stores] for i in s.by_digest(digest)]

    def images_by_top_layer(self, key: str) -> list[Image]:
        with self._access(layers="r", images="r"):
            layer_id = self._layer(key).id
            return [i for s in [self.image_store, *self.ro_image_stores] for i in s.records
                    if i.top_layer == layer_id or layer_id in i.mapped_top_layers]

    def delete_image(self, key: str, commit: bool = True) -> list[str]:
        """Delete an image and the layers only it used; returns those layer IDs.

        With *commit* False nothing is deleted (a dry run). Refused while a container uses the image.
        """
        with self._access(layers="w", images="w", containers="r", graph=True):
            image = self._rw_image(key)
            for ctr in self.container_store.records:
                if ctr.image == image.id:
                    raise ImageUsedByContainer(f"image used by {ctr.id}: image is in use by a container")
            other_tops: set[str] = set()
            for other in self.image_store.records:
                if other is not image:
                    other_tops.add(other.top_layer)
                    other_tops.update(other.mapped_top_layers)
            container_layers = {c.layer for c in self.container_store.records}
            children: dict[str, list[str]] = {}
            for l in self.layer_store.records:
                if l.parent:
                    children.setdefault(l.parent, []).append(l.id)
            to_remove: list[str] = []

            def collect(start: str) -> None:
                layer_id = start
                while layer_id:
                    if layer_id in container_layers or layer_id in other_tops or layer_id not in self.layer_store.by_id:
                        return
                    if any(c not in to_remove for c in children.get(layer_id, [])):
                        return
                    to_remove.append(layer_id)
                    layer_id = self.layer_store.by_id[layer_id].parent

            for mapped in image.mapped_top_layers:
                collect(mapped)
            collect(image.top_layer)
            if commit:
                from .check import intent

                with intent(self, "delete-image", id=image.id, layers=to_remove):
                    self.image_store.discard(image)
                    self.image_store.save()
                    remove_tree(self.image_store.big_data_dir(image.id))
                    for layer_id in to_remove:
                        layer = self.layer_store.by_id.get(layer_id)
                        if layer is not None:
                            self._delete_layer_locked(layer)
        if commit:
            self._events.store_image_removed(store_root=self.graph_root, image_id=image.id)
        return to_remove

    # ---------------------------------------------------------------- containers

    def create_container(
        self,
        id: str | None = None,
        names: list[str] | tuple[str, ...] = (),
        image: str = "",
        metadata: str = "",
        mount_label: str = "",
        volatile: bool = False,
        id_mappings: IDMappings | None = None,
        storage_opt: dict[str, str] | None = None,
    ) -> Container:
        """Create a container: a writable layer on *image*'s top layer (or a base layer without image).

        With ID maps other than the top layer's, the layer goes on an ID-mapped copy of the top
        layer, made once per mapping and recorded in the image's ``mapped-layers`` (as Go does).
        """
        maps_given = id_mappings is not None and bool(id_mappings.uid_map or id_mappings.gid_map)
        with contextlib.ExitStack() as locks:
            if maps_given:  # Go serialises containers with ID maps on userns.lock
                locks.enter_context(self.userns_lock.locked())
            locks.enter_context(self._access(layers="w", images="w" if image else "", containers="w"))
            store = self.container_store
            img = self._image(image) if image else None
            if id is None:
                id = store.unused_id()
            names = dedupe(list(names))
            store.check_new(id, names)
            layer_id = self.layer_store.unused_id()
            maps = id_mappings if id_mappings is not None else self.id_mappings
            from .check import intent

            # layer and container record are two writes: an intent lets the next open drop the layer
            # if the process dies before the container is recorded
            with intent(self, "create-container", id=id, layer=layer_id):
                top = self._top_layer_for_mapping(img, maps).id if img and img.top_layer else None
                layer = self._create_layer_locked(
                    layer_id, top, (), mount_label, True,
                    id_mappings, container_layer=True, storage_opt=storage_opt,
                )
                flags: dict[str, Any] = {"MountLabel": mount_label, "ProcessLabel": ""}
                if volatile:
                    flags["Volatile"] = True
                maps = id_mappings or IDMappings()
                ctr = Container(id=id, names=names, image=img.id if img else "", layer=layer.id, metadata=metadata,
                                created=go_time_now(), uidmap=maps.uid_map, gidmap=maps.gid_map, flags=flags,
                                location=VOLATILE if self.transient_store else STABLE)
                try:
                    store.add(ctr)
                    store.save()
                except BaseException:
                    store.discard(ctr)
                    self._delete_layer_locked(layer)
                    raise
        self._events.store_container_created(store_root=self.graph_root, container_id=id,
                                             image_id=ctr.image, layer_id=layer.id)
        return ctr

    def containers(self) -> list[Container]:
        with self._access(containers="r"):
            return list(self.container_store.records)

    def container(self, key: str) -> Container:
        with self._access(containers="r"):
            return self._container(key)

    def container_by_layer(self, layer_id: str) -> Container:
        with self._access(containers="r"):
            for ctr in self.container_store.records:
                if ctr.layer == layer_id:
                    return ctr
        raise ContainerUnknown(layer_id)

    def _container_dirs(self, ctr_id: str) -> tuple[str, str]:
        d = self.driver_name
        return (os.path.join(self.graph_root, f"{d}-containers", ctr_id),
                os.path.join(self.run_root, f"{d}-containers", ctr_id))

    def container_directory(self, key: str) -> str:
        """``<graphroot>/<driver>-containers/<id>/userdata``, created on demand."""
        ctr = self.container(key)
        path = os.path.join(self._container_dirs(ctr.id)[0], "userdata")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def container_run_directory(self, key: str) -> str:
        """``<runroot>/<driver>-containers/<id>/userdata``, created on demand."""
        ctr = self.container(key)
        path = os.path.join(self._container_dirs(ctr.id)[1], "userdata")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def _delete_container_locked(self, ctr: Container) -> None:
        from .check import intent

        # layer, record and directories: an intent lets the next open finish an interrupted delete
        with intent(self, "delete-container", id=ctr.id, layer=ctr.layer):
            layer = self.layer_store.by_id.get(ctr.layer)
            if layer is not None:
                self._delete_layer_locked(layer)
            self.container_store.discard(ctr)
            self.container_store.save()
            for path in self._container_dirs(ctr.id):
                remove_tree(path)
        self._events.store_container_removed(store_root=self.graph_root, container_id=ctr.id)

    def delete_container(self, key: str) -> None:
        """Delete a container, its layer and its directories."""
        with self._access(layers="w", images="r", containers="w", graph=True):
            self._delete_container_locked(self._container(key))

    # ---------------------------------------------------------------- everything by ID

    def delete(self, key: str) -> None:
        """Delete a container, image or layer named *key*, without safety checks."""
        with self._access(layers="w", images="w", containers="w", graph=True):
            ctr = self.container_store.lookup(key)
            if ctr is not None:
                self._delete_container_locked(ctr)
                return
            image = self.image_store.lookup(key)
            if image is not None:
                self.image_store.discard(image)
                self.image_store.save()
                remove_tree(self.image_store.big_data_dir(image.id))
                return
            layer = self.layer_store.lookup(key)
            if layer is not None:
                self._delete_layer_locked(layer)
                return
        raise LayerUnknown(key)

    def exists(self, key: str) -> tuple[bool, bool, bool]:
        """(is a layer, is an image, is a container) for *key*."""
        with self._access(layers="r", images="r", containers="r"):
            return (self._find_layer(key) is not None, self._find_image(key) is not None,
                    self.container_store.lookup(key) is not None)

    def _locate(self, key: str, *, write: bool) -> tuple[RecordStore[Any], Any]:
        """The record named *key*: layers first, then images, then containers (Go's order)."""
        found_layer = self._find_layer(key)
        if found_layer is not None:
            if write and found_layer[1] is not self.layer_store:
                raise StoreIsReadOnly(f"layer {found_layer[0].id} is in a read-only image store")
            return found_layer[1], found_layer[0]
        found_image = self._find_image(key)
        if found_image is not None:
            if write and found_image[1] is not self.image_store:
                raise StoreIsReadOnly(f"image {found_image[0].id} is in a read-only image store")
            return found_image[1], found_image[0]
        ctr = self.container_store.lookup(key)
        if ctr is not None:
            return self.container_store, ctr
        raise LayerUnknown(key)

    def names(self, key: str) -> list[str]:
        with self._access(layers="r", images="r", containers="r"):
            return list(self._locate(key, write=False)[1].names)

    def _update_names(self, key: str, names: list[str] | tuple[str, ...], op: str) -> None:
        with self._access(layers="w", images="w", containers="w"):
            store, record = self._locate(key, write=True)
            store.update_names(record.id, list(names), op)

    def set_names(self, key: str, names: list[str] | tuple[str, ...]) -> None:
        """Replace the names; a name another record of the same kind had moves here."""
        self._update_names(key, names, "set")

    def add_names(self, key: str, names: list[str] | tuple[str, ...]) -> None:
        self._update_names(key, names, "add")

    def remove_names(self, key: str, names: list[str] | tuple[str, ...]) -> None:
        self._update_names(key, names, "remove")

    def metadata(self, key: str) -> str:
        with self._access(layers="r", images="r", containers="r"):
            return str(self._locate(key, write=False)[1].metadata)

    def set_metadata(self, key: str, metadata: str) -> None:
        with self._access(layers="w", images="w", containers="w"):
            store, record = self._locate(key, write=True)
            record.metadata = metadata
            store.save()

    # ---------------------------------------------------------------- big data

    def _big_data_target(self, kind: str, key: str, *, write: bool) -> tuple[RecordStore[Any], Any]:
        if kind == "layer":
            return (self.layer_store, self._rw_layer(key)) if write else self._layer_and_store(key)
        if kind == "image":
            if write:
                return self.image_store, self._rw_image(key)
            found = self._find_image(key)
            if found is None:
                raise ImageUnknown(key)
            return found[1], found[0]
        if kind == "container":
            return self.container_store, self._container(key)
        raise ValueError(f"unknown record kind {kind!r}")

    def _layer_and_store(self, key: str) -> tuple[RecordStore[Any], Layer]:
        found = self._find_layer(key)
        if found is None:
            raise LayerUnknown(key)
        return found[1], found[0]

    def _kind_access(self, kind: str, mode: str) -> Any:
        return self._access(**{f"{kind}s": mode})  # type: ignore[arg-type]

    def list_big_data(self, kind: str, key: str) -> list[str]:
        """Big-data keys of the layer, image or container named *key* (*kind*: layer, image, container)."""
        with self._kind_access(kind, "r"):
            return list(self._big_data_target(kind, key, write=False)[1].big_data_names)

    def big_data(self, kind: str, key: str, name: str) -> bytes:
        with self._kind_access(kind, "r"):
            store, record = self._big_data_target(kind, key, write=False)
            return store.read_big_data(record, name)

    def big_data_size(self, kind: str, key: str, name: str) -> int:
        with self._kind_access(kind, "r"):
            store, record = self._big_data_target(kind, key, write=False)
            sizes = getattr(record, "big_data_sizes", {})
            if name in sizes:
                return int(sizes[name])
            return len(store.read_big_data(record, name))

    def big_data_digest(self, kind: str, key: str, name: str) -> str:
        with self._kind_access(kind, "r"):
            store, record = self._big_data_target(kind, key, write=False)
            digests = getattr(record, "big_data_digests", {})
            if name in digests:
                return str(digests[name])
            return sha256_digest(store.read_big_data(record, name))

    def set_big_data(self, kind: str, key: str, name: str, data: bytes,
                     digest_manifest: DigestFunc | None = None) -> None:
        """Store *data* under *name*; for images, a ``manifest*`` key's digest comes from *digest_manifest*
        (default sha256 of the bytes) and becomes the image digest if it has none."""
        if not name:
            raise InvalidBigDataName("can't set empty name for image big data item")
        from .check import intent

        with self._kind_access(kind, "w"):
            store, record = self._big_data_target(kind, key, write=True)
            store.big_data_path(record.id, name)  # an invalid key fails here, before anything is written
            plain_digest = sha256_digest(data)
            new_digest = plain_digest
            if kind == "image" and name.startswith("manifest"):
                new_digest = (digest_manifest or sha256_digest)(data)
            # file and record are two writes: an intent lets the next open reconcile them after a crash
            with intent(self, "set-big-data", kind=kind, id=record.id, key=name, size=len(data),
                        sha256=plain_digest, digest=new_digest):
                store.write_big_data_file(record, name, data)
                if kind != "layer":
                    record.big_data_sizes = {**record.big_data_sizes, name: len(data)}
                    record.big_data_digests = {**record.big_data_digests, name: new_digest}
                    if kind == "image":
                        if name.startswith("manifest") and not record.digest:
                            record.digest = new_digest
                if name not in record.big_data_names:
                    record.big_data_names = [*record.big_data_names, name]
                if kind == "image":
                    record.recompute_digests()
                store.save()

    # ---------------------------------------------------------------- mounts

    def _mount_opts(self, layer: Layer, mount_label: str, options: tuple[str, ...],
                    volatile: bool = False) -> MountOpts:
        return MountOpts(mount_label=mount_label or layer.mount_label, uid_maps=layer.uidmap,
                         gid_maps=layer.gidmap, options=options, volatile=volatile)

    def _mount_locked(self, layer: Layer, opts: MountOpts) -> str:
        records = self.layer_store
        with records.mounts_locked():
            if layer.mount_count > 0 and layer.mount_point and os.path.ismount(layer.mount_point):
                layer.mount_count += 1
            else:
                path = self.driver.get(layer.id, opts)
                layer.mount_point = path
                layer.mount_count += 1
            records.save_mounts()
            self._events.store_layer_mounted(store_root=self.graph_root, layer_id=layer.id,
                                             path=layer.mount_point, count=layer.mount_count)
            return layer.mount_point

    def _unmount_locked(self, layer: Layer, force: bool) -> bool:
        records = self.layer_store
        with records.mounts_locked():
            if force and layer.mount_count > 0:
                layer.mount_count = 1
            if layer.mount_count > 1:
                layer.mount_count -= 1
            else:
                if layer.mount_count > 0:
                    self.driver.put(layer.id)
                layer.mount_count = 0
                layer.mount_point = ""
            records.save_mounts()
            self._events.store_layer_unmounted(store_root=self.graph_root, layer_id=layer.id,
                                               count=layer.mount_count)
            return layer.mount_count > 0

    def _mount_target(self, key: str) -> tuple[Layer, str, bool]:
        """Resolve a container (by ID, name or layer) or a layer; returns (layer, mount label, volatile)."""
        ctr = self.container_store.lookup(key)
        if ctr is not None:
            return self._rw_layer(ctr.layer), str(ctr.flags.get("MountLabel", "")), ctr.volatile
        return self._rw_layer(key), "", False

    def mount(self, key: str, mount_label: str = "", options: tuple[str, ...] = ()) -> str:
        """Mount a container's or a layer's tree and return its path; counts nest."""
        with self._access(layers="w", containers="r", graph=True):
            layer, label, volatile = self._mount_target(key)
            return self._mount_locked(layer, self._mount_opts(layer, mount_label or label, options, volatile))

    def mount_image(self, key: str, options: tuple[str, ...] = (), mount_label: str = "") -> str:
        """Mount an image's top layer read-only and return its path."""
        with self._access(layers="w", images="r", graph=True):
            image = self._image(key)
            if not image.top_layer:
                raise LayerUnknown(key)
            found = self._find_layer(image.top_layer)
            if found is None:
                raise LayerUnknown(image.top_layer)
            layer, store = found
            opts = self._mount_opts(layer, mount_label, tuple(dict.fromkeys(("ro", *options))))
            if store is not self.layer_store:
                return self.driver.get(layer.id, opts)
            return self._mount_locked(layer, opts)

    def unmount(self, key: str, force: bool = False) -> bool:
        """Drop one mount (all with *force*); returns whether the layer is still mounted."""
        with self._access(layers="w", images="r", containers="r", graph=True):
            try:
                layer, _, _ = self._mount_target(key)
            except LayerUnknown:
                image = self._find_image(key)
                if image is None or not image[0].top_layer:
                    raise
                layer = self._rw_layer(image[0].top_layer)
            return self._unmount_locked(layer, force)

    def mounted(self, key: str) -> int:
        """The mount count of the container's or layer's layer."""
        with self._access(layers="r", containers="r"):
            layer, _, _ = self._mount_target(key)
            return layer.mount_count

    # ---------------------------------------------------------------- layer content

    def apply_diff(self, key: str, diff: BinaryIO) -> int:
        """Extract the tar *diff* (any supported compression) into layer *key*; returns the unpacked size.

        Replaces the layer's recorded digests, sizes and tar-split, as containers/storage does.
        """
        from .layercontent import apply_diff_locked

        with self._access(layers="w"):
            layer = self._rw_layer(key)
            size = apply_diff_locked(self, layer, diff)
        self._events.store_diff_applied(store_root=self.graph_root, layer_id=layer.id,
                                        diff_digest=layer.uncompressed_digest, size=size)
        return size

    def _diff_pair(self, from_key: str | None, to_key: str) -> tuple[Layer, Layer | None]:
        to_layer = self._layer(to_key)
        if from_key:
            return to_layer, self._layer(from_key)
        return to_layer, (self._layer(to_layer.parent) if to_layer.parent else None)

    def changes(self, from_key: str | None, to_key: str) -> list[Change]:
        """What layer *to_key* changes relative to *from_key* (default: its parent)."""
        with self._access(layers="r"):
            to_layer, from_layer = self._diff_pair(from_key, to_key)
            return self.driver.changes(
                to_layer.id, from_layer.id if from_layer else None,
                IDMappings(to_layer.uidmap, to_layer.gidmap),
                IDMappings(from_layer.uidmap, from_layer.gidmap) if from_layer else IDMappings(),
                to_layer.mount_label,
            )

    def diff_size(self, from_key: str | None, to_key: str) -> int:
        """Bytes of regular files layer *to_key* adds or modifies relative to *from_key* (default: its parent)."""
        with self._access(layers="r"):
            to_layer, from_layer = self._diff_pair(from_key, to_key)
            return self.driver.diff_size(
                to_layer.id, from_layer.id if from_layer else None,
                IDMappings(to_layer.uidmap, to_layer.gidmap),
                IDMappings(from_layer.uidmap, from_layer.gidmap) if from_layer else IDMappings(),
                to_layer.mount_label,
            )

    def diff(self, from_key: str | None, to_key: str, compression: int | None = None) -> BinaryIO:
        """A tar stream of layer *to_key* relative to *from_key* (default: its parent).

        *compression* is a ``lamina.layercontent`` constant; None uses the layer's recorded one.
        The caller closes the stream.
        """
        from .layercontent import diff_locked

        with self._access(layers="r", graph=True):
            to_layer, from_layer = self._diff_pair(from_key, to_key)
            found = self._find_layer(to_layer.id)
            return diff_locked(self, to_layer, from_layer, compression, found[1] if found else None)

    # ---------------------------------------------------------------- store-wide

    def status(self) -> list[tuple[str, str]]:
        """The driver's status pairs."""
        return self.driver.status()

    def wipe(self) -> None:
        """Delete every container, image and layer."""
        with self._access(layers="w", images="w", containers="w", graph=True):
            for ctr in list(self.container_store.records):
                self.container_store.discard(ctr)
                for path in self._container_dirs(ctr.id):
                    remove_tree(path)
            self.container_store.save()
            for image in list(self.image_store.records):
                self.image_store.discard(image)
                remove_tree(self.image_store.big_data_dir(image.id))
            self.image_store.save()
            remaining = list(self.layer_store.records)
            while remaining:
                parents = {l.parent for l in remaining}
                leaves = [l for l in remaining if l.id not in parents] or remaining
                for layer in leaves:
                    self._delete_layer_locked(layer)
                remaining = [l for l in remaining if l not in leaves]

    def shutdown(self, force: bool = False) -> list[str]:
        """Release the driver; refused while layers are mounted unless *force* unmounts them.

        Returns the IDs of layers that were force-unmounted.
        """
        with self._access(layers="w", graph=True):
            mounted = [l for l in self.layer_store.records if l.mount_count > 0]
            if mounted and not force:
                raise LayerMounted(f"a layer is mounted: {mounted[0].id}")
            for layer in mounted:
                self._unmount_locked(layer, force=True)
            self.driver.cleanup()
            self.graph_lock.touch()
            return [l.id for l in mounted]

    # ---------------------------------------------------------------- check, repair, gc (lamina.check)

    def check(self, options: Any = None) -> Any:
        """A :class:`lamina.check.CheckReport` of what is damaged or left over (``options``: CheckOptions)."""
        from .check import check

        return check(self, options)

    def repair(self, report: Any, remove_containers: bool = False) -> list[Any]:
        """Remove what *report* found damaged (containers only if asked); returns RepairActions."""
        from .check import repair

        return repair(self, report, remove_containers)

    def garbage_collect(self, max_age: float = 0.0) -> list[Any]:
        """Remove data cancelled creates left without a record; returns RepairActions."""
        from .check import garbage_collect

        return garbage_collect(self, max_age)

    def close(self) -> None:
        """End use of this object. Every method takes and drops its own locks, so nothing is held
        between calls; driver state on the host (mounts) stays until :meth:`shutdown`, as in
        containers/storage, where other processes may still be using it."""

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def mounted_layer(self, key: str, mount_label: str = "") -> Iterator[str]:
        """``with store.mounted_layer(id) as path:`` mounts for the block and unmounts after."""
        path = self.mount(key, mount_label)
        try:
            yield path
        finally:
            self.unmount(key)


def open_store(options: "StoreOptions | None" = None, **overrides: Any) -> Store:
    """Open a store; see :meth:`Store.open`."""
    return Store.open(options, **overrides)
