"""The btrfs graph driver (not implemented yet: refuses to load with DriverNotSupported)."""

from __future__ import annotations

from lamina.errors import DriverNotSupported
from lamina.types import DriverConfig

__all__ = ["Driver"]

_WHY = "not implemented yet"


class Driver:
    """Placeholder until the btrfs driver lands; it reports itself unsupported everywhere."""

    name = "btrfs"

    @classmethod
    def check_host(cls, graph_root: str) -> None:
        """Raise DriverNotSupported: this driver cannot be used yet."""
        raise DriverNotSupported(cls.name, _WHY)

    def __init__(self, config: DriverConfig) -> None:
        raise DriverNotSupported(self.name, _WHY)
