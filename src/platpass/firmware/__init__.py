"""Firmware layer: read the device tree, resolve each device, and judge whether it can DMA.

Everything here is pure logic over a loaded blob except the loaders (``load_*``), so the
resolution and verdict rules are testable on inline DTS strings.
"""
