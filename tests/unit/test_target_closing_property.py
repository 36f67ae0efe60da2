"""A property of an offloaded active closer (docs/spec.md §5.2, §8): whatever the peer sends in
FIN_WAIT_2 and however long it pauses, the connection ends exactly one way, through the real
host stack: 120 s without a segment → one `TimeoutExpiration` upload, the application reads
every byte the peer sent, then the timeout; the peer's FIN first → one `UploadRequested`
upload in TIME_WAIT, every byte, then the end of stream. Either way nothing is asked for
afterwards, no timer is left, `tcp.close` works and every table drains.

The real host stack over the target, on MemoryWires, with the rig's ManualClock (no sockets,
no sleeps)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimneyd.ndis.lifecycle import TcpState
from chimneyd.testing.hostrig import HostRig

FIN_WAIT_2_S = 120
TIMED_OUT = "timed out (TimeoutExpiration)"

steps = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.integers(1, 2 * FIN_WAIT_2_S)),
        st.tuples(st.just("data"), st.binary(min_size=1, max_size=6)),
    ),
    max_size=12,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=steps,
    end=st.sampled_from(["fin", "silence"]),
    im=st.booleans(),
)
def test_an_active_closer_ends_once_by_its_peer_s_fin_or_by_the_timer(
    plan: list[tuple[str, object]], end: str, im: bool
) -> None:
    # the host takes every byte, so the target never stops reading: each of the peer's
    # segments reaches it (back-pressure has tests of its own, test_target_fin_wait_2_timer)
    rig = HostRig(im=im)
    conn, wire = rig.open()
    rig.offload(conn)
    rig.half_close(conn, wire)
    # the model: when the last acceptable segment came, and whether the timer expired
    now = heard = 0
    expired = False
    sent = b""
    for kind, arg in plan:
        if kind == "wait":
            assert isinstance(arg, int)
            rig.advance(arg)
            now += arg
            expired = now >= heard + FIN_WAIT_2_S
        else:
            assert isinstance(arg, bytes)
            wire.peer_send(arg)
            rig.run()
            sent += arg
            heard = now
        if expired:
            break
    if not expired:
        if end == "fin":
            wire.peer_fin()
            rig.run()
        else:
            rig.advance(FIN_WAIT_2_S)
            expired = True
    rig.advance(3 * FIN_WAIT_2_S)  # nothing further, whatever the time
    reasons = [i["reason"] for c, e, i in rig.events if c == conn and e == "TcpIndicateRetrieve"]
    assert reasons == (["TimeoutExpiration"] if expired else ["UploadRequested"]), rig.events
    assert "TcpIndicateAbort" not in rig.event_names(conn)
    assert rig.contexts() == [], "still offloaded"
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.tcp is (TcpState.RESET if expired else TcpState.TIME_WAIT)
    got = b""
    for _ in range(len(sent) + 2):
        r = rig.call(rig.host.app_recv, conn, 5, False)
        assert r.done, r
        if r.error is not None or r.value == b"":
            break
        got += r.value
    else:
        raise AssertionError(f"no end after {got!r}")
    assert got == sent
    if expired:
        assert TIMED_OUT in str(r.error), r
    else:
        assert r.error is None and r.value == b"", r
    close = rig.call(rig.host.app_close, conn)
    assert close.value is True, close
    assert rig.problems() == []
    assert all(v == 0 for v in rig.target.leftovers().values()), rig.target.leftovers()
    assert len(rig.target.table) == 0
