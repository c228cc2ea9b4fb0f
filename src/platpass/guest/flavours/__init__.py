"""Output flavours: what each VMM takes to show assigned devices to its guest.

- :mod:`.crosvm`: a DT overlay for ``--device-tree-overlay`` with ``__symbols__`` labels that
  ``--vfio ...,dt-symbol=LABEL`` names;
- :mod:`.qemu`: the nodes merged into a full guest DTB (one dumped with
  ``-machine dumpdtb=``) for ``-dtb``;
- :mod:`.xen`: a partial device tree with ``/passthrough`` plus the ``xl.cfg`` lines.

Each module renders DTS text (pure) and compiles it through :mod:`platpass.guest.dtc`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Flavour(StrEnum):
    """The VMM an output is made for."""

    CROSVM = "crosvm"
    QEMU = "qemu"
    XEN = "xen"


@dataclass(frozen=True, slots=True)
class FlavourOutput:
    """A flavour's result: the DTS source, its compiled blob, and lines for the VMM's
    command line or configuration file (to print beside the file)."""

    source: str
    blob: bytes
    vmm_lines: tuple[str, ...] = ()
