"""What the host raises when a layer below broke the contract in a completion (spec §6.3).

Not compiled (deploy/compiled-modules.txt): a class a compiled module defines cannot derive
from `ChimneyProtocolError`, which runs as Python.
"""

from __future__ import annotations

from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.handles import NdisOffloadHandle


class LetGoHandles(ChimneyProtocolError):
    """A completion named handles the host has let go (their terminate completed: nothing may
    come for them any more, spec §9 item 8). Raised only once the host has settled every
    other block of the completion: every request it carried is answered, so the engine has
    no request to fail for it (`Engine._layer_failed`) — a request still pending on one of
    the connections the completion names waits for the host, which carries it on.

    `handles`: the let-go handles. `conns`: the connections whose requests the host could
    not answer (none here; the engine fails those, as for any other error)."""

    def __init__(self, call: str, handles: list[NdisOffloadHandle]) -> None:
        super().__init__(f"{call} completed with blocks of handles the host has let go: {handles}")
        self.handles = handles
        self.conns: frozenset[int] = frozenset()
