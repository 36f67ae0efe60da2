"""An offloaded connection entering TIME_WAIT asks to be uploaded (docs/spec.md §5.2 "Other
documented upload triggers": "connection entering TIME_WAIT (should upload)").

TIME_WAIT is the active closer's end: our FIN acknowledged and the peer's FIN received, in
either order (FIN_WAIT_2 then the peer's FIN, or a simultaneous close: CLOSING, then the ACK
of ours). Nothing is left for the chimney to carry, and the 2MSL wait is the host stack's to
keep; an offloaded connection that stayed offloaded until the application closed it held a
TOE context for nothing. The target asks with `UploadRequested` ([INF]: the spec gives no
reason code for this trigger; it is the one for "unspecified"), and the host takes the
connection back in TIME_WAIT. Through the real host stack, with the invariant checker on: the
application still reads every byte and the end of stream once, the disconnect completes once,
`tcp.close` afterwards works and every table drains.

The real host stack over the target, on MemoryWires (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from chimneyd.ndis.lifecycle import Phase, TcpState
from chimneyd.testing.hostrig import HostRig, Reply

SUCCESS = "NDIS_STATUS_SUCCESS"


def _retrieves(rig: HostRig, conn: int) -> list[str]:
    return [i["reason"] for c, e, i in rig.events if c == conn and e == "TcpIndicateRetrieve"]


def _read_to_the_end(rig: HostRig, conn: int) -> tuple[bytes, Reply]:
    """What the application reads until its first empty read (the end of stream), and the
    read after that one."""
    got = b""
    for _ in range(64):
        r = rig.call(rig.host.app_recv, conn, 5, False)
        assert r.done and r.error is None, r
        if r.value == b"":
            break
        got += r.value
    else:
        raise AssertionError(f"no end of stream after {got!r}")
    return got, rig.call(rig.host.app_recv, conn, 5, False)


def _uploaded_in_time_wait(rig: HostRig, conn: int) -> None:
    assert rig.contexts() == [], "still offloaded in TIME_WAIT"
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.phase is Phase.IDLE, tcb.lifecycle
    assert tcb.lifecycle.tcp is TcpState.TIME_WAIT, tcb.lifecycle
    assert _retrieves(rig, conn) == ["UploadRequested"], rig.events


def _closed_and_drained(rig: HostRig, conn: int) -> None:
    close = rig.call(rig.host.app_close, conn)
    assert close.value is True and close.error is None, close
    assert conn not in rig.host.tcbs
    assert rig.problems() == []
    target = rig.target
    assert all(v == 0 for v in target.leftovers().values()), target.leftovers()
    assert len(target.table) == 0  # the path and neighbor went with their last connection
    assert target.stats.outstanding_nbls == 0


@pytest.mark.parametrize("im", [False, True], ids=["direct", "through_an_im"])
@pytest.mark.parametrize("host_room", [1 << 16, 4], ids=["host_takes_all", "target_holds"])
def test_the_active_closer_is_uploaded_on_the_peer_s_fin(im: bool, host_room: int) -> None:
    """FIN_WAIT_2, then the peer's last bytes and its FIN: TIME_WAIT, the upload is asked for
    and the host takes the connection back. With little room at the host the target still
    holds bytes when it asks: they come back as BufferedData, before the end of stream."""
    rig = HostRig(im=im, host_options={"rx_buffer_bytes": host_room})
    conn, wire = rig.open()
    rig.offload(conn)
    sent = rig.call(rig.host.app_send, conn, b"request")
    wire.ack()
    rig.run()
    assert sent.value == len(b"request"), sent
    disconnect = rig.call(rig.host.app_disconnect, conn, False)
    assert not disconnect.done  # FIN_WAIT_1
    wire.ack()  # the FIN too
    rig.run()
    assert disconnect.value == SUCCESS, disconnect
    (ctx,) = rig.contexts()
    assert ctx.tcp is TcpState.FIN_WAIT_2
    assert _retrieves(rig, conn) == []  # FIN_WAIT_2 is no reason to upload
    wire.peer_send(b"the last words")
    wire.peer_fin()
    rig.run()
    _uploaded_in_time_wait(rig, conn)
    got, after = _read_to_the_end(rig, conn)
    assert got == b"the last words"
    assert after.value == b"", after  # the end stays the end
    assert wire.peer_received == b"request" and wire.eof_written and not wire.reset_sent
    _closed_and_drained(rig, conn)


@pytest.mark.parametrize("im", [False, True], ids=["direct", "through_an_im"])
def test_a_simultaneous_close_is_uploaded_once_its_fin_is_acknowledged(im: bool) -> None:
    """Both FINs cross: CLOSING, and TIME_WAIT when the peer acknowledges ours. The
    disconnect completes once, before the request; the connection comes back in TIME_WAIT."""
    rig = HostRig(im=im)
    conn, wire = rig.open()
    rig.offload(conn)
    disconnect = rig.call(rig.host.app_disconnect, conn, False)
    wire.peer_send(b"crossing")
    wire.peer_fin()
    rig.run()
    (ctx,) = rig.contexts()
    assert ctx.tcp is TcpState.CLOSING
    assert not disconnect.done and _retrieves(rig, conn) == []
    wire.ack()
    rig.run()
    assert disconnect.value == SUCCESS, disconnect
    _uploaded_in_time_wait(rig, conn)
    got, after = _read_to_the_end(rig, conn)
    assert got == b"crossing" and after.value == b""
    _closed_and_drained(rig, conn)


def test_the_passive_closer_is_not_asked_back() -> None:
    """The peer closed first: LAST_ACK, then CLOSED when our FIN is acknowledged. No TIME_WAIT,
    no request: the connection stays offloaded until the application closes it, as before."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    wire.peer_fin()
    rig.run()
    disconnect = rig.call(rig.host.app_disconnect, conn, False)
    wire.ack()
    rig.run()
    assert disconnect.value == SUCCESS, disconnect
    (ctx,) = rig.contexts()
    assert ctx.tcp is TcpState.CLOSED and ctx.phase is Phase.OFFLOADED
    assert _retrieves(rig, conn) == []
    _closed_and_drained(rig, conn)
