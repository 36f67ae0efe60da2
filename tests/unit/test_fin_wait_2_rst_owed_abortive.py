"""An abortive `tcp.disconnect` of a connection that timed out in FIN_WAIT_2 with its RST owed
(docs/spec.md §8: reading stopped under back-pressure, so the RST waits for the application to
read what the kernel holds, or for `tcp.close`).

The connection is dead (timed out): the disconnect is answered as any disconnect of a dead
connection is, `NDIS_STATUS_REQUEST_ABORTED` (spec §4.5: a disconnect fails once the
connection was aborted). But an abortive disconnect means the application will read nothing
more from the peer: nothing is processed after one, and the peer's bytes the kernel holds unread
go with the socket (spec §4.5). The RST was owed only so that those bytes could be read first:
it goes now. Before, it waited for `tcp.close`, the peer left hanging on a connection the
application had aborted. What the host already held is still read, then the timeout, once."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.testing.hostrig import HostRig
from tests.unit.test_fin_wait_2_back_pressure import _peer_sends_more_than_is_read
from tests.unit.test_fin_wait_2_rst_owed import (
    TOPOLOGIES,
    _closed_and_drained,
    _contexts,
    _offloaded_in_fin_wait_2,
)
from tests.unit.test_host_fin_wait_2 import _host_in_fin_wait_2
from tests.unit.test_target_fin_wait_2_timer import (
    FIN_WAIT_2_S,
    TIMED_OUT,
    _kernel_heard_nothing_since,
    _retrieves,
)


def _abortive_disconnect_sends_the_owed_rst(rig: HostRig, conn: int, wire: Any) -> None:
    tcb = rig.host.tcbs[conn]
    assert tcb.read_paused and not wire.reset_sent, "no RST owed"
    held = tcb.app_rx_bytes
    disconnect = rig.call(rig.host.app_disconnect, conn, True)
    assert disconnect.done and disconnect.error is None, disconnect
    assert disconnect.value == "NDIS_STATUS_REQUEST_ABORTED", disconnect  # a dead connection
    assert wire.reset_sent, "the abortive disconnect left the owed RST for tcp.close"
    # what the host held is read, then the timeout, once; nothing waits for the kernel's bytes
    got = b""
    for _ in range(held + 2):
        r = rig.call(rig.host.app_recv, conn, 1 << 16, False)
        assert r.done, "a read waits for bytes the RST dropped"
        if r.error is not None:
            assert TIMED_OUT in str(r.error), r
            break
        got += r.value
    else:
        raise AssertionError(f"no timeout read after {got!r}")
    assert len(got) == held
    again = rig.call(rig.host.app_disconnect, conn, True)
    assert again.value == "NDIS_STATUS_REQUEST_ABORTED", again
    _closed_and_drained(rig, conn)


def test_the_host_s_expiry_abortive_disconnect_sends_the_owed_rst_now() -> None:
    rig, conn, wire = _host_in_fin_wait_2(rx_buffer_bytes=4)
    wire.lazy_reads = True
    _peer_sends_more_than_is_read(rig, wire)
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S + 1)
    _abortive_disconnect_sends_the_owed_rst(rig, conn, wire)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_the_target_s_expiry_abortive_disconnect_sends_the_owed_rst_now(topology: str) -> None:
    rig, conn, wire = _offloaded_in_fin_wait_2(topology, rx_buffer_bytes=4)
    wire.lazy_reads = True
    (ctx,) = _contexts(rig)
    ctx.rcv_bound = 8
    _peer_sends_more_than_is_read(rig, wire)
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S + 1)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"], rig.events
    assert _contexts(rig) == []
    _abortive_disconnect_sends_the_owed_rst(rig, conn, wire)
