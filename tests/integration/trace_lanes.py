"""What a drawing of a connection's hops must show, whatever draws it (`chimneyctl trace --svg`
and `--mermaid`, the web view's sequence diagram): every arrow joins its layer's lane and the NDIS
lane its call passes through, on the path the connection took (spec §5.5, the seed's figure)."""

from __future__ import annotations

import itertools
from typing import Any

from chimney_client import ctl_trace


def expected_uppers(layers: list[dict[str, Any]]) -> dict[str, str]:
    """Layer -> the layer above it, from `stack.info`'s layers (each names its lower layers)."""
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
