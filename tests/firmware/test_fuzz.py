"""Malformed blobs: a clear DeviceTreeLoadError, or a tree whose scan never raises."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from platpass.drivers.registry import DriverRegistry
from platpass.errors import DeviceTreeLoadError
from platpass.firmware.devicetree import load_blob
from platpass.firmware.verdict import assess_tree
from real_dtbs import DTB_DIR

BLOB = (DTB_DIR / "rockchip__rk3568-evb1-v10.dtb").read_bytes()


def scan_or_refuse(blob: bytes) -> None:
    try:
        tree = load_blob(blob)
    except DeviceTreeLoadError:
        return
    for assessment in assess_tree(tree, DriverRegistry(), all=True):
        assert assessment.evidence


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(BLOB) - 1), st.integers(0, 255)),
                min_size=1, max_size=8))
def test_byte_flips_never_crash(flips: list[tuple[int, int]]) -> None:
    blob = bytearray(BLOB)
    for offset, value in flips:
        blob[offset] = value
    scan_or_refuse(bytes(blob))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, len(BLOB)))
def test_truncation_is_refused_or_harmless(length: int) -> None:
    scan_or_refuse(BLOB[:length])


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    scan_or_refuse(data)


#: Properties the resolver interprets: the ones a broken firmware can get wrong.
INTERPRETED = ("#address-cells", "#size-cells", "ranges", "reg", "interrupts",
               "interrupt-parent", "#interrupt-cells", "interrupt-map", "interrupt-map-mask",
               "interrupts-extended", "clocks", "#clock-cells", "clock-frequency", "phandle",
               "status", "compatible", "reg-names", "interrupt-names", "clock-names",
               "iommus", "dmas", "device_type")
SAMPLE_PATHS = ("/", "/serial@fe660000", "/interrupt-controller@fd400000", "/i2c@fe5a0000",
                "/clock-controller@fdd20000", "/pcie@fe260000", "/usb@fcc00000",
                "/pinctrl", "/pinctrl/gpio@fe740000")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SAMPLE_PATHS), st.sampled_from(INTERPRETED),
                          st.binary(max_size=40)), min_size=1, max_size=4))
def test_garbage_in_interpreted_properties(edits: list[tuple[str, str, bytes]]) -> None:
    import libfdt

    fdt = libfdt.Fdt(bytearray(BLOB))
    fdt.resize(len(BLOB) + 4096)
    for path, prop, value in edits:
        offset = fdt.path_offset(path, quiet=(libfdt.NOTFOUND,))
        if offset >= 0:
            fdt.setprop(offset, prop, value)
    scan_or_refuse(bytes(fdt.as_bytearray()))
