"""Assembly: how every entry point turns a device tree into served devices.

    load_tree(source)  ->  choose_exports / find_export  ->  Export (assessment + driver)
        -> DevicePlan (backend, socket, options)  ->  open_device  ->  VfioDevice
        -> Serving (one reactor, one server: serve_forever / serve_separated)  ->  close()

``platpass serve``, ``up``/``down`` (:mod:`platpass.ops.service`), ``assign``, the KVM
client's simulated board (:mod:`platpass.vmm.simboard`), the fuzzer and trace replay all
build devices here, so a device is judged, opened, traced, put on a socket and shut down
the same way whichever command serves it. The safety decision is the assessment's
(:attr:`~platpass.firmware.verdict.Assessment.may_assign`,
:attr:`~platpass.firmware.verdict.Assessment.may_map`); this layer only asks it.

This package sits above firmware, drivers, host, vfio_device and vfio_user, and below
``cli`` and ``ops``: it imports neither. What it needs from ops (the trace recorder, the
control socket) it takes as small protocols (:class:`Recorder`, :class:`ControlEndpoint`).
"""

from __future__ import annotations

from platpass.assembly.backends import BackendOpener, backend_opener, sim_opener
from platpass.assembly.plan import (
    DevicePlan,
    Export,
    Listen,
    choose_exports,
    find_export,
    log_waivers,
    merge_groups,
)
from platpass.assembly.serving import ControlEndpoint, Recorder, Serving, open_device
from platpass.assembly.tree import NoLiveTreeError, TreeSource, load_tree

__all__ = [
    "BackendOpener",
    "ControlEndpoint",
    "DevicePlan",
    "Export",
    "Listen",
    "NoLiveTreeError",
    "Recorder",
    "Serving",
    "TreeSource",
    "backend_opener",
    "choose_exports",
    "find_export",
    "load_tree",
    "log_waivers",
    "merge_groups",
    "open_device",
    "sim_opener",
]
