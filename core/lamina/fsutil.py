"""Small filesystem helpers shared by the core and the drivers."""

from __future__ import annotations

import os
import shutil

__all__ = ["remove_tree"]


def remove_tree(path: str) -> None:
    """Remove a file, symlink or directory tree at *path*; a missing path is fine.

    Read-only directories (layer roots are 0555) are made writable and the removal retried
    when the first attempt is refused, so this also works without root's override.
    """
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)
        return
    try:
        shutil.rmtree(path)
    except PermissionError:
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                full = os.path.join(dirpath, name)
                if not os.path.islink(full):
                    os.chmod(full, 0o700)
        os.chmod(path, 0o700)
        shutil.rmtree(path)
