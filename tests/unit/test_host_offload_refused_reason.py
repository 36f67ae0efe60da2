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
    return refusal_info(rig.host.tcbs[conn])


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


def test_a_trace_too_short_to_hold_the_initiate_still_names_the_layer() -> None:
    """The layer is noted as NDIS reads the failing completion (on the NDIS handle,
    `NdisOffloadHandle.failed_at`), not read back from the connection's hop ring
    (`engine.trace_depth`), which here holds the host's two completion hops and no more.
    Before, it named none (None)."""
    rig = HostRig(im=True)
    conn, _ = rig.open()
    rig.host.tcbs[conn].trace.depth = 2
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    _offload_fails(rig, conn)
    refused = _refused(rig, conn)
    assert refused is not None and refused["status"] == "NDIS_STATUS_FAILURE", refused
    assert refused["layer"] == "nic0", refused


def test_the_last_refusal_is_told_while_the_next_offload_is_below() -> None:
    """Until that one is answered: the next initiate going down does not change the last
    one's layer."""
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


def test_a_failed_path_block_names_the_nic_and_a_later_refusal_replaces_it() -> None:
    """The NIC fails the connection's path (`MiniportInitiateOffload[path]`) and the
    connection with it (spec §3.2.4): the NIC. Then the target pauses offloads: the host's
    own refusal, the last one, is told, not the NIC's before it."""
    rig = HostRig(im=True)
    conn, _ = rig.open()
    fail_next(rig.target, "MiniportInitiateOffload[path]", S.NDIS_STATUS_OFFLOAD_PATH_ENTRIES)
    answer = _offload_fails(rig, conn)
    assert _refused(rig, conn) == {
        "status": "NDIS_STATUS_FAILURE",
        "layer": "nic0",
        "reason": answer,
    }
    rig.target.fail_adapter()  # PAUSE (spec §5.5)
    rig.run()
    answer = _offload_fails(rig, conn)
    refused = _refused(rig, conn)
    assert refused is not None and refused["layer"] == rig.host.name, refused
    assert refused["status"] == "NDIS_STATUS_OFFLOAD_PAUSE" and refused["reason"] == answer
