"""create-container, containers, container, get-container-dir, get-container-run-dir."""

from __future__ import annotations

from typing import Any

from .common import MappingError, dir_size, fail, id_mappings_from_flags, known
from .output import err, go_error, go_json, out


def create_container(ctx: Any) -> int:
    f = ctx.flags
    metadata = f["metadata"]
    if f["metadata_file"]:
        try:
            with open(f["metadata_file"], "rb") as fh:
                metadata = fh.read().decode("utf-8", "surrogateescape")
        except OSError as exc:
            err(go_error(exc, "open") + "\n")
            return 1
    try:
        request = id_mappings_from_flags(f)
    except MappingError as exc:
        err(f"{exc}\n")
        return 1
    maps = None
    if request.explicit:
        from lamina.types import IDMappings

        maps = request.resolve(IDMappings())
    try:
        ctr = ctx.store.create_container(id=f["id"] or None, names=list(f["name"]), image=ctx.args[0],
                                         metadata=metadata, volatile=bool(f["volatile"]), id_mappings=maps)
    except Exception as exc:
        from lamina.errors import DuplicateName, ImageUnknown

        if isinstance(exc, DuplicateName):
            from .common import duplicate_name_message

            err(duplicate_name_message(ctx.store, "container", list(f["name"]), exc) + "\n")
            return 1
        if isinstance(exc, ImageUnknown):
            from .flags import go_quote

            err(f'locating image with ID "{go_quote(ctx.args[0])}": image not known\n')
            return 1
        return fail(exc)
    if ctx.json:
        out(go_json(ctr))
    else:
        # Go prints "\t<name>" without a newline after each name, and no final newline.
        out(f"{ctr.id}\n" + "".join(f"\t{n}" for n in ctr.names))
    return 0


def containers(ctx: Any) -> int:
    try:
        found = ctx.store.containers()
    except Exception as exc:
        return fail(exc)
    if ctx.json:
        out(go_json(found))
        return 0
    text = []
    for ctr in found:
        text.append(f"{ctr.id}\n")
        text.extend(f"\tname: {n}\n" for n in ctr.names)
        text.extend(f"\tdata: {n}\n" for n in ctr.big_data_names)
    out("".join(text))
    return 0


def container_size(store: Any, ctr: Any) -> int:
    """Store.ContainerSize: the layer's diff size, big data, and the container's two directories
    (which it creates, as Go does)."""
    cdir = store.container_directory(ctr.id)
    rdir = store.container_run_directory(ctr.id)
    try:
        size = store.diff_size(None, ctr.layer)
    except Exception as exc:
        raise LookupError(f'determining size of layer with ID "{ctr.layer}": {go_error(exc)}') from None
    for name in ctr.big_data_names:
        try:
            size += store.big_data_size("container", ctr.id, name)
        except Exception as exc:
            raise LookupError(f'reading size of big data item "{name}" for container "{ctr.id}": '
                              f"{go_error(exc)}") from None
    return size + dir_size(cdir) + dir_size(rdir)


def container(ctx: Any) -> int:
    store = ctx.store
    try:
        images = store.images()
    except Exception as exc:
        return fail(exc)
    matched = known(store.container, ctx.args)
    if ctx.json:
        out(go_json(matched))
    else:
        for ctr in matched:
            text = [f"ID: {ctr.id}\n"]
            text.extend(f"Name: {n}\n" for n in ctr.names)
            text.append(f"Image: {ctr.image}\n")
            for img in images:
                if img.id == ctr.image:
                    text.extend(f"Image name: {n}\n" for n in img.names)
                    break
            try:
                text.append(f"Size: {container_size(store, ctr)}\n")
            except Exception as exc:
                text.append(f"Size unknown: {go_error(exc)}\n")
            text.append(f"Layer: {ctr.layer}\n")
            text.extend(f"Data: {n}\n" for n in ctr.big_data_names)
            out("".join(text))
    return 0 if len(matched) == len(ctx.args) else 1


def get_dir(ctx: Any) -> int:
    try:
        path = ctx.store.container_directory(ctx.args[0])
    except Exception as exc:
        return fail(exc, "mkdir")
    out(f"{path}\n")
    return 0


def get_run_dir(ctx: Any) -> int:
    try:
        path = ctx.store.container_run_directory(ctx.args[0])
    except Exception as exc:
        return fail(exc, "mkdir")
    out(f"{path}\n")
    return 0
