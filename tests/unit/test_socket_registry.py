"""The registry of connection sockets: a 4-tuple that comes again for a new connection while
the old connection (its socket closed) is still open in the engine."""

from __future__ import annotations

import asyncio

from chimneyd.runtime.sockets import Sockets
from chimneyd.runtime.wire import WireSocket


def _wire(sockets: Sockets, port: int) -> WireSocket:
    """A connection's socket object as the registry keeps it (never connected here)."""
    wire = WireSocket(lambda *call: None, sockets.watcher)
    wire.local, wire.remote = ("127.0.0.1", port), ("127.0.0.1", 7000)
    return wire


def test_each_connection_keeps_its_wire_when_a_new_one_takes_its_tuple() -> None:
    loop = asyncio.new_event_loop()
    try:
        sockets = Sockets(loop, lambda *a: None, lambda *a: 0, 16)
        old, new = _wire(sockets, 40000), _wire(sockets, 40000)
        sockets.add(1, old)
        sockets.add(2, new)  # the same 4-tuple, the old socket long closed
        key = (bytes([127, 0, 0, 1]), 40000, bytes([127, 0, 0, 1]), 7000)
        assert sockets.find_wire(*key) is new  # the ordinary path finds the live one
        assert sockets.wire_of(1) is old and sockets.wire_of(2) is new
        assert sockets.forget(1) is old  # closing the old one leaves the new one alone
        assert sockets.wire_of(2) is new and sockets.find_wire(*key) is new
        assert sockets.forget(2) is new
        assert sockets.wires == {} and sockets.by_conn == {}
    finally:
        loop.close()
