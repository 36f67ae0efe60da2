"""`chimneyctl trace --svg/--mermaid` of a connection that moved between the NICs of a team
(deploy/teaming.toml): each NIC it used is a lane of its own under the MUX, and every arrow
joins the lanes of the layer and the NDIS lane its call passes through (spec §5.5, the seed's
figure), whichever NIC it was on."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from chimney_client import ctl_trace
from chimneyd.config import load_config
from tests.integration.support import eventually
from tests.integration.trace_lanes import check_geometry, expected_uppers

TEAMING = Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml"
SVG = "{http://www.w3.org/2000/svg}"


async def moved_twice(make_engine: Any, echo_port: int) -> tuple[Any, int, list[str]]:
    """A connection offloaded to one NIC, moved by a `nic_down` to a second, then to a third;
    data echoed on each. Returns the engine, the connection and its NICs in the order used."""
    engine = await make_engine(load_config(TEAMING).layers, trace_depth=4096)
    conn = await engine.connect("127.0.0.1", echo_port)
    used: list[str] = []
    faults = []
    for round_ in range(3):
        if used:
            faults.append(engine.fault_inject({"kind": "nic_down", "layer": used[-1]}))
            await eventually(
                lambda: (
                    engine.conn_info(conn)["path"][-1] not in used
                    and engine.conn_info(conn)["state"] == "offloaded"
                ),
                "the connection moved to another NIC",
            )
        used.append(engine.conn_info(conn)["path"][-1])
        data = f"on {used[-1]}, round {round_}".encode() * 50
        assert await engine.send(conn, data) == len(data)
        assert await engine.recv(conn, len(data), 5.0, True) == data
    for fault in faults:
        engine.fault_clear(fault)
    return engine, conn, used


def lifeline(lane: ET.Element) -> ET.Element:
    line = lane.find(f"{SVG}line")
    assert line is not None
    return line


async def test_a_moved_connection_draws_each_nic_as_a_lane_under_the_mux(
    make_engine: Any, echo_port: int, tmp_path: Path
) -> None:
    engine, conn, used = await moved_twice(make_engine, echo_port)
    hops = engine.trace(conn, None)
    assert {h["layer"] for h in hops} >= {"tcpip", "filter0", "team0", *used}
    layers = engine.info()["layers"]
    order = [la["name"] for la in layers]
    lower = {la["name"]: la.get("lower") or [] for la in layers}
    upper = expected_uppers(layers)
    nics = [n for n in order if n in used]  # the topology's order
    want = ["tcpip", "NDIS", "filter0", "NDIS", "team0", "NDIS", *nics]

    # what the hops show of who calls whom is enough; the topology gives the same picture
    for lanes in (ctl_trace.lanes_for(hops, order, lower), ctl_trace.lanes_for(hops, order)):
        assert ctl_trace.columns(lanes) == want
        assert ctl_trace.route(lanes) == f"tcpip → filter0 → team0 → ({' | '.join(nics)})"
    lanes = ctl_trace.lanes_for(hops, order, lower)

    # SVG
    root = ET.fromstring(ctl_trace.render_svg(hops, lanes, "moved"))
    heads = [g for g in root.iter(f"{SVG}g") if g.get("class") == "lane"]
    svg_lanes = [(str(g.get("data-name")), float(str(lifeline(g).get("x1")))) for g in heads]
    assert [name for name, _ in svg_lanes] == want
    assert {
        g.get("data-name"): g.get("data-upper") for g in heads if g.get("data-kind") == "layer"
    } == {
        "tcpip": None,
        "filter0": "tcpip",
        "team0": "filter0",
        **dict.fromkeys(nics, "team0"),
    }
    lane_xs = {x for _, x in svg_lanes}
    ends: dict[int, tuple[float, float]] = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class") != "hop":
            continue
        seq = int(str(g.get("data-seq")))
        line = g.find(f"{SVG}line")
        if line is None:  # a note: a bracket on one lane
            path = g.find(f"{SVG}path")
            assert path is not None
            x0 = float(str(path.get("d")).split()[0][1:])
            ends[seq] = (x0, x0)
        else:
            ends[seq] = (float(str(line.get("x1"))), float(str(line.get("x2"))))
            tip = g.find(f"{SVG}polygon")
            assert tip is not None and float(str(tip.get("points")).split(",")[0]) == ends[seq][1]
        for text in g.iter(f"{SVG}text"):  # no text on a lane, least of all one it skips
            assert float(str(text.get("x"))) not in lane_xs, f"hop {seq}'s text sits on a lane"
    assert sorted(ends) == [h["seq"] for h in hops]
    check_geometry(hops, svg_lanes, ends, upper)

    # Mermaid: one participant per lane, in the same order; arrows between them
    text = ctl_trace.render_mermaid(hops, lanes, "moved")
    participants = re.findall(r"^ {4}participant P(\d+) as (.+)$", text, re.M)
    assert [name for _, name in participants] == want
    assert [int(i) for i, _ in participants] == list(range(len(want)))
    arrows = re.findall(r"^\s+P(\d+)(?:->>|-->>|--\))P(\d+): (\d+) ", text, re.M)
    assert len(arrows) == len(hops)
    m_ends = {int(seq): (float(a), float(b)) for a, b, seq in arrows}
    check_geometry(hops, [(n, float(i)) for i, n in participants], m_ends, upper)
