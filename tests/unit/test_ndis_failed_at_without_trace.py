"""NDIS notes the layer whose initiate completion failed a connection where it keeps its own
per-connection state for the initiate, the NDIS handle (`NdisOffloadHandle.failed_at`, beside
`ndis_reserved`), not on the connection's hop trace, which is for watching: `tcp.info`'s
`offload_refused` `layer` does not depend on the trace at all (docs/rpc.md `tcp.info`).

Here no layer's handle carries a trace for the initiate (the host's is taken off before the
IM mirrors it, so the IM's and the NIC's have none either): the NIC that fails the
connection is still named, through the IM, as the completions go up. Before, NDIS noted the
layer only on a handle with a trace (`HopTrace.failed_at`), and `layer` was None. The host
sees only its own handle: the name NDIS wrote there (spec §2: no handle of another layer
reaches it)."""

from __future__ import annotations

from chimneyd.drivers.host.adapter import refusal_info
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.trace import HopTrace
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply


def test_a_connection_whose_handles_carry_no_trace_still_names_the_failing_nic() -> None:
    rig = HostRig(im=True)
    conn, _ = rig.open()
    host = rig.host
    tcb = host.tcbs[conn]
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    reply = Reply()
    host.app_offload(conn, None, reply)
    held = rig.hold_below("MiniportInitiateOffload")  # the IM's, not yet mirrored
    handle = tcb.handle
    assert handle is not None and handle.trace is tcb.trace
    handle.trace = None  # no trace below the host for this initiate
    rig.release(held)
    assert reply.done and reply.error is not None and tcb.state == "host", reply
    refused = refusal_info(tcb)
    assert refused is not None and refused["status"] == "NDIS_STATUS_FAILURE", refused
    assert refused["layer"] == "nic0", refused
    assert rig.problems() == []


def test_the_hop_trace_keeps_no_failing_layer() -> None:
    """One place per fact: the trace records hops, the NDIS handle the failing layer."""
    # a slot or a compiled class's attribute is a descriptor on the class (both builds)
    assert not hasattr(HopTrace, "failed_at")
