"""Send pacing on real sockets (spec §5.3): the target indicates its preferred backlog from the
kernel's congestion window; the host keeps no more than that outstanding at the target."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.integration.support import RecordingPeer


async def test_a_large_send_is_paced_by_the_indicated_backlog(
    make_engine: Any, recording: Any
) -> None:
    port, peers = recording
    # room for several backlogs of up to 16 MiB in one tcp.send: the kernel's send buffer,
    # and with it the backlog the target prefers, grows to several MiB on a busy loopback
    engine = await make_engine(max_queued_send_bytes=128 << 20)
    seen: list[tuple[int, int]] = []  # (bytes outstanding at the target, backlog the host knew)
    handlers = engine.driver_layer("nic0").chimney_handlers  # what NDIS dispatches by
    original = handlers["MiniportTcpOffloadSend"]

    def watched(c: Any, head: Any) -> None:
        original(c, head)
        tcb = engine.host.tcbs.get(next(iter(engine.host.tcbs)))
        held = sum(end - start for _, start, end in c.unacked)
        seen.append((held, tcb.send_backlog if tcb else 0))

    handlers["MiniportTcpOffloadSend"] = watched
    conn = await engine.connect("127.0.0.1", port)
    events: list[dict[str, Any]] = []
    engine.subscribe(
        conn, lambda c, e, i: events.append(i) if e.endswith("BacklogChange") else None
    )
    for _ in range(200):
        if peers:
            break
        await asyncio.sleep(0.005)
    peer: RecordingPeer = peers[0]
    assert await engine.send(conn, b"first") == 5  # its ACK makes the target indicate a backlog
    for _ in range(200):
        if engine.host.tcbs[conn].send_backlog:
            break
        await asyncio.sleep(0.005)
    backlog = engine.host.tcbs[conn].send_backlog
    assert backlog >= 65536 and events and events[0]["backlog"] == backlog
    data = bytes(range(256)) * (4 * backlog // 256 + 7)  # several backlogs' worth
    assert await engine.send(conn, data) == len(data)
    for _ in range(400):
        if len(peer.received) == 5 + len(data):
            break
        await asyncio.sleep(0.005)
    assert bytes(peer.received) == b"first" + data
    paced = [(held, known) for held, known in seen if known]
    assert len(paced) > 1  # the one tcp.send went down in pieces
    assert all(held <= known for held, known in paced)
