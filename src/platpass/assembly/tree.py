"""Where a device tree comes from: the one ``load_tree`` every entry point uses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from platpass.errors import DeviceTreeLoadError
from platpass.firmware import devicetree
from platpass.firmware.devicetree import LIVE_FDT, DeviceTree

TreeKind = Literal["sim", "dtb", "dts", "live"]


class NoLiveTreeError(DeviceTreeLoadError):
    """The live tree was asked for on a machine that has none (no ``/sys/firmware/fdt``)."""


@dataclass(frozen=True, slots=True)
class TreeSource:
    """A device tree to load: the simulated board, a ``.dtb``/``.dts`` file, or the live
    host's tree."""

    kind: TreeKind
    path: Path | None = None

    def __post_init__(self) -> None:
        if (self.kind in ("dtb", "dts")) != (self.path is not None):
            wrong = "needs a path" if self.path is None else "takes no path"
            raise ValueError(f"a {self.kind} tree source {wrong}")

    def __str__(self) -> str:
        if self.kind == "sim":
            return "the simulated board"
        return str(self.path) if self.path is not None else str(LIVE_FDT)


#: The built-in simulated board and the running kernel's tree.
SIM = TreeSource("sim")
LIVE = TreeSource("live")


def load_tree(source: TreeSource) -> DeviceTree:
    """The tree ``source`` names. Raises DeviceTreeLoadError (unreadable, not a tree, dtc
    refused it); NoLiveTreeError when the live tree is asked for where there is none."""
    if source.kind == "sim":
        from platpass.host.simulated.board import load_board

        return load_board()
    if source.kind == "dtb":
        assert source.path is not None
        return devicetree.load_dtb(source.path)
    if source.kind == "dts":
        assert source.path is not None
        return devicetree.load_dts(source.path)
    try:
        return devicetree.load_live(LIVE_FDT)
    except DeviceTreeLoadError as err:
        if not os.path.exists(LIVE_FDT):
            raise NoLiveTreeError(f"{LIVE_FDT}: this machine has no live device tree") \
                from err
        raise


__all__ = ["LIVE", "SIM", "NoLiveTreeError", "TreeKind", "TreeSource", "load_tree"]
