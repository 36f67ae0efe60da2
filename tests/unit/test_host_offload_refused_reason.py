"""Why the last offload of a connection was refused, as `tcp.info` says it (`offload_refused`,
docs/rpc.md): the `NDIS_STATUS` it was refused with (None for a reason of the host's own that
has none), the layer that refused it — the host itself before the initiate went down (the
target paused offloads, is full by its capabilities, or a host event withholds it, spec §5.5,
§6.2, §8), else the lowest layer whose initiate completion failed it (spec §3.2.4) — and the
answer the refused request got. Nil again once an offload succeeds: when the `offloaded` event
comes (no event says an offload was refused). Before, `tcp.info` said only `state: "host"`:
`tcp.connect` answers the id whether or not its offload was refused (rpc-contract), and an
offload the host makes itself (at a RESUME) answers no one."""

from __future__ import annotations

from typing import Any

from chimneyd.drivers.host.adapter import refusal_info
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig


def _refused(rig: HostRig, conn: int) -> dict[str, Any] | None:
    """What `tcp.info` says (`Engine.conn_info`)."""
    return refusal_info(rig.host, rig.host.tcbs[conn])


def _offload_fails(rig: HostRig, conn: int) -> str:
    reply = rig.call(rig.host.app_offload, conn, None)
    assert reply.done and reply.error is not None, reply
    assert rig.host.tcbs[conn].state == "host"
    return str(reply.error)


def test_a_refusal_in_the_targets_completion_names_the_target_below_the_im() -> None:
    rig = HostRig(im=True)
    conn, wire = rig.open()
    wire.auto_ack = True
    assert _refused(rig, conn) is None  # none asked yet
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    answer = _offload_fails(rig, conn)
    assert _refused(rig, conn) == {
        "status": "NDIS_STATUS_FAILURE",
        "layer": "nic0",  # not the IM, which passed the status up
        "reason": answer,
    }
    rig.offload(conn)  # the next one goes: nothing refused any more
    assert _refused(rig, conn) is None
    assert rig.event_names(conn)[-1] == "offloaded"
    assert rig.problems() == []


def test_a_target_that_paused_offloads_is_the_hosts_refusal() -> None:
    rig = HostRig()
    conn, _ = rig.open()
    rig.target.fail_adapter()  # PAUSE, UPLOAD_ALL (spec §5.5)
    rig.run()
    answer = _offload_fails(rig, conn)
    assert _refused(rig, conn) == {
        "status": "NDIS_STATUS_OFFLOAD_PAUSE",
        "layer": rig.host.name,
        "reason": answer,
    }
    rig.target.recover_adapter()
    rig.run()
    rig.offload(conn)
    assert _refused(rig, conn) is None


def test_a_full_target_by_its_capabilities_is_the_hosts_refusal() -> None:
    rig = HostRig(max_connections=1)
    first, wire = rig.open()
    wire.auto_ack = True
    rig.offload(first)
    second, _ = rig.open()
    answer = _offload_fails(rig, second)
    refused = _refused(rig, second)
    assert refused == {
        "status": "NDIS_STATUS_OFFLOAD_TCP_ENTRIES",
        "layer": rig.host.name,
        "reason": answer,
    }
    assert "room for 1" in refused["reason"], refused
    assert _refused(rig, first) is None


def test_a_host_event_has_no_status_and_names_the_event() -> None:
    rig = HostRig()
    target = next(iter(rig.targets))
    conn, _ = rig.open()
    rig.host.host_event(target, "power_down", True)
    answer = _offload_fails(rig, conn)
    refused = _refused(rig, conn)
    assert refused == {"status": None, "layer": rig.host.name, "reason": answer}, refused
    assert answer.startswith("INVALID_STATE") and "power_down" in answer, answer
    rig.host.host_event(target, "power_down", False)
    rig.offload(conn)
    assert _refused(rig, conn) is None


def test_the_hosts_own_offload_at_a_resume_refused_is_told_too() -> None:
    """No request answers the host's own offload again after a failover (spec §5.5), and no
    event says it was refused: `tcp.info` does."""
    rig = HostRig()
    conn, wire = rig.open()
    wire.auto_ack = True
    rig.offload(conn)
    rig.target.fail_adapter()  # the connection goes up, to be offered again at RESUME
    rig.run()
    assert rig.host.tcbs[conn].state == "host"
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    rig.target.recover_adapter()
    rig.run()
    assert rig.host.tcbs[conn].state == "host"
    refused = _refused(rig, conn)
    assert refused is not None and refused["status"] == "NDIS_STATUS_FAILURE", refused
    assert refused["layer"] == "nic0", refused
    assert rig.event_names(conn)[-1] == "uploaded"  # nothing said of the refusal


def test_a_trace_that_no_longer_holds_the_initiate_names_no_layer() -> None:
    """The layer is read back from the connection's hop trace (`engine.trace_depth`): one too
    short to hold the whole initiate names none rather than the wrong one."""
    rig = HostRig(im=True)
    conn, _ = rig.open()
    rig.host.tcbs[conn].trace.depth = 2  # the host's two completion hops, no more
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    _offload_fails(rig, conn)
    refused = _refused(rig, conn)
    assert refused is not None and refused["status"] == "NDIS_STATUS_FAILURE", refused
    assert refused["layer"] is None, refused


def test_the_last_refusal_is_told_while_the_next_offload_is_below() -> None:
    """Until that one is answered: the hops of the next initiate, later in the trace, are not
    read for the last one's layer."""
    rig = HostRig(im=True)
    conn, wire = rig.open()
    wire.auto_ack = True
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    _offload_fails(rig, conn)
    refused = _refused(rig, conn)
    assert refused is not None and refused["layer"] == "nic0", refused
    rig.host.app_offload(conn, None, lambda value, error: None)
    held = rig.hold_below("MiniportInitiateOffload")
    assert rig.host.tcbs[conn].state == "offloading"
    assert _refused(rig, conn) == refused
    rig.release(held)
    assert rig.host.tcbs[conn].state == "offloaded"
    assert _refused(rig, conn) is None
    assert rig.problems() == []
