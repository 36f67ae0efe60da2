"""The FIN_WAIT_2 timer after a mandatory upload request (docs/spec.md §5.2, §8).

After a mandatory request the target stops processing the connection: what the peer sends
then, its FIN too, is held for the ordinary path and goes up at the terminate (spec §5.2,
§3.6.3). A peer whose FIN is held that way has closed: the connection is in TIME_WAIT as soon
as the host takes it, and must not be timed out by the FIN_WAIT_2 timer meanwhile — no second
request (`TimeoutExpiration`), no "timed out" connection handed back CLOSED, whatever keeps
the host's terminate waiting (here a query held below, spec §3.1).

The real host stack over the target, on MemoryWires, with the rig's ManualClock (no sockets,
no sleeps)."""

from __future__ import annotations

from dataclasses import replace

from chimneyd.ndis.lifecycle import Phase, TcpState
from chimneyd.ndis.status import TcpUploadReason
from chimneyd.testing.hostrig import HostRig

FIN_WAIT_2_S = 120


def _retrieves(rig: HostRig, conn: int) -> list[str]:
    return [i["reason"] for c, e, i in rig.events if c == conn and e == "TcpIndicateRetrieve"]


def test_a_fin_held_after_a_mandatory_request_is_no_fin_wait_2_timeout() -> None:
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    rig.half_close(conn, wire)
    (ctx,) = rig.contexts()
    assert ctx.tcp is TcpState.FIN_WAIT_2
    query, held = rig.query_held_below(conn)  # the host's terminate waits behind it
    rig.target.retrieve(ctx, TcpUploadReason.UploadRequested)
    rig.run()
    assert ctx.phase is Phase.UPLOAD_REQUESTED
    wire.peer_send(b"last words")
    wire.peer_fin()
    rig.run()
    rig.advance(FIN_WAIT_2_S + 1)
    assert _retrieves(rig, conn) == ["UploadRequested"], rig.events
    assert ctx.tcp is not TcpState.RESET, "timed out after the peer's FIN"
    rig.release(held)
    assert query.done, query
    assert rig.contexts() == []
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.tcp is TcpState.TIME_WAIT, tcb.lifecycle
    assert rig.call(rig.host.app_recv, conn, 64, False).value == b"last words"
    end = rig.call(rig.host.app_recv, conn, 64, False)
    assert end.value == b"" and end.error is None, end
    assert _retrieves(rig, conn) == ["UploadRequested"], rig.events
    close = rig.call(rig.host.app_close, conn)
    assert close.value is True, close
    assert rig.problems() == []
    assert all(v == 0 for v in rig.target.leftovers().values()), rig.target.leftovers()


def test_a_fin_the_kernel_holds_after_a_mandatory_request_is_no_fin_wait_2_timeout() -> None:
    """The same with the FIN still in the kernel: after the request the target read the peer's
    bytes, held them and stopped reading (spec §5.2); the FIN came after and waits in the
    socket, which the kernel has closed (tcpi_state CLOSE: it left FIN_WAIT_2 on the FIN) and
    which has heard nothing since. No timeout: the terminate reads the FIN for the host."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    rig.half_close(conn, wire)
    (ctx,) = rig.contexts()
    query, held = rig.query_held_below(conn)  # the host's terminate waits behind it
    rig.target.retrieve(ctx, TcpUploadReason.UploadRequested)
    rig.run()
    wire.peer_send(b"last words")
    rig.run()
    assert ctx.paused and not wire.reading
    wire.peer_fin()  # waits in the kernel
    rig.run()
    wire.info = replace(wire.info, state=7, last_data_recv_ms=10**9, last_ack_recv_ms=10**9)
    rig.advance(FIN_WAIT_2_S + 1)
    assert _retrieves(rig, conn) == ["UploadRequested"], rig.events
    rig.release(held)
    assert query.done, query
    assert rig.contexts() == []
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.tcp is TcpState.TIME_WAIT, tcb.lifecycle
    assert rig.call(rig.host.app_recv, conn, 64, False).value == b"last words"
    end = rig.call(rig.host.app_recv, conn, 64, False)
    assert end.value == b"" and end.error is None, end
    close = rig.call(rig.host.app_close, conn)
    assert close.value is True, close
    assert rig.problems() == []
    assert all(v == 0 for v in rig.target.leftovers().values()), rig.target.leftovers()
