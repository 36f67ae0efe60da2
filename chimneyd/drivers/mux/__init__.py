"""A teaming MUX intermediate driver over several NICs: `mux` routes, `trees` splits state
operations by NIC, `placement` chooses a NIC per connection, `failover` advertises capabilities
and moves connections off a NIC that fails or is taken out; `objects` holds its records."""

from .mux import MuxIm
from .objects import Instance, Lower, MuxConnection, VirtualObject
from .placement import POLICIES

__all__ = ["POLICIES", "Instance", "Lower", "MuxConnection", "MuxIm", "VirtualObject"]
