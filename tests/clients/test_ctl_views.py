"""chimneyctl's pure pieces: the trace picture's geometry and top's bounded connection sampling."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from chimney_client import ctl_trace
from chimney_client.ctl_live import ConnSampler, layer_rows
from chimney_client.errors import NotFound

LANES = ["tcpip", "im0", "nic0"]


def hop(seq: int, layer: str, call: str, **kw: Any) -> dict[str, Any]:
    return {"seq": seq, "t_ns": 1000 * seq, "layer": layer, "call": call, **kw}


#: rpc-contract "Example: the hops of one send", then an indication and its return.
SEND = [
    hop(1, "tcpip", "NdisOffloadTcpSend", handle=101, nbl=7),
    hop(2, "im0", "MiniportTcpOffloadSend", context=201, nbl=7),
    hop(3, "im0", "NdisOffloadTcpSend", handle=202, nbl=7),
    hop(4, "nic0", "MiniportTcpOffloadSend", context=301, nbl=7),
    hop(5, "nic0", "NdisTcpOffloadSendComplete", nbl=7, status="NDIS_STATUS_SUCCESS"),
    hop(6, "im0", "ProtocolTcpOffloadSendComplete", nbl=7, status="NDIS_STATUS_SUCCESS"),
    hop(7, "im0", "NdisTcpOffloadSendComplete", nbl=7, status="NDIS_STATUS_SUCCESS"),
    hop(8, "tcpip", "ProtocolTcpOffloadSendComplete", nbl=7, status="NDIS_STATUS_SUCCESS"),
    hop(9, "nic0", "NdisTcpOffloadReceiveHandler", handle=202, nbl=8),
    hop(10, "im0", "NdisTcpOffloadReceiveHandler:return", nbl=8, status="NDIS_STATUS_SUCCESS"),
    hop(11, "nic0", "NdisTcpOffloadEventHandler", handle=202, event="TcpIndicateDisconnect"),
]


def test_arrows_walk_the_seed_figure() -> None:
    # columns: tcpip 0, NDIS 1, im0 2, NDIS 3, nic0 4
    got = [(a.src, a.dst, a.style) for a in ctl_trace.arrows(SEND, LANES)]
    assert got == [
        (0, 1, "down"),
        (1, 2, "down"),
        (2, 3, "down"),
        (3, 4, "down"),
        (4, 3, "up"),
        (3, 2, "up"),
        (2, 1, "up"),
        (1, 0, "up"),
        (4, 3, "up"),
        (1, 2, "return"),
        (4, 3, "up"),
    ]


def test_lanes_follow_the_given_order() -> None:
    assert ctl_trace.lanes_for(SEND, ["tcpip", "team0", "im0", "nic1", "nic0"]) == LANES
    assert ctl_trace.columns(LANES) == ["tcpip", "NDIS", "im0", "NDIS", "nic0"]


def test_svg_escapes_text_and_draws_every_hop() -> None:
    hops = [*SEND, hop(12, "tcpip", "Ndis<&>\"Odd'", event="<script>")]
    doc = ctl_trace.render_svg(hops, LANES, title="a <b> & c")
    root = ET.fromstring(doc)  # well-formed despite the markup in the text
    ns = "{http://www.w3.org/2000/svg}"
    arrows = [g for g in root.iter(f"{ns}g") if g.get("class") == "hop"]
    assert len(arrows) == len(hops)
    assert arrows[-1].get("data-call") == "Ndis<&>\"Odd'"
    assert "<script>" in "".join(arrows[-1].itertext())


def test_mermaid_shape() -> None:
    text = ctl_trace.render_mermaid(SEND, LANES, title="conn 1; #2")
    lines = text.splitlines()
    assert lines[:2] == ["sequenceDiagram", "    title conn 1, no. 2"]
    assert lines[2:7] == [
        "    participant P0 as tcpip",
        "    participant P1 as NDIS",
        "    participant P2 as im0",
        "    participant P3 as NDIS",
        "    participant P4 as nic0",
    ]
    assert lines[7].startswith("    rect rgba(")
    assert lines[8].startswith("        P0->>P1: 1 NdisOffloadTcpSend (handle 101) · NBL 7")
    assert text.count("rect ") == text.count("    end")


class FakeClient:
    def __init__(self, sizes: dict[int, int]) -> None:
        self.sizes = sizes
        self.info_calls = 0

    def tcp_list(self) -> list[int]:
        return sorted(self.sizes)

    def tcp_info(self, conn: int) -> dict[str, Any]:
        self.info_calls += 1
        if conn not in self.sizes:
            raise NotFound(3, f"NOT_FOUND: no connection {conn}")
        return {"state": "offloaded", "bytes_sent": self.sizes[conn], "bytes_received": 0}


def test_conn_sampler_is_bounded_and_finds_the_busiest() -> None:
    client = FakeClient({c: c for c in range(1, 51)})  # conn 50 is the busiest
    sampler = ConnSampler(4)
    for step in range(30):
        before = client.info_calls
        top = sampler.refresh(client, float(step))  # type: ignore[arg-type]
        assert client.info_calls - before <= 4
    assert [r["conn"] for r in top] == [50, 49, 48, 47]
    client.sizes[3] = 10_000  # a connection gets busy: found within a few refreshes
    for step in range(30, 50):
        top = sampler.refresh(client, float(step))  # type: ignore[arg-type]
    assert top[0]["conn"] == 3 and top[0]["bytes_per_s"] is not None
    del client.sizes[3]
    assert 3 not in [r["conn"] for r in sampler.refresh(client, 51.0)]  # type: ignore[arg-type]


def test_layer_rates() -> None:
    before = {"layers": {"nic0": {"bytes_sent": 100, "calls": {"A": 1}}}}
    now = {
        "layers": {"nic0": {"bytes_sent": 300, "calls": {"A": 3, "B/NDIS_STATUS_FAILURE": 1}}},
        "engine": {"inbox": {"nic0": 2}},
    }
    (row,) = layer_rows(now, before, 2.0)
    assert (row["bytes_sent_per_s"], row["calls_per_s"], row["failed"], row["inbox"]) == (
        100.0,
        1.5,
        1,
        2,
    )
    (row,) = layer_rows(now, None, 2.0)
    assert row["bytes_sent_per_s"] is None
