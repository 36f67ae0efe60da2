"""A property of what reaches the real host and its application once the target stopped
processing a connection (docs/spec.md §4.6, §4.7, §5.2): the SYNs and RSTs it holds for the
ordinary path, and the socket's news after the stop (its data, FIN, reset or timeout).

Whatever stopped processing — a SYN at RcvNxt, urgent data, a SYN in TIME_WAIT, an
`UploadRequested` request, an `NDIS_STATUS_UPLOAD_ALL` (spec §5.5) — and whatever follows in the
forward (SYNs, SYNs with FIN, RSTs, anywhere in the sequence space), through a pass-through IM
or not, with the host's terminate held behind a query (spec §3.1) or not, and found corrupt
once (spec §3.7) or not: the connection is uploaded once, nothing goes round between the host
and the target (no second forward), every NBL and every call comes back (the invariant checker,
nothing queued, no layer's leftovers), and the application reads every byte the peer sent,
once, in order, then the end the socket saw: a timeout reads as one (spec §5.2 chimneyd), a
reset as a reset, the peer's FIN as the end of stream, and nothing as nothing (a SYN's FIN is
no end, RFC 793).

The real host stack over the target on a MemoryWire (no sockets, no sleeps)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimneyd.drivers.segment import TH_ACK, TH_FIN, TH_RST, TH_SYN, TH_URG
from chimneyd.drivers.target import events
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpUploadReason
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig

#: the flags of each kind of segment forwarded after the cause
KINDS = {"rst": TH_RST | TH_ACK, "syn": TH_SYN, "syn_fin": TH_SYN | TH_FIN}
#: causes the target asked for before the forward: it refuses the forward whole (spec §3.6.4)
#: and the host processes its segments itself after the upload
ASKED_BEFORE = ("requested", "upload_all")
FAR = 1 << 30
#: the host's phases in which it forwards (spec §4.6)
FORWARDING = ("OFFLOADED", "UPLOAD_SUGGESTED", "UPLOAD_REQUESTED", "INVALIDATED")


def _read_all(rig: HostRig, conn: int) -> tuple[bytes, str | None]:
    """Every byte the application can read now, and how reading ended: None (it waits),
    "eof", or the error."""
    got = b""
    for _ in range(50):
        read = rig.call(rig.host.app_recv, conn, 64, False)
        if not read.done:
            return got, None
        if read.error is not None:
            return got, str(read.error)
        if read.value == b"":
            return got, "eof"
        got += read.value
    raise AssertionError("the reads never end")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cause=st.sampled_from(["time_wait", "syn_at_rcvnxt", "urgent", *ASKED_BEFORE]),
    later=st.lists(
        st.tuples(
            st.sampled_from(sorted(KINDS)),
            st.one_of(st.integers(-50, 200), st.just(FAR)),  # behind, in the window, far off
        ),
        max_size=4,
    ),
    before=st.binary(max_size=5),
    after=st.binary(max_size=5),
    end=st.sampled_from(["none", "reset", "timeout", "fin"]),
    im=st.booleans(),
    corrupt=st.booleans(),
    hold_terminate=st.booleans(),
)
def test_what_the_target_held_reaches_the_application_once_and_ends_as_the_socket_did(
    cause: str,
    later: list[tuple[str, int]],
    before: bytes,
    after: bytes,
    end: str,
    im: bool,
    corrupt: bool,
    hold_terminate: bool,
) -> None:
    rig = HostRig(im=im)
    conn, wire = rig.open()
    rig.offload(conn)
    sent = before
    if before:
        wire.peer_send(before)
        rig.run()
    if cause == "time_wait":
        closing = rig.call(rig.host.app_disconnect, conn, False)
        wire.ack()
        rig.run()
        assert closing.done
        # the peer's FIN comes in the forward, before the SYN: TIME_WAIT asks for the upload
        # (spec §5.2), so a SYN in a later forward would be refused whole and go back up
        end = "none" if end == "fin" else end
        after = b""
    (ctx,) = rig.contexts()
    n = ctx.rx.rcv_nxt
    if corrupt:
        fail_next(rig.target, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    held = rig.query_held_below(conn)[1] if hold_terminate else None
    segments: list[tuple[int, int]] = []
    if cause == "time_wait":
        segments += [(n, TH_FIN | TH_ACK), (n + 1, TH_SYN)]
    elif cause == "syn_at_rcvnxt":
        segments.append((n, TH_SYN))
    elif cause == "urgent":
        segments.append((n, TH_URG | TH_ACK))
    elif cause == "requested":
        events.request_upload(rig.target, ctx, TcpUploadReason.UploadRequested)
        rig.run()
    else:
        rig.target.fail_adapter()
        rig.run()
    for kind, offset in later:
        if kind == "syn_fin" and cause in ASKED_BEFORE:
            # refused whole, it goes back to the host (spec §4.6): not what the target holds
            continue
        segments.append((offset if offset == FAR else n + offset, KINDS[kind]))
    forwarded = bool(segments) and rig.host.tcbs[conn].lifecycle.phase.name in FORWARDING
    if forwarded:
        rig.forward(conn, *segments)
    forwards = rig.host.stats.calls.get("NdisOffloadTcpForward", 0)
    for _ in range(200):  # bounded: a host and a target that pass a segment round never stop
        rig.scheduler.run()
        rig.host.after_batch()
        if not rig.scheduler.queue:
            break
    assert not rig.scheduler.queue, "a segment goes round between the host and the target"
    if after and not wire.closed:
        wire.peer_send(after)
        rig.run()
        sent += after
    if not wire.closed and end != "none":
        {"reset": wire.peer_reset, "timeout": wire.kernel_timeout, "fin": wire.peer_fin}[end]()
        rig.run()
    if held is not None:
        rig.release(held)
    assert rig.host.tcbs[conn].lifecycle.phase.name == "IDLE", "not uploaded"
    assert rig.host.stats.calls.get("NdisOffloadTcpForward", 0) == forwards, "forwarded again"
    names = rig.event_names(conn)
    assert names.count("uploaded") == 1, names
    got, ended = _read_all(rig, conn)
    assert got == sent, (got, sent)
    rig.run()
    assert rig.problems() == []
    for name, layer in rig.layers().items():
        left = {k: v for k, v in layer.leftovers().items() if v and k != "resume_offloads"}
        assert not left, (name, left)
    if corrupt or (forwarded and any(kind == "rst" for kind, _ in later)):
        return  # the connection is lost with the hardware, or an RST came first: it is reset
    if cause == "time_wait":
        assert ended is not None, names  # the peer's FIN came before all of it
    elif end == "timeout":
        assert ended is not None and "timed out" in ended, (ended, names)
        if held is not None:  # before the upload: no RST came, so no abort (spec §5.2)
            assert "TcpIndicateAbort" not in names, names
    elif end == "reset":
        assert ended is not None and "connection reset" in ended, (ended, names)
    else:
        assert ended == ("eof" if end == "fin" else None), (ended, names)
