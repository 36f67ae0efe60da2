"""A connection's hop trace as a sequence diagram: SVG (written by hand, no dependency) and
Mermaid `sequenceDiagram` text (renders on GitHub).

The picture is the one in NDIS's "Propagating an I/O Operation": one lane per layer in path
order, an NDIS broker lane between a layer and the layers under it, and one arrow per hop. A
layer's `Ndis*` call goes from the layer to the NDIS lane on that side of it, and NDIS calls the
next layer's `Miniport*` (down) or `Protocol*` (up) handler. A connection a team moved between
NICs (spec §5.5) shows each NIC it used as a lane of its own after the MUX's NDIS lane. Calls
going down are solid, completions and indications coming back up dashed, the return of an
indication dotted. Each NBL has its own colour and its id on every arrow it rides, so the same
`NET_BUFFER_LIST` is visibly the same object from the host to the NIC and back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
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


def _handler(call: str) -> bool:
    """A handler NDIS runs in a layer (`Miniport*` going down, `Protocol*` coming up)."""
    return call.startswith(("Miniport", "Protocol")) and not call.endswith(RETURN_SUFFIX)


class Lanes(list[str]):
    """The layers of the picture, left to right, and the layer above each (`upper`): the path
    the connection took. A MUX's lower layers that the connection used (its NIC before and after
    a failover or a rebalance, spec §5.5) are siblings under the MUX, each one NDIS lane away
    from it, none under another. A plain list of names stands for one path, each layer under
    the one before it."""

    upper: dict[str, str]

    def __init__(self, names: Iterable[str] = (), upper: Mapping[str, str] | None = None) -> None:
        super().__init__(names)
        self.upper = dict(upper or {})


def _uppers(lanes: Sequence[str]) -> dict[str, str]:
    if isinstance(lanes, Lanes):
        return lanes.upper
    return {lower: upper for upper, lower in itertools.pairwise(lanes)}


def links(hops: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Layer -> the layer above it, as the hops show them: NDIS records a layer's `Ndis*` call
    and the handler it runs in the next layer as two consecutive hops (a chain: the call's hops,
    then the handler's), so the nearest earlier hop of another layer is the caller. A
    `Miniport*` handler runs below its caller, a `Protocol*` handler above it."""
    out: dict[str, str] = {}
    run = ""  # layer of the latest hops
    caller: tuple[str, str] | None = None  # (layer, call) of the last hop before that run
    last: tuple[str, str] | None = None
    for hop in hops:
        layer, call = str(hop.get("layer")), str(hop.get("call", ""))
        if layer != run:
            caller, run = last, layer
        last = (layer, call)
        if not _handler(call) or caller is None:
            continue
        by, made = caller
        if not made.startswith("Ndis") or made.endswith(RETURN_SUFFIX):
            continue  # not a call NDIS passed on (the trace starts mid-way, or a filtered one)
        upper, lower = (by, layer) if call.startswith("Miniport") else (layer, by)
        out.setdefault(lower, upper)
    return out


def lanes_for(
    hops: Sequence[Mapping[str, Any]],
    order: Sequence[str],
    lower: Mapping[str, Sequence[str]] | None = None,
) -> Lanes:
    """Layers of the picture: those of `order` (the connection's path, or the topology's layer
    order) that the hops name, then any others in order of appearance; each under the layer
    the hops show calling it, else its nearest upper in the topology (`lower`: each layer's
    lower layers, as `stack.info` gives them) that the picture shows (none: it heads the
    picture), else, for a layer the topology does not place, the one before it.
    Left to right depth first: a layer, then what sits under it, so a MUX's NICs follow it."""
    seen = [str(h.get("layer")) for h in hops]
    names = [name for name in order if name in seen]
    for name in seen:
        if name not in names:
            names.append(name)
    shown = set(names)
    topo: dict[str, str] = {}
    for name in order:
        for below in (lower or {}).get(name, ()):
            topo.setdefault(str(below), name)
    called = links(hops)
    upper: dict[str, str] = {}

    def above(name: str, cand: str | None) -> bool:
        # `cand` may sit above `name` unless that closes a loop
        node = cand
        while node is not None:
            if node == name:
                return False
            node = upper.get(node)
        return cand is not None

    known = set(topo) | set(lower or {})  # layers the topology places
    for i, name in enumerate(names):
        cand = called.get(name)
        if cand not in shown or not above(name, cand):
            if name in known:
                cand, passed = topo.get(name), {name}
                while cand is not None and cand not in shown and cand not in passed:
                    passed.add(cand)
                    cand = topo.get(cand)
            else:
                cand = names[i - 1] if i else None
            if cand not in shown or not above(name, cand):
                cand = None
        if cand is not None:
            upper[name] = cand
    out: list[str] = []

    def walk(name: str) -> None:
        out.append(name)
        for child in names:
            if upper.get(child) == name:
                walk(child)

    for name in names:
        if name not in upper:
            walk(name)
    return Lanes(out, upper)


def route(lanes: Sequence[str]) -> str:
    """The path in words: `tcpip → team0 → (nic0 | nic1)` for a connection that moved."""
    upper = _uppers(lanes)

    def walk(name: str) -> str:
        below = [child for child in lanes if upper.get(child) == name]
        if not below:
            return name
        if len(below) == 1:
            return f"{name} → {walk(below[0])}"
        return f"{name} → ({' | '.join(walk(child) for child in below)})"

    return " · ".join(walk(name) for name in lanes if name not in upper)


@dataclass(frozen=True)
class _Geometry:
    columns: list[str]  # lane titles left to right
    uppers: list[str | None]  # per column: a layer's upper; an NDIS lane's layer above it
    col: dict[str, int]  # layer -> its column
    ndis_below: dict[str, int]  # layer -> the NDIS lane between it and the layers under it
    upper: dict[str, str]


def _geometry(lanes: Sequence[str]) -> _Geometry:
    upper = _uppers(lanes)
    parents = set(upper.values())
    cols: list[str] = []
    ups: list[str | None] = []
    col: dict[str, int] = {}
    below: dict[str, int] = {}
    for name in lanes:
        col[name] = len(cols)
        cols.append(name)
        ups.append(upper.get(name))
        if name in parents:  # one NDIS lane between a layer and every layer under it
            below[name] = len(cols)
            cols.append("NDIS")
            ups.append(name)
    return _Geometry(cols, ups, col, below, upper)


def columns(lanes: Sequence[str]) -> list[str]:
    """Lane titles left to right: each layer, and an NDIS lane between a layer and the layers
    under it (siblings under a MUX share it: one broker binds the MUX to each)."""
    return _geometry(lanes).columns


def arrows(hops: Iterable[Mapping[str, Any]], lanes: Sequence[str]) -> list[Arrow]:
    """Where each hop goes: between its layer's lane and the NDIS lane on the side the call
    goes to or came from, the one towards the layer above it (`Lanes.upper`) or the one under
    it. `layer` is whose code runs the call (contract: trace.get)."""
    return _arrows(hops, _geometry(lanes))


def _arrows(hops: Iterable[Mapping[str, Any]], geo: _Geometry) -> list[Arrow]:
    out = []
    for hop in hops:
        layer = str(hop.get("layer"))
        col = geo.col[layer]
        up = geo.upper.get(layer)
        above = geo.ndis_below.get(up) if up is not None else None
        below = geo.ndis_below.get(layer)
        call = str(hop.get("call", ""))
        returning = call.endswith(RETURN_SUFFIX)
        base = call[: -len(RETURN_SUFFIX)] if returning else call
        down = going_down(base)
        handler = base.startswith(("Miniport", "Protocol"))
        # NDIS calls this layer's handler from the NDIS lane on the side the call came from (a
        # `Miniport*` handler from above); the layer calls NDIS on the side the call goes to
        other = above if down == handler else below
        if other is None:
            src = dst = col  # no lane that side (e.g. a host's own call): a note on its lane
        elif handler != returning:  # a return goes back the way its call came
            src, dst = other, col
        else:
            src, dst = col, other
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


def _label_x(x: Callable[[int], float], arrow: Arrow) -> float:
    """Where an arrow's text is centred: mid-way, or, over a sibling's lane (the NDIS lane
    under a MUX to its second NIC), in the last gap, so no text sits on a lane it skips."""
    lo, hi = sorted((arrow.src, arrow.dst))
    return (x(max(lo, hi - 1)) + x(hi)) / 2


def render_svg(hops: Sequence[Mapping[str, Any]], lanes: Sequence[str], title: str = "") -> str:
    """An SVG document: lane heads, lifelines, one `<g class="hop">` per hop, a legend. Each
    lane head names the layer above it (`data-upper`): for an NDIS lane, the layer it passes
    calls down from."""
    geo = _geometry(lanes)
    cols = geo.columns
    ndis_cols = set(geo.ndis_below.values())
    drawn = _arrows(hops, geo)
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
        ndis = i in ndis_cols
        cx = x(i)
        up = geo.uppers[i]
        upper = f" data-upper={quoteattr(up)}" if up is not None else ""
        out.append(
            f'<g class="lane" data-name={quoteattr(name)} data-kind="{"ndis" if ndis else "layer"}"'
            f"{upper}>"
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
        mid = _label_x(x, arrow)
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
    geo = _geometry(lanes)
    cols = geo.columns
    drawn = _arrows(hops, geo)
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
