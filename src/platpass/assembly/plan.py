"""What will be exported: the typed plan every entry point builds before it opens anything.

An :class:`Export` is a device the verdict lets go to a guest (or one an operator forced),
with the driver instance that serves it; a :class:`DevicePlan` adds how it is reached (the
backend), where its clients connect (:class:`Listen`) and the socket's options. Whether a
device may be assigned, and whether any page of it may be mapped, is the assessment's
decision (:attr:`Assessment.may_assign`, :attr:`Assessment.may_map`): nothing here looks
at verdict names or evidence rules.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from platpass.drivers.common import PlatformDriver
from platpass.drivers.registry import DriverRegistry, default_registry
from platpass.firmware.devicetree import DeviceTree
from platpass.firmware.model import DeviceNode
from platpass.firmware.rawtree import RawNode
from platpass.firmware.verdict import Assessment, Verdict, assess_tree
from platpass.vfio_user.server import SocketOptions

_override_log = logging.getLogger("platpass.override")


@dataclass(frozen=True, slots=True)
class Export:
    """One device to serve: its assessment and the driver instance that serves it."""

    assessment: Assessment
    driver: PlatformDriver
    #: The device's descendants as firmware lists them (the EEPROM on an SPI controller,
    #: the RTC on an I2C bus): they go with it. A kernel backend has the real ones on the
    #: real bus; the simulated board builds models of them from this.
    subtree: tuple[RawNode, ...] = ()

    @classmethod
    def of(cls, assessment: Assessment, subtree: tuple[RawNode, ...] = ()) -> Export:
        """The export of an assignable, claimed device (ValueError otherwise: ask
        :func:`choose_exports`, which says why a device is not exported)."""
        if not assessment.may_assign or assessment.driver is None:
            raise ValueError(f"{assessment.node.path}: {assessment.explanation}")
        return cls(assessment, assessment.driver(assessment.node), subtree)

    @classmethod
    def forced(cls, assessment: Assessment) -> Export:
        """The export of any device, refused or not (``assign --force-unsafe``): with the
        generic platform driver when no driver claims it. A refused device never has a
        page mapped (:attr:`Assessment.may_map` is False for it)."""
        driver_cls = assessment.driver or PlatformDriver
        return cls(assessment, driver_cls(assessment.node))

    @property
    def node(self) -> DeviceNode:
        return self.assessment.node

    @property
    def verdict(self) -> Verdict:
        return self.assessment.verdict

    @property
    def force_trap_all(self) -> bool:
        """No page of the device may be mapped: every access is trapped."""
        return not self.assessment.may_map


def merge_groups(groups: Iterable[Iterable[str]]) -> list[list[str]]:
    """Co-assignment ``groups`` with every two that share a member merged (connected
    components), each sorted, those of fewer than two members dropped: a node goes to one
    guest, so every group it is in is one group. Pure."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for group in groups:
        members = list(group)
        for member in members:
            root(member)
        for a, b in itertools.pairwise(members):
            parent[root(a)] = root(b)
    components: dict[str, list[str]] = {}
    for member in parent:
        components.setdefault(root(member), []).append(member)
    return sorted(sorted(c) for c in components.values() if len(c) > 1)


def log_waivers(source: str, assessments: Iterable[Assessment], how: str = "--override"
                ) -> None:
    """A warning for every waiver the user's overrides made (``how``: where the user
    gave them), on the ``platpass.override`` logger whatever the entry point."""
    for assessment in assessments:
        for evidence in assessment.waived:
            _override_log.warning("%s: %s: %s (%s)", source, assessment.node.path,
                                  evidence.value, how)


def assess(tree: DeviceTree, registry: DriverRegistry | None = None, *,
           groups: Iterable[Iterable[str]] = (),
           overrides: Mapping[str, Iterable[str]] | None = None,
           live: Mapping[str, Iterable[tuple[str, str]]] | None = None
           ) -> dict[str, Assessment]:
    """Every device node's assessment, by path; ``groups`` (nodes that go to one guest
    together), ``overrides`` (host-use rules waived per node) and ``live`` (the running
    kernel's view of who uses a device) as :func:`~platpass.firmware.verdict.assess_tree`
    takes them."""
    registry = registry if registry is not None else default_registry()
    return {a.node.path: a for a in assess_tree(tree, registry, groups=groups,
                                                overrides=overrides, live=live)}


def choose_exports(tree: DeviceTree, paths: Sequence[str], *, everything_assignable: bool,
                   registry: DriverRegistry | None = None,
                   groups: Iterable[Iterable[str]] = (),
                   overrides: Mapping[str, Iterable[str]] | None = None
                   ) -> tuple[list[Export], list[str]]:
    """Assess the tree and pick what to serve; returns (exports, refusal messages).

    A named node that is refused, unknown or unclaimed is a refusal (with its evidence);
    with no node named and ``everything_assignable``, every assignable device is exported
    and the refused ones are skipped silently.
    """
    assessments = assess(tree, registry, groups=groups, overrides=overrides)
    refusals: list[str] = []
    chosen: list[Assessment] = []
    if paths:
        for path in paths:
            assessment = assessments.get(path)
            if assessment is None:
                refusals.append(f"{path}: no such device node in the tree")
                continue
            if assessment in chosen:  # one device, one socket, one model
                refusals.append(f"{path}: named more than once")
                continue
            chosen.append(assessment)
    elif everything_assignable:
        chosen = list(assessments.values())
    exports: list[Export] = []
    for assessment in chosen:
        if not assessment.may_assign:
            if paths:
                refusals.append(f"{assessment.node.path}: {assessment.explanation}")
            continue
        if assessment.driver is None:
            refusals.append(f"{assessment.node.path}: no driver")
            continue
        exports.append(Export.of(assessment, tuple(tree.raw.descendants(assessment.node.path))))
    return exports, refusals


def find_export(tree: DeviceTree, path: str, registry: DriverRegistry | None = None
                ) -> Export | str:
    """The export of the node at ``path``, or the refusal message saying why there is
    none."""
    exports, refusals = choose_exports(tree, [path], everything_assignable=False,
                                       registry=registry)
    return exports[0] if exports else refusals[0]


@dataclass(frozen=True, slots=True)
class Listen:
    """Where a device's clients connect: a socket path to bind, or a listening socket
    already open on ``fd`` (inherited from ``--fd`` or the service manager)."""

    path: Path | None = None
    fd: int | None = None
    #: How the fd came (for messages): "fd 3", "fd 3 (/run/x.sock, from the service manager)".
    label: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.fd is None):
            raise ValueError("listen on exactly one of a path or an fd")

    def __str__(self) -> str:
        if self.label is not None:
            return self.label
        return str(self.path) if self.path is not None else f"fd {self.fd}"


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """Everything needed to serve one device, decided before anything is opened."""

    export: Export
    backend: str
    listen: Listen
    options: SocketOptions = field(default_factory=SocketOptions)
    #: Refuse DMA_MAP (ENOTSUP) instead of recording it in the emulated IOMMU.
    dma_deny: bool = False
    #: Present the device as a PCI function: ``auto`` or ``VVVV:DDDD`` (None: platform).
    pci: str | None = None

    @property
    def node(self) -> DeviceNode:
        return self.export.node


__all__ = ["DevicePlan", "Export", "Listen", "assess", "choose_exports", "find_export"]
