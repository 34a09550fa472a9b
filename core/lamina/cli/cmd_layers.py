"""create-layer, import-layer, layers, layer, layer-parent-owners, container-parent-owners."""

from __future__ import annotations

import os
from typing import Any

from lamina.errors import LaminaError

from .common import MappingError, duplicate_name_message, fail, id_mappings_from_flags, known, open_input
from .flags import go_int_list
from .logs import logrus
from .output import err, go_error, go_json, out


def _layer_maps(ctx: Any, parent: str) -> Any:
    """The ID maps for a new layer, resolved as Go's PutLayer does (the parent's maps when none
    are given, else the store's), or None to let the store decide."""
    request = id_mappings_from_flags(ctx.flags)
    store = ctx.store
    inherited = store.id_mappings
    if parent:
        try:
            found = store.layer(parent)
        except Exception:  # the store reports the unknown parent itself
            found = None
        if found is not None:
            from lamina.types import IDMappings

            inherited = IDMappings(tuple(found.uidmap), tuple(found.gidmap))
    if not request.explicit and inherited == store.id_mappings:
        return None
    return request.resolve(inherited)


def _print_layer(ctx: Any, layer: Any) -> None:
    if ctx.json:
        out(go_json(layer))
    else:
        out(f"{layer.id}\n" + "".join(f"\t{name}\n" for name in layer.names))


def _create_failed(ctx: Any, exc: BaseException) -> int:
    from lamina.errors import DuplicateName

    if isinstance(exc, DuplicateName):
        err(duplicate_name_message(ctx.store, "layer", list(ctx.flags["name"]), exc) + "\n")
        return 1
    return fail(exc)


def create_layer(ctx: Any) -> int:
    parent = ctx.args[0] if ctx.args else ""
    try:
        maps = _layer_maps(ctx, parent)
    except MappingError as exc:
        err(f"{exc}\n")
        return 1
    f = ctx.flags
    try:
        layer = ctx.store.create_layer(
            id=f["id"] or None, parent=parent or None, names=list(f["name"]), mount_label=f["label"],
            writeable=not f["readonly"], id_mappings=maps)
    except Exception as exc:
        return _create_failed(ctx, exc)
    _print_layer(ctx, layer)
    return 0


def import_layer(ctx: Any) -> int:
    parent = ctx.args[0] if ctx.args else ""
    f = ctx.flags
    try:
        stream = open_input(f["file"])
    except OSError as exc:
        err(go_error(exc, "open") + "\n")
        return 1
    try:
        try:
            maps = _layer_maps(ctx, parent)
        except MappingError as exc:
            err(f"{exc}\n")
            return 1
        from .progress import reading_with_progress

        counted = reading_with_progress(stream, "import-layer")
        try:
            layer = ctx.store.create_layer(
                id=f["id"] or None, parent=parent or None, names=list(f["name"]), mount_label=f["label"],
                writeable=not f["readonly"], id_mappings=maps, diff=counted)
        except Exception as exc:
            return _create_failed(ctx, exc)
        finally:
            if counted is not stream:
                counted.close()
    finally:
        if f["file"]:
            stream.close()
    _print_layer(ctx, layer)
    return 0


# ---------------------------------------------------------------- listing


def layers(ctx: Any) -> int:
    store = ctx.store
    try:
        all_layers = store.layers()
    except Exception as exc:
        return fail(exc)
    if ctx.json:
        out(go_json(all_layers))
        return 0
    image_map: dict[str, list[Any]] = {}
    try:
        for image in store.images():
            for layer_id in [image.top_layer, *image.mapped_top_layers]:
                image_map.setdefault(layer_id, []).append(image)
    except LaminaError as exc:  # Go lists the layers even when images cannot be read
        logrus("debug", f"listing images for the layer listing: {exc}")
    container_map: dict[str, Any] = {}
    try:
        for ctr in store.containers():
            container_map[ctr.layer] = ctr
    except LaminaError as exc:
        logrus("debug", f"listing containers for the layer listing: {exc}")
    tree = bool(ctx.flags.get("tree"))
    nodes: list[tuple[str, str, list[str]]] = []
    text: list[str] = []
    for layer in all_layers:
        if tree:
            notes = [f"name: {n}" for n in layer.names]
            if layer.mount_point:
                notes.append(f"mount: {layer.mount_point}")
            for image in image_map.get(layer.id, []):
                notes.append(f"image: {image.id}")
                notes.extend(f"image name: {n}" for n in image.names)
            ctr = container_map.get(layer.id)
            if ctr is not None:
                notes.append(f"container: {ctr.id}")
                notes.extend(f"container name: {n}" for n in ctr.names)
            nodes.append((layer.parent or "(base)", layer.id, notes))
        else:
            text.append(f"{layer.id}\n")
            text.extend(f"\tname: {n}\n" for n in layer.names)
            for image in image_map.get(layer.id, []):
                text.append(f"\timage: {image.id}\n")
                text.extend(f"\t\tname: {n}\n" for n in image.names)
            ctr = container_map.get(layer.id)
            if ctr is not None:
                text.append(f"\tcontainer: {ctr.id}\n")
                text.extend(f"\t\tname: {n}\n" for n in ctr.names)
    if tree:
        text = print_tree(nodes)
    out("".join(text))
    return 0


_VERTICAL = "\u2502"
_THIS_AND_MORE = "\u251c"
_JUST_THIS = "\u2514"
_STEM = "\u2500"
_INDENT_STEP = 2
_STEM_WIDTH = _INDENT_STEP - 1


def _select_root(nodes: list[tuple[str, str, list[str]]]) -> str:
    children: dict[str, list[str]] = {}
    are_children: set[str] = set()
    for left, right, _ in nodes:
        are_children.add(right)
        children.setdefault(left, []).append(right)
    favorite = ""
    for left, rights in children.items():
        if left in are_children:
            continue
        if favorite == "" or len(rights) < len(children[favorite]):
            favorite = left
    return favorite


def _print_subtree(root: str, nodes: list, indent: int, continued: list[int], text: list[str]) -> list:
    leftovers = [n for n in nodes if n[0] != root]
    kids = [n for n in nodes if n[0] == root]
    for i, (_, right, notes) in enumerate(kids):
        prefix = [" "] * indent
        for column in continued:
            prefix[column] = _VERTICAL
        istring = "".join(prefix)
        subc = list(continued)
        header, note_header = _JUST_THIS, " "
        if i < len(kids) - 1:
            subc.append(indent)
            header, note_header = _THIS_AND_MORE, _VERTICAL
        text.append(f"{istring}{header}{_STEM * _STEM_WIDTH}{right}\n")
        for note in notes:
            text.append(f"{istring}{note_header}{' ' * _STEM_WIDTH}{note}\n")
        leftovers = _print_subtree(right, leftovers, indent + _INDENT_STEP, subc, text)
    return leftovers


def print_tree(nodes: list[tuple[str, str, list[str]]]) -> list[str]:
    """cmd/containers-storage/tree.go's printTree, returned as lines."""
    text: list[str] = []
    while nodes:
        root = _select_root(nodes)
        text.append(f"{root}\n")
        before = len(nodes)
        nodes = _print_subtree(root, nodes, 0, [], text)
        if len(nodes) == before:
            break
    return text


def layer(ctx: Any) -> int:
    matched = known(ctx.store.layer, ctx.args)
    if ctx.json:
        out(go_json(matched))
    else:
        text = []
        for lyr in matched:
            text.append(f"ID: {lyr.id}\n")
            for m in lyr.uidmap:
                text.append(f"UID mapping: (container={m.container_id}, host={m.host_id}, size={m.size})\n")
            for m in lyr.gidmap:
                text.append(f"GID mapping: (container={m.container_id}, host={m.host_id}, size={m.size})\n")
            if lyr.parent:
                text.append(f"Parent: {lyr.parent}\n")
            text.extend(f"Name: {n}\n" for n in lyr.names)
            if lyr.read_only:
                text.append("Read Only: true\n")
        out("".join(text))
    return 0 if len(matched) == len(ctx.args) else 1


# ---------------------------------------------------------------- parent owners


class _NotMounted(Exception):
    def __str__(self) -> str:
        return "layer is not mounted"  # Go's ErrLayerNotMounted


def parent_owners(lyr: Any) -> tuple[list[int] | None, list[int] | None]:
    """layerStore.ParentOwners: host IDs owning the directories above the layer's mount point
    that the layer's ID maps cannot represent (None, None without maps)."""
    from lamina.types import IDMappings

    if not lyr.uidmap and not lyr.gidmap:
        return None, None
    if not lyr.mount_point:
        raise _NotMounted()
    maps = IDMappings(tuple(lyr.uidmap), tuple(lyr.gidmap))

    def to_host_root(table: tuple) -> int:
        if not table:
            return 0
        for m in table:
            if m.container_id <= 0 < m.container_id + m.size:
                return m.host_id - m.container_id
        raise ValueError("Container ID 0 cannot be mapped to a host ID")

    root_uid = to_host_root(maps.uid_map)
    root_gid = to_host_root(maps.gid_map)

    def mappable(uid: int, gid: int) -> bool:
        try:
            maps.to_container(uid, gid)
            return True
        except ValueError:
            return False

    uids: set[int] = set()
    gids: set[int] = set()
    directory = os.path.dirname(lyr.mount_point)
    while directory and directory != os.sep:
        for st in (os.stat(directory), os.lstat(directory)):
            if not mappable(st.st_uid, root_gid):
                uids.add(st.st_uid)
            if not mappable(root_uid, st.st_gid):
                gids.add(st.st_gid)
        directory = os.path.dirname(directory)
    return (sorted(uids) or None), (sorted(gids) or None)


def _owners_json(id: str, uids: Any, gids: Any) -> str:
    return go_json({"ID": id, "UIDs": uids, "GIDs": gids})


def layer_parent_owners(ctx: Any) -> int:
    matched = known(ctx.store.layer, ctx.args)
    for lyr in matched:
        try:
            uids, gids = parent_owners(lyr)
        except Exception as exc:
            err(f"LayerParentOwner: {go_error(exc)}\n")
            return 1
        if ctx.json:
            out(_owners_json(lyr.id, uids, gids))
        else:
            text = f"ID: {lyr.id}\n"
            if uids:
                text += f"UIDs: {go_int_list(uids)}\n"
            if gids:
                text += f"GIDs: {go_int_list(gids)}\n"
            out(text)
    return 0 if len(matched) == len(ctx.args) else 1


def container_parent_owners(ctx: Any) -> int:
    matched = known(ctx.store.container, ctx.args)
    for ctr in matched:
        try:
            uids, gids = parent_owners(ctx.store.layer(ctr.layer))
        except Exception as exc:
            err(f"ContainerParentOwner: {go_error(exc)}\n")
            return 1
        if ctx.json:
            out(_owners_json(ctr.id, uids, gids))
        else:
            out(f"ID: {ctr.id}\nUIDs: {go_int_list(uids)}\nGIDs: {go_int_list(gids)}\n")
    return 0 if len(matched) == len(ctx.args) else 1
