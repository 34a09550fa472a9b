"""import and export (lamina): images from and to OCI layouts and docker archives.

``import SOURCE [NAME]`` prints the stored image's ID; ``export IMAGE DEST`` prints the digest
of what it wrote (the manifest for ``oci:``, the config for ``docker-archive:``). Errors go
to stderr with status 1, like the other commands.
"""

from __future__ import annotations

from typing import Any

from .common import fail
from .output import out


def import_image(ctx: Any) -> int:
    """``lamina import SOURCE [NAME]``: SOURCE is ``oci:DIR[:TAG]`` or ``docker-archive:FILE[:REF]``."""
    from lamina.errors import LaminaError
    from lamina.transfer import import_image as do_import

    source = ctx.args[0]
    name = ctx.args[1] if len(ctx.args) > 1 else None
    try:
        image = do_import(ctx.store, source, name)
    except (LaminaError, OSError) as exc:
        return fail(exc)
    out(f"{image.id}\n")
    return 0


def export_image(ctx: Any) -> int:
    """``lamina export [--compression none|gzip|zstd] IMAGE DEST``: DEST is ``oci:DIR[:TAG]`` or
    ``docker-archive:FILE[:NAME:TAG]``."""
    from lamina.errors import ImageUnknown, LaminaError
    from lamina.transfer import export_image as do_export

    from .flags import go_quote

    compression = ctx.flags.get("compression") or "none"
    try:
        digest = do_export(ctx.store, ctx.args[0], ctx.args[1], compression=compression)
    except ImageUnknown as exc:
        return fail(LookupError(f'locating image with ID "{go_quote(ctx.args[0])}": {exc}'))
    except (LaminaError, OSError) as exc:
        return fail(exc)
    out(f"{digest}\n")
    return 0
