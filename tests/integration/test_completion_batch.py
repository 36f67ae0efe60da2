"""The NIC completes what one drain finished in one call per kind, across connections (spec
§4.0), on the real runtime: the chain goes up every layer in one message, and the invariant
checker (on in these engines) still finds every NBL completed once, in order, per connection."""

from __future__ import annotations

import asyncio
from typing import Any

from chimneyd.ndis.broker import Layer
from chimneyd.ndis.nbl import NetBufferList

CONNS = 16
ROUNDS = 5


class Recording:
    """The engine's observer (the invariant checker), with the NIC's and the IM's send
    completions noted on the way: per call, the connection of each NBL."""

    def __init__(self, checker: Any) -> None:
        self.checker = checker
        self.calls: dict[str, list[list[int]]] = {"nic0": [], "im0": []}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.checker, name)

    def on_io_complete(self, layer: Layer, call: str, nbls: list[NetBufferList]) -> None:
        if call == "NdisTcpOffloadSendComplete" and layer.name in self.calls:
            self.calls[layer.name].append([n.trace.conn_id for n in nbls])
        self.checker.on_io_complete(layer, call, nbls)


async def test_a_drains_send_completions_of_many_connections_go_up_as_one_chain(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine()
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(CONNS)]
    seen = Recording(engine.ndis.observer)
    engine.ndis.observer = seen
    for r in range(ROUNDS):
        data = [bytes([r, i]) * 2048 for i in range(CONNS)]
        sent = await asyncio.wait_for(
            asyncio.gather(*(engine.send(c, d) for c, d in zip(conns, data, strict=True))), 10
        )
        assert sent == [len(d) for d in data]
        got = await asyncio.wait_for(
            asyncio.gather(
                *(engine.recv(c, len(d), 5, True) for c, d in zip(conns, data, strict=True))
            ),
            10,
        )
        assert got == data  # every byte back, in order, on its own connection
    nic, im = seen.calls["nic0"], seen.calls["im0"]
    assert sum(len(call) for call in nic) == sum(len(call) for call in im) >= CONNS * ROUNDS
    # at least one completion carried several connections: the batching is on
    assert max(len(set(call)) for call in nic) > 1
    # the IM relays each chain as it came, one call for one call
    assert im == nic
    assert engine.checker.violations == []
