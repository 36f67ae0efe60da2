"""The README's sequence diagrams are drawn by `make figure` from a real run, not by hand: the
committed files have exactly the shape that drawing them again gives (times, handles and ids
aside), and the README shows them."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.docs.mdcheck import ROOT
from tests.docs.seed_figure import FILES, draw

FIGURES = ROOT / "docs" / "figures"
SVG = "{http://www.w3.org/2000/svg}"

#: the seed's figure: one send's NBL down every layer, its completion back up
SEED = [
    ("tcpip", "NdisOffloadTcpSend", "down"),
    ("im0", "MiniportTcpOffloadSend", "down"),
    ("im0", "NdisOffloadTcpSend", "down"),
    ("nic0", "MiniportTcpOffloadSend", "down"),
    ("nic0", "NdisTcpOffloadSendComplete", "up"),
    ("im0", "ProtocolTcpOffloadSendComplete", "up"),
    ("im0", "NdisTcpOffloadSendComplete", "up"),
    ("tcpip", "ProtocolTcpOffloadSendComplete", "up"),
]

#: the echo's road up: indicated, and the indicated NBL returned (spec §4.3) ...
INDICATED = {
    "NdisTcpOffloadReceiveHandler",
    "ProtocolTcpOffloadReceiveIndicate",
    "NdisTcpOffloadReceiveHandler:return",
    "NdisOffloadTcpReceiveReturn",
    "MiniportTcpOffloadReceiveReturn",
}
#: ... not into a receive request the host posted (spec §4.2), which no figure shows
POSTED = {
    "NdisOffloadTcpReceive",
    "MiniportTcpOffloadReceive",
    "NdisTcpOffloadReceiveComplete",
    "ProtocolTcpOffloadReceiveComplete",
}
BACKLOG_EVENT = {"NdisTcpOffloadEventHandler", "ProtocolTcpOffloadEvent"}


def svg_shape(path: Path) -> tuple[list[str], list[tuple[str, str, str]], set[str]]:
    """(lanes, hops as (layer, call, style), NBL ids) of a `chimneyctl trace --svg` file."""
    root = ET.parse(path).getroot()
    lanes = [g.get("data-name", "") for g in root.iter(f"{SVG}g") if g.get("class") == "lane"]
    hops = [g for g in root.iter(f"{SVG}g") if g.get("class") == "hop"]
    steps = [
        (g.get("data-layer", ""), g.get("data-call", ""), g.get("data-style", "")) for g in hops
    ]
    return lanes, steps, {g.get("data-nbl", "") for g in hops if g.get("data-nbl")}


def mermaid_shape(path: Path) -> list[str]:
    """The diagram's lines with every number made N, and each hop's time since the first
    (`+12 µs`, `+1.3 ms`) made T: its unit follows the time, which a loaded machine moves."""
    lines = path.read_text().splitlines()
    return [re.sub(r"[\d.]+", "N", re.sub(r"\+[\d.]+ (?:ns|µs|ms|s)\b", "T", x)) for x in lines]


def test_the_readme_shows_the_figures_make_figure_draws() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "![" in readme and "](docs/figures/send.svg)" in readme
    assert "(docs/figures/conn.svg)" in readme and "make figure" in readme
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\nfigure:") :].split("\n\n")[0]
    assert "-m tests.docs.seed_figure docs/figures" in recipe
    for name in FILES:
        assert (FIGURES / name).is_file(), name


def test_the_committed_figures_are_what_a_run_draws(tmp_path: Path) -> None:
    draw(tmp_path)
    lanes, steps, nbls = svg_shape(FIGURES / "send.svg")
    assert lanes == ["tcpip", "NDIS", "im0", "NDIS", "nic0"]
    assert steps == SEED and len(nbls) == 1  # one NBL, the same object all the way
    assert svg_shape(tmp_path / "send.svg") == (lanes, steps, nbls)
    assert mermaid_shape(FIGURES / "send.mmd") == mermaid_shape(tmp_path / "send.mmd")

    lanes, steps, nbls = svg_shape(FIGURES / "conn.svg")
    again = svg_shape(tmp_path / "conn.svg")
    assert again[0] == lanes
    assert steps[:8] == again[1][:8]  # the offload, down and back up
    # The echo comes up as a receive indication in every run: the seed reads it only after
    # that (a `recv` posted first would be filled instead, spec §4.4). The one choice timing
    # still makes: the target reports its send backlog (an event) only when the send waited
    # for its acknowledgement (spec §5.3). The echo's hops may also interleave otherwise.
    drawn = {call for _, call, _ in again[1]}
    calls = {call for _, call, _ in steps}
    assert drawn >= INDICATED, INDICATED - drawn
    assert not drawn & POSTED, drawn & POSTED
    assert drawn <= calls, drawn - calls
    assert calls - drawn <= BACKLOG_EVENT, calls - drawn
    assert set(SEED) <= set(again[1])
    assert len(nbls) == 2 and len(again[2]) == 2  # the send and the echo's receive indication
    assert {"NdisInitiateOffload"} | INDICATED <= calls and not calls & POSTED
    assert set(SEED) <= set(steps)
