"""create-image, images, images-by-digest, image, get-image-dir, get-image-run-dir."""

from __future__ import annotations

import os
import re
from typing import Any

from .common import fail, known
from .output import err, go_error, go_json, out

_ENCODED = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_HEX_RE = re.compile(r"^[a-f0-9]+$")


def validate_digest(value: str) -> str | None:
    """go-digest's Digest.Validate(): None if valid, else Go's error text."""
    i = value.find(":")
    if i <= 0 or i + 1 == len(value):
        return "invalid checksum digest format"
    algorithm, encoded = value[:i], value[i + 1:]
    if algorithm not in _ENCODED:
        if not _DIGEST_RE.match(value):
            return "invalid checksum digest format"
        return "unsupported digest algorithm"
    if len(encoded) != _ENCODED[algorithm]:
        return "invalid checksum digest length"
    if not _HEX_RE.match(encoded):
        return "invalid checksum digest format"
    return None


def create_image(ctx: Any) -> int:
    f = ctx.flags
    metadata = f["metadata"]
    if f["metadata_file"]:
        try:
            with open(f["metadata_file"], "rb") as fh:
                metadata = fh.read().decode("utf-8", "surrogateescape")
        except OSError as exc:
            err(go_error(exc, "open") + "\n")
            return 1
    layer = ctx.args[0] if ctx.args else ""
    try:
        image = ctx.store.create_image(id=f["id"] or None, top_layer=layer or None, names=list(f["name"]),
                                       metadata=metadata, digest=f["digest"])
    except Exception as exc:
        from lamina.errors import DuplicateName

        if isinstance(exc, DuplicateName):
            from .common import duplicate_name_message

            err(duplicate_name_message(ctx.store, "image", list(f["name"]), exc) + "\n")
            return 1
        return fail(exc)
    if ctx.json:
        out(go_json(image))
    else:
        out(f"{image.id}\n" + "".join(f"\t{n}\n" for n in image.names))
    return 0


def _list(ctx: Any, images: list[Any]) -> None:
    if ctx.json:
        out(go_json(images))
        return
    quiet = bool(ctx.flags.get("quiet"))
    text = []
    for image in images:
        text.append(f"{image.id}\n")
        if quiet:
            continue
        text.extend(f"\tname: {n}\n" for n in image.names)
        text.extend(f"\tdigest: {d}\n" for d in image.digests)
        text.extend(f"\tdata: {n}\n" for n in image.big_data_names)
    out("".join(text))


def images(ctx: Any) -> int:
    try:
        found = ctx.store.images()
    except Exception as exc:
        return fail(exc)
    if ctx.json and not found:
        out("null\n")  # Go's Store.Images() returns a nil slice for an empty store
        return 0
    _list(ctx, found)
    return 0


def images_by_digest(ctx: Any) -> int:
    matched: list[Any] = []
    for arg in ctx.args:
        problem = validate_digest(arg)
        if problem is not None:
            err(f"{arg}: {problem}\n")
            return 1
        try:
            matched.extend(ctx.store.images_by_digest(arg))
        except Exception as exc:
            return fail(exc)
    _list(ctx, matched)
    return 0


def image_size(store: Any, image: Any) -> int:
    """Store.ImageSize: every layer of the image (recorded diff size, or computed) plus big data."""
    queue = [lid for lid in [image.top_layer, *image.mapped_top_layers] if lid]
    visited: set[str] = set()
    size = 0
    while queue:
        layer_id = queue.pop(0)
        if layer_id in visited:
            continue
        visited.add(layer_id)
        try:
            lyr = store.layer(layer_id)
        except Exception as exc:
            raise LookupError(f'locating layer with ID "{layer_id}": {go_error(exc)}') from None
        n = lyr.uncompressed_size
        if not lyr.uncompressed_digest:
            try:
                n = store.diff_size(None, lyr.id)
            except Exception as exc:
                raise LookupError(f'size/digest of layer with ID "{layer_id}" could not be calculated: '
                                  f"{go_error(exc)}") from None
        size += n
        if lyr.parent and lyr.parent not in visited:
            queue.append(lyr.parent)
    for name in image.big_data_names:
        try:
            size += store.big_data_size("image", image.id, name)
        except Exception as exc:
            raise LookupError(f'reading size of big data item "{name}" for image "{image.id}": '
                              f"{go_error(exc)}") from None
    return size


def image(ctx: Any) -> int:
    store = ctx.store
    matched = known(store.image, ctx.args)
    if ctx.json:
        out(go_json(matched))
    else:
        for img in matched:
            text = [f"ID: {img.id}\n"]
            text.extend(f"Name: {n}\n" for n in img.names)
            text.append(f"Top Layer: {img.top_layer}\n")
            text.extend(f"Top Layer: {lid}\n" for lid in img.mapped_top_layers)
            text.extend(f"Digest: {d}\n" for d in img.digests)
            text.extend(f"Data: {n}\n" for n in img.big_data_names)
            try:
                text.append(f"Size: {image_size(store, img)}\n")
            except LookupError as exc:
                text.append(f"Size unknown: {exc}\n")
            if img.read_only:
                text.append("Read Only: true\n")
            out("".join(text))
    return 0 if len(matched) == len(ctx.args) else 1


def _image_dir(ctx: Any, root: str) -> int:
    from .common import lookup_image

    store = ctx.store
    try:
        img = lookup_image(store, ctx.args[0])
    except Exception as exc:
        return fail(exc)
    path = os.path.join(root, f"{store.driver_name}-images", img.id, "userdata")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        return fail(exc, "mkdir")
    out(f"{path}\n")
    return 0


def get_dir(ctx: Any) -> int:
    return _image_dir(ctx, ctx.store.graph_root)


def get_run_dir(ctx: Any) -> int:
    return _image_dir(ctx, ctx.store.run_root)
