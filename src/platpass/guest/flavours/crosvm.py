"""crosvm: a device-tree overlay for ``--device-tree-overlay FILE[,filter]``.

One fragment targets ``/`` (crosvm's overlay code applies fragments by ``target-path``);
every guest node carries a label, which ``dtc -@`` turns into a ``__symbols__`` entry, and
``--vfio PATH,dt-symbol=LABEL`` ties the VFIO device to its node (with ``filter``, crosvm
keeps only the nodes of assigned devices and whatever they reference, such as our fixed
clocks, through ``__local_fixups__``). The overlay must not reference the base by label:
crosvm's base tree has no ``__symbols__``. So the nodes do not name an interrupt parent and
inherit the root's, which crosvm sets to its GIC.
"""

from __future__ import annotations

from collections.abc import Sequence

from platpass.guest.dtc import compile_dts
from platpass.guest.dts import header, render_nodes
from platpass.guest.flavours import FlavourOutput
from platpass.guest.transform import GuestDevice

#: ``interrupts_property`` cannot hold in an overlay whose nodes inherit ``interrupt-parent``
#: from the base root: dtc sees only the overlay. Every other check stays on; the tests apply
#: the overlay to a real base and compile the result with all checks.
DISABLED_CHECKS: tuple[str, ...] = ("interrupts_property",)


def render_overlay(devices: Sequence[GuestDevice]) -> str:
    """The overlay source for ``devices``."""
    nodes = []
    for device in devices:
        nodes.append(device.node)
        nodes.extend(clock.node() for clock in device.clocks)
    comments = ["platpass guest-dt --flavour crosvm", "",
                *(f"{d.label}: host {d.host.path}" for d in devices)]
    body = render_nodes(nodes, indent=1)
    return (header(comments, plugin=True)
            + "&{/} {\n\t#address-cells = <0x2>;\n\t#size-cells = <0x2>;\n\n"
            + body + "\n};\n")


def sysfs_name(device: GuestDevice) -> str:
    """Linux's platform-device name of the host node (``<address>.<node name>``)."""
    base = device.host.name.split("@", 1)[0]
    if device.host.regions:
        return f"{device.host.regions[0].address:x}.{base}"
    return base


def vmm_arguments(devices: Sequence[GuestDevice], overlay_path: str) -> tuple[str, ...]:
    """The crosvm arguments that go with the overlay."""
    lines = [f"--device-tree-overlay {overlay_path},filter"]
    lines.extend(f"--vfio /sys/bus/platform/devices/{sysfs_name(d)},dt-symbol={d.label}"
                 for d in devices)
    return tuple(lines)


def build(devices: Sequence[GuestDevice], overlay_path: str = "OVERLAY.dtbo") -> FlavourOutput:
    """Render and compile the overlay; raises GuestError if dtc has anything to say."""
    source = render_overlay(devices)
    blob = compile_dts(source, plugin_symbols=True, disabled_checks=DISABLED_CHECKS)
    return FlavourOutput(source, blob, vmm_arguments(devices, overlay_path))
