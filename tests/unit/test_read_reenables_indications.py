"""A read that frees room after the host refused an indication re-enables indications.

The host refuses an indication (in whole or in part) when it has no room for the bytes; the
target then holds them and indicates no more until the host posts a receive request (spec
§4.3). The read that frees the room posts one (a zero-byte one when no read waits), so the
target indicates what it held without waiting for the next read. `serve` calls
`_after_consume` only while a socket read is paused or an indication was refused: this keeps
the refused case among them.
"""

from __future__ import annotations

import pytest

from chimneyd.testing.hostrig import HostRig

ROOM = 4096


@pytest.mark.parametrize("im", [False, True])
def test_a_read_after_a_refused_indication_lets_the_target_indicate_again(im: bool) -> None:
    rig = HostRig(im=im, host_options={"rx_buffer_bytes": ROOM})
    conn, wire = rig.open()
    rig.offload(conn)
    tcb = rig.host.tcbs[conn]
    assert tcb.state == "offloaded"
    data = bytes(range(256)) * (3 * ROOM // 256)
    wire.peer_send(data)
    rig.run()
    # no read waits: the host took what fits and refused the rest (spec §4.3)
    assert tcb.app_rx_bytes == ROOM and tcb.refused, (tcb.app_rx_bytes, tcb.refused)
    first = rig.call(rig.host.app_recv, conn, ROOM, False)
    assert first.done and first.value == data[:ROOM], first
    # the read freed the room: the host posted, and the target indicated what it held (the
    # host took what fits again); without the post the bytes wait at the target for a read
    assert tcb.app_rx_bytes == ROOM, f"no indication after the read: {tcb.app_rx_bytes} held"
    rest = rig.call(rig.host.app_recv, conn, 2 * ROOM, True)
    assert rest.done and rest.value == data[ROOM:], rest
    assert not rig.problems(), rig.problems()
