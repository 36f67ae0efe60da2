"""The offload target (a chimney NIC), its modules following the spec's chapters:
`offload` (initiate, §3.2), `terminate` (§3.6, §3.7), `state_ops` (query, update, invalidate,
§3.3-§3.5), `send` (§4.1, §5.3), `receive` (§4.2-§4.4, §4.6), `disconnect` (§4.5), `events`
(§5); `target` routes NDIS calls to them and `contexts` holds the per-object state."""

from .contexts import NeighborContext, PathContext, TcpContext
from .target import FindWire, OffloadTarget

__all__ = ["FindWire", "NeighborContext", "OffloadTarget", "PathContext", "TcpContext"]
