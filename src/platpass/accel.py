"""Optional C accelerators: whether one is used, and if not, why.

platpass has two small C modules, each a faster copy of one Python hot loop that stays
beside it: ``platpass.firmware._native`` (a device tree's structure block walked into
nodes) and ``platpass.vfio_user._native`` (the trapped-register round trip). Neither is
required: ``scripts/install`` builds both with the package, ``scripts/test`` builds them
in place for the checkout it tests (``scripts/build-native``), and without one, or with
``PLATPASS_NATIVE=0`` in the environment, the Python loop runs. A module built from
another version of its source (its ``ABI`` constant differs from the one its user expects)
is not used.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["load"]


def load(name: str, abi: int, constants: dict[str, int] | None = None
         ) -> tuple[ModuleType | None, str | None]:
    """``(module, None)`` when the C module ``name`` can be used, else ``(None, why)``.

    ``abi`` is the ``ABI`` its Python user expects; ``constants`` other module constants
    that must have exactly these values (a protocol's result codes)."""
    if os.environ.get("PLATPASS_NATIVE", "1") == "0":
        return None, "disabled by PLATPASS_NATIVE=0"
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        return None, f"not built ({err}): scripts/install or scripts/build-native builds it"
    found = getattr(module, "ABI", None)
    if found != abi or any(getattr(module, key, None) != value
                           for key, value in (constants or {}).items()):
        return None, (f"built from another version (ABI {found}, expected {abi}): "
                      "rebuild it with scripts/build-native")
    return module, None
