"""The ``lamina`` command: a drop-in replacement for containers-storage 1.43's CLI.

This package must stay cheap to import: ``lamina --version`` and ``lamina drivers`` have a
start-up budget. Nothing heavy (the store, pluggy, stevedore, json) is imported at module
level anywhere in the CLI; the dispatcher imports only the chosen command's module.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with *argv* (default ``sys.argv[1:]``); returns the exit status."""
    from .app import main as _main

    return _main(argv)
