"""A connection's hop trace as a sequence diagram: SVG (written by hand, no dependency) and
Mermaid `sequenceDiagram` text (renders on GitHub).

The picture is the seed's figure ("Propagating an I/O Operation"): one lane per layer in path
order, an NDIS broker lane between each two adjacent layers, and one arrow per hop. A layer's
`Ndis*` call goes from the layer to the NDIS lane next to it, and NDIS calls the next layer's
`Miniport*` (down) or `Protocol*` (up) handler. Calls going down are solid, completions and
indications coming back up dashed, the return of an indication dotted. Each NBL has its own colour
and its id on every arrow it rides, so the same `NET_BUFFER_LIST` is visibly the same object from
the host to the NIC and back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

#: `Ndis*` functions a protocol edge calls towards the layer below (spec §3, §4).
_DOWN_NDIS = (
    "NdisOffloadTcp",
    "NdisInitiateOffload",
    "NdisTerminateOffload",
    "NdisUpdateOffload",
    "NdisQueryOffloadState",
    "NdisInvalidateOffload",
)
RETURN_SUFFIX = ":return"

#: Distinct colours for NBL ids (Okabe-Ito and Tableau, readable on white).
PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#8C564B",
    "#7F7F7F",
    "#BCBD22",
    "#17BECF",
)
NO_NBL_COLOUR = "#333333"


@dataclass(frozen=True)
class Arrow:
    """One hop drawn between two lanes (`src == dst`: a note on one lane)."""

    hop: Mapping[str, Any]
    src: int
    dst: int
    style: str  # "down" | "up" | "return"

    @property
    def nbl(self) -> int | None:
        nbl = self.hop.get("nbl")
        return nbl if isinstance(nbl, int) else None


def going_down(call: str) -> bool:
    """Whether a call travels down the stack (towards the NIC)."""
    if call.startswith("Miniport"):
        return True
    if call.startswith("Protocol"):
        return False
    return call.startswith(_DOWN_NDIS)


def lanes_for(hops: Sequence[Mapping[str, Any]], order: Sequence[str]) -> list[str]:
    """Layers of the picture, top to bottom: those of `order` (the connection's path, or the
    topology's layer order) that the hops name, then any others in order of appearance."""
    seen = [str(h.get("layer")) for h in hops]
    lanes = [name for name in order if name in seen]
    for name in seen:
        if name not in lanes:
            lanes.append(name)
    return lanes


def columns(lanes: Sequence[str]) -> list[str]:
    """Lane titles left to right: each layer, with an NDIS lane between two adjacent layers."""
    out: list[str] = []
    for i, name in enumerate(lanes):
        if i:
            out.append("NDIS")
        out.append(name)
    return out


def arrows(hops: Iterable[Mapping[str, Any]], lanes: Sequence[str]) -> list[Arrow]:
    """Where each hop goes. Layer i sits in column 2i; the NDIS lane above it in 2i-1 and the one
    below it in 2i+1. `layer` is whose code runs the call (contract: trace.get)."""
    index = {name: i for i, name in enumerate(lanes)}
    last = 2 * (len(lanes) - 1)
    out = []
    for hop in hops:
        col = 2 * index[str(hop.get("layer"))]
        call = str(hop.get("call", ""))
        returning = call.endswith(RETURN_SUFFIX)
        base = call[: -len(RETURN_SUFFIX)] if returning else call
        down = going_down(base)
        if base.startswith(("Miniport", "Protocol")):
            # NDIS calls this layer's handler from the NDIS lane on the side the call came from
            other = col - 1 if down else col + 1
            src, dst = other, col
        else:
            # the layer calls NDIS, on the side the call goes to
            other = col + 1 if down else col - 1
            src, dst = col, other
        if not 0 <= other <= last:
            src = dst = col  # no lane that side (e.g. a host's own call): a note on its lane
        if returning:
            src, dst = dst, src
        out.append(Arrow(hop, src, dst, "return" if returning else "down" if down else "up"))
    return out


def nbl_colours(hops: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """One colour per NBL id, in order of first appearance."""
    colours: dict[int, str] = {}
    for hop in hops:
        nbl = hop.get("nbl")
        if isinstance(nbl, int) and nbl not in colours:
            colours[nbl] = PALETTE[len(colours) % len(PALETTE)]
    return colours


def _short_status(status: str) -> str:
    return status.removeprefix("NDIS_STATUS_")


def hop_label(hop: Mapping[str, Any]) -> str:
    """The call with what the layer sees: its handle (Ndis* calls, indications) or the context it
    received (Miniport* handlers)."""
    text = str(hop.get("call", ""))
    if hop.get("handle") is not None:
        text += f" (handle {hop['handle']})"
    if hop.get("context") is not None:
        text += f" (context {hop['context']})"
    return text


def hop_detail(hop: Mapping[str, Any]) -> str:
    """The second line of an arrow: status and event (the NBL id has its own badge)."""
    parts = []
    if hop.get("status"):
        parts.append(_short_status(str(hop["status"])))
    if hop.get("event"):
        parts.append(str(hop["event"]))
    return " · ".join(parts)


def rel_time(hop: Mapping[str, Any], t0: int | None) -> str:
    tn = hop.get("t_ns")
    if not isinstance(tn, int) or not isinstance(t0, int):
        return ""
    us = (tn - t0) / 1000
    return f"+{us / 1000:.3f} ms" if us >= 1000 else f"+{us:.1f} µs"


# ================================================================================================
# SVG
# ================================================================================================
LANE_GAP = 250  # between two columns
MARGIN_LEFT = 120  # seq and time
TOP = 70  # title and lane heads
ROW = 44
FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"


def render_svg(hops: Sequence[Mapping[str, Any]], lanes: Sequence[str], title: str = "") -> str:
    """An SVG document: lane heads, lifelines, one `<g class="hop">` per hop, a legend."""
    cols = columns(lanes)
    drawn = arrows(hops, lanes)
    colours = nbl_colours(hops)
    t0 = hops[0].get("t_ns") if hops else None
    width = MARGIN_LEFT + LANE_GAP * max(len(cols) - 1, 0) + 200
    legend_rows = 2 + (len(colours) + 5) // 6
    height = TOP + ROW * len(drawn) + 30 + 18 * legend_rows

    def x(col: int) -> float:
        return MARGIN_LEFT + 80 + LANE_GAP * col

    out: list[str] = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family={quoteattr(FONT)} font-size="11">',
        f"<title>{escape(title or 'chimneyd hop trace')}</title>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="12" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
        f'<text x="12" y="{TOP - 12}" fill="#666">seq  time</text>',
    ]
    bottom = TOP + ROW * len(drawn) + 10
    for i, name in enumerate(cols):
        ndis = i % 2 == 1
        cx = x(i)
        out.append(
            f'<g class="lane" data-name={quoteattr(name)} data-kind="{"ndis" if ndis else "layer"}">'
            f'<rect x="{cx - 55}" y="{TOP - 42}" width="110" height="24" rx="4" '
            f'fill="{"#eeeeee" if ndis else "#dde8f5"}" stroke="#888"/>'
            f'<text x="{cx}" y="{TOP - 26}" text-anchor="middle" font-weight="bold">'
            f"{escape(name)}</text>"
            f'<line x1="{cx}" y1="{TOP - 18}" x2="{cx}" y2="{bottom}" stroke="#aaa" '
            f'stroke-dasharray="{"2,4" if ndis else "6,4"}"/></g>'
        )
    for row, arrow in enumerate(drawn):
        hop = arrow.hop
        y = TOP + ROW * row + 22
        colour = colours.get(arrow.nbl, NO_NBL_COLOUR) if arrow.nbl else NO_NBL_COLOUR
        dash = {"down": "", "up": ' stroke-dasharray="7,4"', "return": ' stroke-dasharray="2,3"'}[
            arrow.style
        ]
        x1, x2 = x(arrow.src), x(arrow.dst)
        mid = (x1 + x2) / 2
        attrs = (
            f'class="hop" data-seq={quoteattr(str(hop.get("seq", "")))} '
            f"data-layer={quoteattr(str(hop.get('layer', '')))} "
            f'data-call={quoteattr(str(hop.get("call", "")))} data-style="{arrow.style}"'
        )
        if arrow.nbl is not None:
            attrs += f' data-nbl="{arrow.nbl}"'
        parts = [f"<g {attrs}>", f"<title>{escape(_tooltip(hop))}</title>"]
        parts.append(
            f'<text x="12" y="{y + 4}" fill="#666">{escape(str(hop.get("seq", "")))}</text>'
            f'<text x="44" y="{y + 4}" fill="#666">{escape(rel_time(hop, t0))}</text>'
        )
        if x1 == x2:  # a note on one lane
            parts.append(
                f'<path d="M{x1} {y - 6} h30 v12 h-30" fill="none" stroke="{colour}" '
                f'stroke-width="1.6"{dash}/>'
            )
            mid = x1 + 40
            anchor = "start"
        else:
            head = -8 if x2 > x1 else 8
            parts.append(
                f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{colour}" '
                f'stroke-width="1.6"{dash}/>'
                f'<polygon points="{x2},{y} {x2 + head},{y - 4} {x2 + head},{y + 4}" '
                f'fill="{colour}"/>'
            )
            anchor = "middle"
        parts.append(
            f'<text x="{mid}" y="{y - 6}" text-anchor="{anchor}">{escape(hop_label(hop))}</text>'
        )
        detail = hop_detail(hop)
        below = []
        if arrow.nbl is not None:
            below.append(
                f'<tspan class="nbl" fill="{colour}" font-weight="bold">NBL {arrow.nbl}</tspan>'
            )
        if detail:
            below.append(f'<tspan fill="#444">{escape(detail)}</tspan>')
        if below:
            parts.append(
                f'<text x="{mid}" y="{y + 14}" text-anchor="{anchor}" xml:space="preserve">'
                + '<tspan fill="#444"> · </tspan>'.join(below)
                + "</text>"
            )
        parts.append("</g>")
        out.append("".join(parts))
    ly = bottom + 24
    out.append(
        f'<g class="legend"><text x="12" y="{ly}" fill="#444">solid: call going down · '
        "dashed: completion or indication going up · dotted: an indication's return · "
        "one colour per NET_BUFFER_LIST</text>"
    )
    for i, (nbl, colour) in enumerate(colours.items()):
        lx = 12 + 110 * (i % 6)
        lyy = ly + 18 * (1 + i // 6)
        out.append(
            f'<rect x="{lx}" y="{lyy - 9}" width="18" height="10" fill="{colour}"/>'
            f'<text x="{lx + 24}" y="{lyy}">NBL {nbl}</text>'
        )
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


def _tooltip(hop: Mapping[str, Any]) -> str:
    keys = ("seq", "layer", "call", "handle", "context", "nbl", "status", "event", "t_ns")
    return " ".join(f"{k}={hop[k]}" for k in keys if hop.get(k) is not None)


# ================================================================================================
# Mermaid
# ================================================================================================
_MERMAID_ARROW = {"down": "->>", "up": "-->>", "return": "--)"}


def _mermaid_text(text: str) -> str:
    # `;` ends a statement and `#` starts an entity code in Mermaid message text
    return text.replace(";", ",").replace("#", "no. ").replace("\n", " ")


def _rgba(colour: str, alpha: float) -> str:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def render_mermaid(hops: Sequence[Mapping[str, Any]], lanes: Sequence[str], title: str = "") -> str:
    """`sequenceDiagram` text: the same lanes and arrows; each run of hops carrying one NBL sits
    in a `rect` of that NBL's colour."""
    cols = columns(lanes)
    drawn = arrows(hops, lanes)
    colours = nbl_colours(hops)
    t0 = hops[0].get("t_ns") if hops else None
    lines = ["sequenceDiagram"]
    if title:
        lines.append(f"    title {_mermaid_text(title)}")
    for i, name in enumerate(cols):
        lines.append(f"    participant P{i} as {_mermaid_text(name)}")
    open_nbl: int | None = None
    for arrow in drawn:
        if arrow.nbl != open_nbl:
            if open_nbl is not None:
                lines.append("    end")
            if arrow.nbl is not None:
                lines.append(f"    rect {_rgba(colours[arrow.nbl], 0.12)}")
            open_nbl = arrow.nbl
        hop = arrow.hop
        text = f"{hop.get('seq', '')} {hop_label(hop)}"
        if arrow.nbl is not None:
            text += f" · NBL {arrow.nbl}"
        if detail := hop_detail(hop):
            text += f" · {detail}"
        if t := rel_time(hop, t0):
            text += f" · {t}"
        indent = "        " if open_nbl is not None else "    "
        lines.append(
            f"{indent}P{arrow.src}{_MERMAID_ARROW[arrow.style]}P{arrow.dst}: {_mermaid_text(text)}"
        )
    if open_nbl is not None:
        lines.append("    end")
    return "\n".join(lines) + "\n"
