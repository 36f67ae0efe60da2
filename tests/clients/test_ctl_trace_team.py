"""The trace picture of a connection that moved between the NICs of a team: the lanes follow
the path the hops show (a MUX's NICs side by side under it), else the topology's."""

from __future__ import annotations

from typing import Any

from chimney_client import ctl_trace

ORDER = ["tcpip", "team0", "nic0", "nic1"]
LOWER = {"tcpip": ["team0"], "team0": ["nic0", "nic1"], "nic0": [], "nic1": []}
COLUMNS = ["tcpip", "NDIS", "team0", "NDIS", "nic0", "nic1"]


def hop(seq: int, layer: str, call: str, **kw: Any) -> dict[str, Any]:
    return {"seq": seq, "t_ns": 1000 * seq, "layer": layer, "call": call, **kw}


#: an offload to nic0, the MUX moving it to nic1 (terminate, initiate), a send on nic1
MOVED = [
    hop(1, "tcpip", "NdisInitiateOffload", handle=1),
    hop(2, "team0", "MiniportInitiateOffload"),
    hop(3, "team0", "NdisInitiateOffload", handle=2),
    hop(4, "nic0", "MiniportInitiateOffload"),
    hop(5, "nic0", "NdisMInitiateOffloadComplete"),
    hop(6, "team0", "ProtocolInitiateOffloadComplete", handle=2),
    hop(7, "team0", "NdisMInitiateOffloadComplete"),
    hop(8, "tcpip", "ProtocolInitiateOffloadComplete", handle=1),
    hop(9, "team0", "NdisTerminateOffload", handle=2),
    hop(10, "nic0", "MiniportTerminateOffload"),
    hop(11, "nic0", "NdisMTerminateOffloadComplete"),
    hop(12, "team0", "ProtocolTerminateOffloadComplete", handle=2),
    hop(13, "team0", "NdisInitiateOffload", handle=2),
    hop(14, "nic1", "MiniportInitiateOffload"),
    hop(15, "nic1", "NdisMInitiateOffloadComplete"),
    hop(16, "team0", "ProtocolInitiateOffloadComplete", handle=2),
    hop(17, "tcpip", "NdisOffloadTcpSend", handle=1, nbl=7),
    hop(18, "team0", "MiniportTcpOffloadSend", nbl=7),
    hop(19, "team0", "NdisOffloadTcpSend", handle=2, nbl=7),
    hop(20, "nic1", "MiniportTcpOffloadSend", nbl=7),
    hop(21, "nic1", "NdisTcpOffloadReceiveHandler", handle=2, nbl=8),
    hop(22, "team0", "ProtocolTcpOffloadReceiveIndicate", nbl=8),
    hop(23, "nic1", "NdisTcpOffloadReceiveHandler:return", nbl=8),
]


def test_the_hops_alone_put_each_nic_under_the_mux() -> None:
    lanes = ctl_trace.lanes_for(MOVED, ORDER)
    assert list(lanes) == ["tcpip", "team0", "nic0", "nic1"]
    assert lanes.upper == {"team0": "tcpip", "nic0": "team0", "nic1": "team0"}
    assert ctl_trace.columns(lanes) == COLUMNS
    assert ctl_trace.route(lanes) == "tcpip → team0 → (nic0 | nic1)"
    ends = {a.hop["seq"]: (a.src, a.dst) for a in ctl_trace.arrows(MOVED, lanes)}
    # the MUX reaches both NICs through the NDIS lane under it (column 3)
    assert ends[3] == (2, 3) and ends[4] == (3, 4)
    assert ends[13] == (2, 3) and ends[14] == (3, 5)
    assert ends[15] == (5, 3) and ends[16] == (3, 2)
    assert ends[19] == (2, 3) and ends[20] == (3, 5)
    assert ends[21] == (5, 3) and ends[22] == (3, 2)
    assert ends[23] == (3, 5)  # the indication's return, back to nic1


def test_a_cut_trace_takes_the_nics_place_from_the_topology() -> None:
    # the newest hops only: nic1 shows in a return, whose call was cut off
    cut = [MOVED[9], MOVED[10], MOVED[-1]]
    assert ctl_trace.lanes_for(cut, ORDER).upper["nic1"] == "nic0"  # nothing to say otherwise
    lanes = ctl_trace.lanes_for(cut, ORDER, LOWER)
    assert list(lanes) == ["nic0", "nic1"] and lanes.upper == {}
    lanes = ctl_trace.lanes_for([MOVED[2], *cut], ORDER, LOWER)
    assert lanes.upper == {"nic0": "team0", "nic1": "team0"}
    assert ctl_trace.columns(lanes) == ["team0", "NDIS", "nic0", "nic1"]
    assert [(a.src, a.dst) for a in ctl_trace.arrows(cut, lanes)] == [(1, 2), (2, 1), (1, 3)]


def test_a_layer_between_shown_ones_is_skipped_in_the_topology() -> None:
    lanes = ctl_trace.lanes_for([MOVED[0], MOVED[-1]], ORDER, LOWER)
    assert lanes.upper == {"nic1": "tcpip"}
    assert ctl_trace.columns(lanes) == ["tcpip", "NDIS", "nic1"]
