"""Fixtures for the overlay driver's tests: drivers that must leave no mount behind."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import pytest

from lamina.drivers import new_driver
from lamina.errors import DriverNotSupported
from lamina.graphdriver import DriverProxy, build_driver
from lamina.testing import mounts_under
from lamina.types import DriverConfig


def overlay_mounts_under(path: str) -> list[str]:
    """Overlay/fuse mount points at or below *path* (the home bind mount is not one)."""
    real = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            fstype = line.split(" - ", 1)[1].split()[0]
            if (point == real or point.startswith(real + "/")) and fstype in ("overlay", "fuse.fuse-overlayfs"):
                found.append(point)
    return found


@pytest.fixture
def make_driver(tmp_path: Any) -> Iterator[Callable[..., DriverProxy]]:
    """``make_driver(*options, graph="g", run="r")``: an overlay driver (through the entry point).

    Teardown checks that every layer mount was released before cleanup, runs cleanup, and
    checks that nothing at all stays mounted under the test's directory."""
    made: list[DriverProxy] = []

    def make(*options: str, graph: str = "g", run: str = "r") -> DriverProxy:
        config = DriverConfig("overlay", str(tmp_path / graph / "overlay"), str(tmp_path / run), tuple(options))
        try:
            proxy = build_driver(config, new_driver(config))
        except DriverNotSupported as exc:
            pytest.skip(f"overlay not usable here: {exc}")
        made.append(proxy)
        return proxy

    yield make
    leaked = overlay_mounts_under(str(tmp_path))
    for proxy in reversed(made):
        proxy.cleanup()
    assert not leaked, f"layer mounts left behind: {leaked}"
    assert not mounts_under(str(tmp_path)), f"mounts left behind after cleanup: {mounts_under(str(tmp_path))}"
