"""`chimneyctl trace --svg/--mermaid` of a connection that moved between the NICs of a team
(deploy/teaming.toml): each NIC it used is a lane of its own under the MUX, and every arrow
joins the lanes of the layer and the NDIS lane its call passes through (spec §5.5, the seed's
figure), whichever NIC it was on."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from chimney_client import ctl_trace
from chimneyd.config import load_config
from tests.integration.support import eventually

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


def expected_uppers(layers: list[dict[str, Any]]) -> dict[str, str]:
    return {str(lo): la["name"] for la in layers for lo in la.get("lower") or []}


def check_geometry(
    hops: list[dict[str, Any]],
    lanes: list[tuple[str, float]],
    ends: dict[int, tuple[float, float]],
    upper: dict[str, str],
) -> None:
    """`lanes`: (title, position) left to right; `ends`: seq -> where its arrow starts and ends.
    Every hop touches its own layer's lane and, unless it is a note on that lane, one NDIS lane;
    a layer reaches the layer above it through the same NDIS lane the upper one reaches down
    through (siblings under a MUX share it); the two hops of one NDIS call meet on it."""
    at = {name: pos for name, pos in lanes if name != "NDIS"}
    assert len(at) == len([n for n, _ in lanes if n != "NDIS"]), f"a layer twice: {lanes}"
    ndis = {pos for name, pos in lanes if name == "NDIS"}
    above: dict[str, set[float]] = {}
    below: dict[str, set[float]] = {}
    for hop in hops:
        layer, call = hop["layer"], hop["call"]
        src, dst = ends[hop["seq"]]
        own = at[layer]
        assert own in (src, dst), f"hop {hop['seq']} {layer} {call} not on its lane: {src}->{dst}"
        other = dst if src == own else src
        if other == own:
            continue  # a note on its own lane
        assert other in ndis, f"hop {hop['seq']} {layer} {call} ends on a layer's lane"
        base = call.removesuffix(ctl_trace.RETURN_SUFFIX)
        handler = base.startswith(("Miniport", "Protocol"))
        towards_upper = ctl_trace.going_down(base) == handler
        (above if towards_upper else below).setdefault(layer, set()).add(other)
    for layer, through in above.items():
        assert len(through) == 1, f"{layer} reaches up through more than one NDIS lane"
        assert through == below[upper[layer]], (
            f"{layer} meets {upper[layer]} on no common NDIS lane: {through} vs "
            f"{below[upper[layer]]}"
        )
        lo, hi = sorted((at[upper[layer]], at[layer]))
        assert lo < next(iter(through)) < hi, f"the NDIS lane above {layer} is not between them"
    for layer, through in below.items():
        assert len(through) == 1, f"{layer} reaches down through more than one NDIS lane"
    # the two hops NDIS records for one call: the caller's arrow ends where the handler's starts
    for first, second in itertools.pairwise(hops):
        if (
            first["layer"] != second["layer"]
            and first["call"].startswith("Ndis")
            and not first["call"].endswith(ctl_trace.RETURN_SUFFIX)
            and second["call"].startswith(("Miniport", "Protocol"))
        ):
            assert ends[first["seq"]][1] == ends[second["seq"]][0], (
                f"hops {first['seq']} and {second['seq']} do not meet"
            )


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
