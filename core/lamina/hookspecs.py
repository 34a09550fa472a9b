"""The graph-driver contract and the store's observer events, as pluggy hook specifications.

A driver is a plugin object whose methods carry ``@hookimpl`` and are named after the
``driver_*`` specs below; it is constructed with a :class:`lamina.types.DriverConfig` and
raises :class:`lamina.errors.DriverNotSupported` from its constructor (or from an optional
``check_host(graph_root)`` classmethod) when it cannot work on this host.

Rules for every ``driver_*`` hook:

* They are ``firstresult``: the first non-None answer wins. Exactly one driver answers them;
  extra plugins may only wrap them (``@hookimpl(wrapper=True)``).
* For the diff family (``driver_diff``, ``driver_changes``, ``driver_apply_diff``,
  ``driver_diff_size``), ``driver_create_from_template`` and ``driver_update_layer_id_map``,
  returning ``None`` means
  "let the core's naive implementation do it": the core registers that fallback with
  ``trylast=True``, built on ``driver_get``/``driver_put`` and a two-tree walk.
* Hooks are called with keyword arguments only; parameters have no defaults.
* Errors are raised as :mod:`lamina.errors` exceptions (``LayerUnknown`` for an unknown
  ID) or ``OSError`` for I/O failures.

All hooks exist since lamina 0.1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO, Callable

import pluggy

if TYPE_CHECKING:
    from .types import ApplyDiffOpts, Change, CreateOpts, IDMappings, MountOpts

PROJECT = "lamina"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Hooks every driver must implement itself (the core has no fallback for them).
REQUIRED_DRIVER_HOOKS = (
    "driver_create",
    "driver_remove",
    "driver_get",
    "driver_put",
    "driver_exists",
    "driver_status",
    "driver_metadata",
    "driver_cleanup",
)

# ---------------------------------------------------------------- driver hooks: life cycle


@hookspec(firstresult=True)
def driver_create(id: str, parent: str | None, opts: CreateOpts, read_write: bool) -> bool | None:
    """Create layer *id* as a child of *parent* (None: an empty base layer).

    *read_write* is True for a writable layer (Go's CreateReadWrite, used for container
    layers and the CLI's default ``create-layer``) and False for a read-only image layer
    (Go's Create). The new layer's tree starts as its parent's tree, with ownership as
    ``opts.id_mappings`` asks. Return True. Raise ``DuplicateID`` if *id* exists and
    ``LayerUnknown`` if *parent* does not.
    """


@hookspec(firstresult=True)
def driver_remove(id: str) -> bool | None:
    """Remove layer *id* and all its data; removing an unknown layer is not an error. Return True."""


@hookspec(firstresult=True)
def driver_get(id: str, opts: MountOpts) -> str | None:
    """Make layer *id*'s merged tree available and return its absolute path.

    Every call must be balanced by one ``driver_put``. ``"ro"`` in ``opts.options`` asks for a
    read-only view. Raise ``LayerUnknown`` for an unknown layer.
    """


@hookspec(firstresult=True)
def driver_put(id: str) -> bool | None:
    """Release one ``driver_get`` of layer *id* (unmount when it was the last). Return True."""


@hookspec(firstresult=True)
def driver_exists(id: str) -> bool | None:
    """Whether the driver holds data for layer *id*."""


@hookspec(firstresult=True)
def driver_status() -> list[tuple[str, str]] | None:
    """Key/value pairs describing the driver (``Backing Filesystem``, ...); may be empty."""


@hookspec(firstresult=True)
def driver_metadata(id: str) -> dict[str, str] | None:
    """Low-level facts about layer *id* (for overlay: ``LowerDir``, ``UpperDir``, ``WorkDir``, ``MergedDir``)."""


@hookspec(firstresult=True)
def driver_cleanup() -> bool | None:
    """Release everything the driver holds on the host (mounts of its home). Return True."""


@hookspec(firstresult=True)
def driver_additional_image_stores() -> list[str] | None:
    """Extra read-only graph roots this driver was configured with (``<driver>.imagestore=``)."""


@hookspec(firstresult=True)
def driver_read_write_disk_usage(id: str) -> tuple[int, int] | None:
    """(bytes, inodes) used by layer *id*'s own writable part; None defers to a walk of the tree."""


# ---------------------------------------------------------------- driver hooks: diffs


@hookspec(firstresult=True)
def driver_diff(
    id: str,
    id_mappings: IDMappings,
    parent: str | None,
    parent_mappings: IDMappings,
    mount_label: str,
) -> BinaryIO | None:
    """An uncompressed tar stream of what layer *id* changes relative to *parent*.

    Deletions appear as AUFS whiteouts (``.wh.name``). The caller closes the stream.
    Return None to let the core's naive two-tree walk produce it.
    """


@hookspec(firstresult=True)
def driver_changes(
    id: str,
    id_mappings: IDMappings,
    parent: str | None,
    parent_mappings: IDMappings,
    mount_label: str,
) -> list[Change] | None:
    """The list of paths layer *id* adds, modifies or deletes relative to *parent*; None defers to the naive walk."""


@hookspec(firstresult=True)
def driver_apply_diff(id: str, parent: str | None, opts: ApplyDiffOpts) -> int | None:
    """Extract the uncompressed tar ``opts.diff`` into layer *id*, applying AUFS whiteouts.

    Return the number of bytes unpacked, or None to let the core extract into the tree that
    ``driver_get`` returns. Must never write outside the layer (see ``lamina.archive``).
    """


@hookspec(firstresult=True)
def driver_diff_size(
    id: str,
    id_mappings: IDMappings,
    parent: str | None,
    parent_mappings: IDMappings,
    mount_label: str,
) -> int | None:
    """Bytes of the regular files layer *id* adds or modifies relative to *parent*; None defers to the naive walk."""


@hookspec(firstresult=True)
def driver_diff_getter(id: str) -> Callable[[str], BinaryIO] | None:
    """A function opening a file of layer *id*'s own diff by relative path without mounting it.

    Used to rebuild tars from tar-split data. None: the core mounts the layer instead.
    """


# ---------------------------------------------------------------- driver hooks: ID maps


@hookspec(firstresult=True)
def driver_update_layer_id_map(
    id: str, to_container: IDMappings, to_host: IDMappings, mount_label: str
) -> bool | None:
    """Re-own layer *id*'s files from the *to_container* host IDs to the *to_host* host IDs.

    Return True when done; None lets the core walk the tree and ``lchown`` every entry.
    """


@hookspec(firstresult=True)
def driver_create_from_template(
    id: str,
    template: str,
    template_mappings: IDMappings,
    parent: str | None,
    parent_mappings: IDMappings,
    opts: CreateOpts,
    read_write: bool,
) -> bool | None:
    """Create layer *id* as a copy of layer *template*: a child of *parent* (the template's
    parent) whose tree is the template's, owned as *template_mappings* has it (Go's
    CreateFromTemplate; the store then re-owns it to ``opts.id_mappings`` with
    ``driver_update_layer_id_map``). Used for the ID-mapped copies of image top layers.

    Return True; None lets the core create *id* on *parent* and apply the template's diff.
    """


@hookspec(firstresult=True)
def driver_supports_shifting() -> bool | None:
    """Whether the driver can present a layer under other ID maps at mount time (idmapped mounts)."""


# ---------------------------------------------------------------- store events (observers)
# Any enabled plugin may implement these; return values are ignored. They are called after the
# change is committed to disk, with the store's locks still held: keep them quick.


@hookspec
def store_layer_created(store_root: str, layer_id: str, parent: str | None) -> None:
    """A layer record and its driver data now exist."""


@hookspec
def store_layer_removed(store_root: str, layer_id: str) -> None:
    """A layer and its driver data were deleted."""


@hookspec
def store_layer_mounted(store_root: str, layer_id: str, path: str, count: int) -> None:
    """A layer was mounted at *path*; *count* is its mount count after the call."""


@hookspec
def store_layer_unmounted(store_root: str, layer_id: str, count: int) -> None:
    """A layer's mount count dropped to *count* (0: really unmounted)."""


@hookspec
def store_diff_applied(store_root: str, layer_id: str, diff_digest: str, size: int) -> None:
    """A diff was applied to a layer; *diff_digest* is the uncompressed digest."""


@hookspec
def store_image_created(store_root: str, image_id: str, top_layer: str | None) -> None:
    """An image record was created."""


@hookspec
def store_image_removed(store_root: str, image_id: str) -> None:
    """An image record was deleted."""


@hookspec
def store_container_created(store_root: str, container_id: str, image_id: str, layer_id: str) -> None:
    """A container record and its layer were created."""


@hookspec
def store_container_removed(store_root: str, container_id: str) -> None:
    """A container record, its layer and its directories were deleted."""
