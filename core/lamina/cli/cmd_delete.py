"""delete, delete-layer, delete-image, delete-container.

Go keeps the results in a map: a repeated argument appears once (with its last result), JSON
keys are sorted, and the text lines come in random order (lamina: argument order).
"""

from __future__ import annotations

from typing import Any, Callable

from .output import err, go_error, go_json, go_map


def _delete_each(ctx: Any, action: Callable[[str], Any], unknown: tuple[type, str] | None = None) -> int:
    results: dict[str, str] = {}
    for what in ctx.args:
        try:
            action(what)
            results[what] = ""
        except Exception as exc:
            if unknown is not None and isinstance(exc, unknown[0]):
                results[what] = unknown[1]  # Go's ErrNotALayer / ErrNotAContainer
            else:
                results[what] = go_error(exc)
    if ctx.json:
        from .output import out

        out(go_json(go_map(results)))
    else:
        err("".join(f"{what}: {text}\n" for what, text in results.items() if text))
    return 1 if any(results.values()) else 0


def delete(ctx: Any) -> int:
    return _delete_each(ctx, ctx.store.delete)


def delete_layer(ctx: Any) -> int:
    from lamina.errors import LayerUnknown

    return _delete_each(ctx, ctx.store.delete_layer, (LayerUnknown, "identifier is not a layer"))


def delete_container(ctx: Any) -> int:
    from lamina.errors import ContainerUnknown

    return _delete_each(ctx, ctx.store.delete_container, (ContainerUnknown, "identifier is not a container"))


def _image_in_use(ctx: Any, what: str, exc: BaseException) -> str:
    """Go names the *last* container (in store order) that uses the image."""
    try:
        image_id = ctx.store.image(what).id
        users = [c.id for c in ctx.store.containers() if c.image == image_id]
    except Exception:
        users = []
    if users:
        return f"image used by {users[-1]}: image is in use by a container"
    return go_error(exc)


def delete_image(ctx: Any) -> int:
    commit = not ctx.flags.get("test")
    results: dict[str, dict[str, Any]] = {}
    for what in ctx.args:
        record: dict[str, Any] = {}
        try:
            layers = ctx.store.delete_image(what, commit)
            if layers:
                record["deleted-layers"] = list(layers)
        except Exception as exc:
            from lamina.errors import ImageUnknown, ImageUsedByContainer

            if isinstance(exc, ImageUnknown):
                record["error"] = "identifier is not an image"  # Go's ErrNotAnImage
            elif isinstance(exc, ImageUsedByContainer):
                record["error"] = _image_in_use(ctx, what, exc)
            else:
                record["error"] = go_error(exc)
        results[what] = record
    if ctx.json:
        from .output import out

        out(go_json(go_map(results)))
    else:
        lines = []
        for what, record in results.items():
            if record.get("error"):
                lines.append(f"{what}: {record['error']}\n")
            else:
                lines.extend(f"{what}: {layer}\n" for layer in record.get("deleted-layers", []))
        err("".join(lines))
    return 1 if any(r.get("error") for r in results.values()) else 0
