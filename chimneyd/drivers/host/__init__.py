"""The host TCP/IP stack, its modules following the spec's chapters: `offload` (initiate §3.2,
forward §4.6), `terminate` (upload §3.6), `state_ops` (query, update, invalidate §3.3-§3.5),
`send` (§4.1), `receive` (§4.2, §4.3, host-mode receive), `disconnect` (§4.5, close),
`events` (§5); `stack` routes requests and NDIS calls to them and `tcb` holds the records."""

from .stack import HostStack
from .tcb import AppError, Done, HostObject, Tcb, ndis_error

__all__ = ["AppError", "Done", "HostObject", "HostStack", "Tcb", "ndis_error"]
