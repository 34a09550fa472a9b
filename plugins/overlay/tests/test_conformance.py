"""overlay: lamina's driver conformance suite, plus a 500-layer chain (1.62's limit)."""

from __future__ import annotations

from lamina.testing import DriverConformance


class TestOverlayConformance(DriverConformance):
    driver_name = "overlay"
    deep_chain_length = 500
