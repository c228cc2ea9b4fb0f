"""Running platpass as a host service: configuration files (``platpass up/down``), socket
activation, structured logs, the status control socket and MMIO/IRQ traces with replay.

Nothing here changes how a device behaves; these modules only describe, start, observe and
record the layers below them.
"""
