"""`WirePort.abort` reads what the kernel holds before its RST, with reading on, and tells it
to the owner (`WireData`, posted to its inbox like every read): the bytes a FIN_WAIT_2
timeout's RST would drop come before the timeout (spec §8). Every other abort is the owner
ending the connection itself, and what that last read tells comes after the owner decided:
it must not reach an application that aborted (spec §4.5: after an abortive disconnect
nothing more is processed) nor a layer that has let the connection go.

The real host (and target) on MemoryWires that read as `WireSocket` does (`lazy_reads`), the
invariant checker on, the rig's manual clock."""

from __future__ import annotations

from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply

ABORTED = S.NDIS_STATUS_REQUEST_ABORTED.name


def _reads(rig: HostRig, conn: int, n: int) -> list[Reply]:
    replies = [Reply() for _ in range(n)]
    for reply in replies:
        rig.ndis.post(rig.host, rig.host.app_recv, (conn, 64, False, reply))
    rig.run()
    return replies


def _run_until(rig: HostRig, call: str) -> None:
    """Deliver until the delivery of `call` (a handler's name) is next; the host's batch
    whenever the queue runs dry, as `HostRig.run` does."""
    queue = rig.scheduler.queue
    while True:
        if not queue:
            rig.host.after_batch()
            assert queue, f"{call} never came"
        if getattr(queue[0][1], "__name__", "") == call:
            return
        rig.scheduler.run_one()


def test_the_host_s_abortive_disconnect_lets_no_byte_the_kernel_held_reach_a_read() -> None:
    """Carried by the host, its buffer full, reading stopped: the application reads, reading
    resumes, and before the socket's next read the application disconnects abortively (the
    engine queues its requests in the host's inbox, one round). The RST drops what the kernel
    held (spec §4.5); reads get what the host held, then the abort, never bytes after it."""
    rig = HostRig(host_options={"rx_buffer_bytes": 4})
    conn, wire = rig.open(lazy_reads=True)
    for chunk in (b"held", b"in the kernel", b" and more"):
        wire.peer_send(chunk)
        rig.run()
    tcb = rig.host.tcbs[conn]
    assert tcb.read_paused and not wire.reading
    first, abortive = Reply(), Reply()
    rig.ndis.post(rig.host, rig.host.app_recv, (conn, 64, False, first))
    rig.ndis.post(rig.host, rig.host.app_disconnect, (conn, True, abortive))
    rig.run()
    assert first.value == b"held", first
    assert abortive.value == "NDIS_STATUS_SUCCESS", abortive
    assert wire.reset_sent
    later = _reads(rig, conn, 3) + _reads(rig, conn, 1)
    got = [r.value for r in later if r.error is None]
    assert got == [], f"bytes read after the abortive disconnect: {got!r}"
    assert all(ABORTED in str(r.error) for r in later), later
    assert rig.call(rig.host.app_close, conn).value is True
    assert rig.problems() == []
    assert all(v == 0 for v in rig.host.leftovers().values()), rig.host.leftovers()


def test_a_connection_lost_with_the_hardware_lets_no_byte_reach_a_read_after_its_abort() -> None:
    """Offloaded, the target's buffer full and its reading stopped; a query finds the hardware
    state corrupt (spec §3.7): retrieve, abort, and the host's terminate, at which the target
    lets reading resume. The host resets the peer as it takes the connection back (its state
    was lost with the hardware); reads queued meanwhile get what the host holds, then the
    abort: no read after that gets bytes, those the kernel held at the RST included."""
    rig = HostRig(host_options={"rx_buffer_bytes": 4})
    conn, wire = rig.open(lazy_reads=True)
    rig.offload(conn)
    (ctx,) = rig.contexts()
    ctx.rcv_bound = 8
    for i in range(10):
        wire.peer_send(b"chunk%02d " % i)
        rig.run()
    assert not wire.reading, "the target never stopped reading"
    fail_next(rig.target, "MiniportQueryOffload", S.NDIS_STATUS_FAILURE)
    query = Reply()
    rig.host.app_query(conn, query)
    _run_until(rig, "ProtocolTerminateOffloadComplete")
    reads = [Reply() for _ in range(3)]
    for reply in reads:
        rig.ndis.post(rig.host, rig.host.app_recv, (conn, 64, False, reply))
    rig.run()
    assert wire.reset_sent and rig.host.tcbs[conn].state == "host"
    reads += _reads(rig, conn, 3)
    assert all(r.done for r in reads), reads
    failed = [i for i, r in enumerate(reads) if r.error is not None]
    assert failed, reads
    late = [r.value for r in reads[failed[0] :] if r.error is None]
    assert late == [], f"bytes read after the abort: {late!r} ({reads})"
    assert rig.call(rig.host.app_close, conn).value is True
    assert rig.problems() == []


def test_reads_during_the_upload_of_a_reset_connection_wait_for_what_the_target_held() -> None:
    """The hardware state is lost (spec §3.7) while the target holds bytes the host refused
    and the kernel holds more: the retrieve, the abort, the host's terminate. Reads asked while
    the upload is under way find nothing in the host; what the target hands back at the
    upload (`BufferedData`, what it handed up the ordinary path, spec §3.6.3) comes before
    the abort, so those reads wait for it: no read gets bytes after one got the error."""
    rig = HostRig(host_options={"rx_buffer_bytes": 4})
    conn, wire = rig.open()
    rig.offload(conn)
    (ctx,) = rig.contexts()
    ctx.rcv_bound = 8
    for i in range(3):
        wire.peer_send(b"chunk%02d " % i)
        rig.run()
    assert ctx.buffered_bytes and not wire.reading, "the target holds nothing"
    fail_next(rig.target, "MiniportQueryOffload", S.NDIS_STATUS_FAILURE)
    query = Reply()
    rig.host.app_query(conn, query)
    _run_until(rig, "MiniportTerminateOffload")
    # more reads than pieces to hand back: those left over get the error, after every piece
    reads = [Reply() for _ in range(6)]
    for reply in reads:
        rig.ndis.post(rig.host, rig.host.app_recv, (conn, 64, False, reply))
    rig.run()
    reads += _reads(rig, conn, 3)
    assert all(r.done for r in reads), reads
    got = b"".join(r.value for r in reads if r.error is None)
    assert got == b"chunk00 chunk01 chunk02 ", reads
    failed = [i for i, r in enumerate(reads) if r.error is not None]
    late = [r.value for r in reads[failed[0] :] if r.error is None]
    assert late == [], f"bytes read after the abort: {late!r} ({reads})"
    assert rig.call(rig.host.app_close, conn).value is True
    assert rig.problems() == []
