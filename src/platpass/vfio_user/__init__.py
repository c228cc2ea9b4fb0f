"""vfio-user: the VFIO device exported over a UNIX socket, and a client for it.

``protocol`` is the sans-I/O codec (bytes and fd lists in, typed messages out);
``session`` maps decoded requests onto a :class:`~platpass.vfio_device.device.VfioDevice`;
``server`` is the socket loop on the shared reactor; ``client`` is a blocking client
library built on the same codec.
"""
