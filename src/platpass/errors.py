"""The error tree of platpass: one root, one family per layer.

Errors carry their evidence (the node, the property, the errno) so that a user sees why,
and are converted only where two layers meet (``raise X(...) from err``)::

    PlatpassError
     +-- FirmwareError            device tree could not be loaded or a node is malformed
     |    +-- DeviceTreeLoadError the file or live tree could not be read/compiled
     |    +-- NodeError           one node is malformed (reported for that node only)
     +-- DriverError              driver registry or a driver's declaration is wrong
     +-- HostError                a host backend failed (sysfs, UIO, kernel VFIO, simulation)
     |    +-- BindError           binding/unbinding a host driver failed (rolled back)
     +-- VfioError                a VFIO operation was refused; carries an errno
     +-- VfioUserError            vfio-user protocol failure
     |    +-- LocalProtocolError  we misused the protocol
     |    +-- RemoteProtocolError the peer did; carries an errno to reply with
     |    +-- ConnectionLost      the socket failed or the peer hung up; carries an errno
     +-- GuestError               the guest device tree could not be produced
     +-- VmmError                 the KVM client failed
     +-- OpsError                 service operations (control socket, trace, replay)
          +-- ConfigError         a configuration file is invalid (nothing was applied)
"""

from __future__ import annotations

import errno as _errno


class PlatpassError(Exception):
    """Root of every error platpass raises on purpose."""


class FirmwareError(PlatpassError):
    """The firmware layer (device tree, verdicts) failed."""


class DeviceTreeLoadError(FirmwareError):
    """A device tree could not be loaded (missing file, dtc failure, bad blob)."""


class NodeError(FirmwareError):
    """One node is malformed; the rest of the tree is still usable."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class DriverError(PlatpassError):
    """A driver or the driver registry is misdeclared."""


class HostError(PlatpassError):
    """A host backend failed to reach the device."""


class BindError(HostError):
    """Binding a device to a host driver failed; the original binding was restored."""


class VfioError(PlatpassError):
    """A VFIO operation was refused; ``errno`` is what a VFIO/vfio-user peer sees."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(f"{_errno.errorcode.get(err, str(err))}: {message}")
        self.errno = err
        self.message = message


class VfioUserError(PlatpassError):
    """The vfio-user protocol failed."""


class LocalProtocolError(VfioUserError):
    """We tried to send something the protocol does not allow."""


class RemoteProtocolError(VfioUserError):
    """The peer sent something the protocol does not allow; ``errno`` is the reply."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(f"{_errno.errorcode.get(err, str(err))}: {message}")
        self.errno = err
        self.message = message


class ConnectionLost(VfioUserError):
    """The connection to the peer is gone (refused, reset, closed, timed out): no protocol
    error of either side, and nothing more can be sent on it. ``errno`` is the socket's
    (ECONNRESET when the peer closed its end)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(f"{_errno.errorcode.get(err, str(err))}: {message}")
        self.errno = err
        self.message = message


class GuestError(PlatpassError):
    """The guest's device tree could not be produced."""


class VmmError(PlatpassError):
    """The KVM client failed."""


class OpsError(PlatpassError):
    """Running platpass as a service failed (control socket, trace, replay, up/down)."""


class ConfigError(OpsError):
    """A configuration file is invalid; nothing it describes was started or changed."""
