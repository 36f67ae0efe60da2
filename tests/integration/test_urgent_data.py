"""Urgent data reaching an offloaded connection (spec §5.2): the target asks for the mandatory
upload and holds the urgent data and what follows it; after the upload the host hands every
byte to the application once, in order, over real loopback sockets (the make_engine fixture
checks the spec §9 invariants and that every table drains).

chimneyd's own host never marks a segment urgent (spec §4.1: nobody asks for urgent data), so
an IM between it and the NIC does: it sets URG on the first segment with data the host
forwards down (spec §4.6), as if that segment had come in with urgent data."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from chimneyd.drivers.passthrough import PassthroughIm
from chimneyd.drivers.segment import HEADER_LEN, TH_URG
from chimneyd.ndis.nbl import Mdl, NetBufferList, iter_chain
from chimneyd.runtime import topology as topology_module
from tests.integration.support import eventually, topology
from tests.integration.test_waiting_bytes import dial, read_all


class UrgentIm(PassthroughIm):
    """A pass-through IM that marks the first forwarded segment carrying data URG. It
    rewrites the NBL's buffer in place: the same NBL goes on down (spec §4.8)."""

    marked = 0

    def MiniportTcpOffloadForward(self, entry: Any, head: NetBufferList) -> None:
        for nbl in iter_chain(head):
            if not UrgentIm.marked and nbl.data_length > HEADER_LEN:
                raw = bytearray(b"".join(nbl.views()))
                raw[13] |= TH_URG  # the flags byte of the TCP header
                nb = nbl.first_net_buffer
                assert nb is not None
                nb.mdl_chain = nb.current_mdl = Mdl(memoryview(raw))
                nb.current_mdl_offset = nb.data_offset = 0
                UrgentIm.marked += 1
        super().MiniportTcpOffloadForward(entry, head)


async def test_forwarded_urgent_data_reaches_the_application_once_after_the_upload(
    make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The initiate is held while the peer sends, so the host forwards what it read meanwhile;
    the first of those segments is urgent. The target raises TcpIndicateRetrieve
    (ReceivedUrgentData), delivers nothing from the urgent byte on, and at the terminate hands
    the held segments up the ordinary path: the application reads every byte once, in order,
    the later ones too, and the connection is the host's."""
    monkeypatch.setattr(topology_module, "PassthroughIm", UrgentIm)
    monkeypatch.setattr(UrgentIm, "marked", 0)
    engine = await make_engine(topology(1))
    events: list[tuple[str, dict[str, Any]]] = []
    lid = await engine.listen("127.0.0.1", 0, False)
    peer = await dial(engine.listener_info(lid)["port"])
    conn = await engine.accept(lid, 5.0)
    engine.subscribe(conn, lambda _conn, event, info: events.append((event, info)))
    fid = engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportInitiateOffload", "ms": 300}
    )
    offloading = asyncio.ensure_future(engine.offload(conn))
    first = random.Random(7).randbytes(60_000)
    for i in range(0, len(first), 10_000):
        peer.transport.write(first[i : i + 10_000])
        await asyncio.sleep(0.01)
    await offloading
    engine.fault_clear(fid)
    await eventually(lambda: engine.conn_info(conn)["state"] == "host", "the upload")
    assert UrgentIm.marked == 1
    later = random.Random(8).randbytes(40_000)
    peer.transport.write(later)
    assert await read_all(engine, conn, len(first) + len(later)) == first + later
    assert (
        "TcpIndicateRetrieve",
        {"reason": "ReceivedUrgentData", "mandatory": True, "honored": True},
    ) in events
    # the held segments took the ordinary path (spec §4.7)
    assert engine.ndis.stats()["nic0"]["calls"].get("NdisMIndicateReceiveNetBufferLists", 0) > 0
