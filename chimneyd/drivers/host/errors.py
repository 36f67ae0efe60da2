"""What the host raises when a layer below broke the contract in a completion (spec §6.3).

Not compiled (deploy/compiled-modules.txt), as `chimneyd/ndis/errors.py`, whose
`ChimneyProtocolError` these derive from, is not: nothing here is on the data path, and the
compiled host modules raise and catch these as ordinary Python classes.
"""

from __future__ import annotations

from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.handles import NdisOffloadHandle


class SettledThenRaised(ChimneyProtocolError):
    """A completion broke the contract, and the host settled every block of it it could before
    raising: every request it carried is answered but those of `conns`, the connections it
    could not settle, which the engine fails (`Engine._layer_failed`, spec §6.3). A request
    still pending on another connection the completion names waits for the host, which
    carries it on.

    `lost_below`: those of `conns` the host took back as lost below (spec §6.3 [EMU]): their
    reads are the host's to answer still, with the error a later read gets ("lost below",
    docs/rpc.md), one inbox round later behind bytes that may yet come; only their other
    requests (a send whose NBLs a layer below kept) are the engine's to fail."""

    def __init__(
        self,
        message: str,
        conns: frozenset[int] = frozenset(),
        lost_below: frozenset[int] = frozenset(),
    ) -> None:
        super().__init__(message)
        self.conns = conns
        self.lost_below = lost_below


class LetGoHandles(SettledThenRaised):
    """A completion named handles the host has let go (their terminate completed: nothing may
    come for them any more, spec §9 item 8). Raised only once the host has settled every
    other block of the completion: every request it carried is answered, so the engine has
    no request to fail for it — `conns` is empty.

    `handles`: the let-go handles."""

    def __init__(self, call: str, handles: list[NdisOffloadHandle]) -> None:
        super().__init__(f"{call} completed with blocks of handles the host has let go: {handles}")
        self.handles = handles


def raise_if_broken(
    call: str,
    unsettled: str,
    conns: frozenset[int],
    let_go: list[NdisOffloadHandle],
    lost_below: frozenset[int] = frozenset(),
) -> None:
    """The end of a completion the host settled all it could of (spec §6.3): raise what a
    layer below got wrong, if anything. `unsettled` says what the host could not settle ("" if
    nothing), `conns` the connections whose requests that leaves unanswered (the engine's to
    fail), `let_go` the handles named that the host has let go (spec §9 item 8), `lost_below`
    those of `conns` it took back as lost below, whose reads it answers itself."""
    if unsettled:
        also = f"; and blocks of handles the host has let go: {let_go}" if let_go else ""
        raise SettledThenRaised(f"{call} completed {unsettled}{also}", conns, lost_below)
    if let_go:
        raise LetGoHandles(call, let_go)
