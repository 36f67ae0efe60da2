"""The NIC's send and receive completions of one inbox drain, made as one call each (spec §4.0).

NDIS lets a miniport complete, in one `NdisTcpOffloadSendComplete` (or `...ReceiveComplete`),
NBLs that came in several request calls, and a completion routes up by binding, not by
connection (spec §1.5 item 8): one call may carry NBLs of many connections. So the NIC gathers
the completions it makes while it drains its inbox and makes them when the drain ends. A burst
of acknowledgements or of received data over many connections then goes up every layer as one
chain: one message per layer instead of one per connection.

Two rules keep this invisible to the layers above:
- order: before the NIC makes any other NDIS call, what it gathered is completed first, so
  nothing it says after a completion overtakes it (a disconnect completion after its sends,
  spec §9 item 2; an indication after the requests filled before it, spec §4.4);
- one call per completion of a connection: a second completion of a connection already
  gathered flushes the first. A call never carries two completions one connection made apart,
  so what a single call may hold of a connection (one partial NBL, its last: spec §9 item 3)
  holds as before.

This needs someone to end the drains: the asyncio runtime does (`LayerTask` calls
`OffloadTarget.complete_per_drain` and then `after_batch`). Without it (the sans-IO scheduler)
the NIC completes at once, as NDIS also allows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from chimneyd.ndis.broker import Layer, NdisStandIn
from chimneyd.ndis.nbl import NetBufferList, chain_of

if TYPE_CHECKING:
    from .target import OffloadTarget


class Broker(Protocol):
    """What the batch stands in for: the broker (`Ndis`), or whatever the NIC talked to before
    (a protocol, so a test's recording broker is one too, on either build)."""

    clock: Callable[[], int]

    def NdisTcpOffloadSendComplete(self, caller: Layer, nbl: NetBufferList) -> None: ...

    def NdisTcpOffloadReceiveComplete(self, caller: Layer, nbl: NetBufferList) -> None: ...


class CompletionBatch(NdisStandIn):
    """The broker as the NIC sees it while it batches: `send` and `receive` gather, any other
    call (a forwarder of `NdisStandIn`) flushes first. The clock is the broker's own: reading
    it is not a call that must wait for anything."""

    def __init__(self, broker: Broker, nic: OffloadTarget) -> None:
        super().__init__(broker)
        self._broker = broker
        self._nic = nic
        self._sends: list[NetBufferList] = []
        self._receives: list[NetBufferList] = []
        # the contexts with completions gathered: one set for the batch's life (`flush` clears it)
        self._conns: set[object] = set()

    # `send` and `receive` are read off the batch every time the NIC completes (two or three
    # times a verified echo round), as is the clock; no `__getattr__` anywhere in the class's
    # bases keeps those reads specialized (see `NdisStandIn`). `flush` clears the set in place.

    def send(self, ctx: object, nbls: list[NetBufferList]) -> None:
        """`NdisTcpOffloadSendComplete` of `nbls`, all of connection `ctx`, at the drain's end."""
        conns = self._conns
        if ctx in conns:
            self.flush()  # its earlier completion goes first, in its own call
        conns.add(ctx)
        self._sends.extend(nbls)

    def receive(self, ctx: object, nbls: list[NetBufferList]) -> None:
        """`NdisTcpOffloadReceiveComplete` of `nbls`, all of connection `ctx`, likewise."""
        conns = self._conns
        if ctx in conns:
            self.flush()
        conns.add(ctx)
        self._receives.extend(nbls)

    def flush(self) -> None:
        """Make the gathered completions. Each connection has completions of one kind only
        (a second one flushed the first), so the two calls' order is no connection's order."""
        if not self._conns:
            return
        sends, receives = self._sends, self._receives
        self._sends, self._receives = [], []
        self._conns.clear()
        if sends:
            self._broker.NdisTcpOffloadSendComplete(self._nic, chain_of(sends))
        if receives:
            self._broker.NdisTcpOffloadReceiveComplete(self._nic, chain_of(receives))

    def before_call(self) -> None:
        # every broker call of the NIC but the two above: what was gathered goes first
        self.flush()
