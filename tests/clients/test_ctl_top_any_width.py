"""`chimneyctl top` at any width from 20 to 200 columns and with any table contents (long layer
names, huge numbers, no layers, many connections): no cell is cut and no value is lost. The
full tables' cells were cut at 140-143 columns, where the compact ones would have fitted."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from chimney_client.ctl_live import _bytes, _num, render
from chimney_client.ctl_render import render_text

_NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=16)
_COUNTS = st.integers(0, 10**15)
_RATES = st.floats(0, 1e15, allow_nan=False)


@st.composite
def _frames(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(_NAMES, max_size=6, unique=True))
    layers = [
        {
            "layer": name,
            **{
                k: draw(_COUNTS)
                for k in ("offloads_active", "handles", "outstanding_nbls", "inbox", "failed")
            },
            **{k: draw(_COUNTS) for k in ("bytes_sent", "bytes_received", "calls")},
            **{k: draw(_RATES) for k in ("bytes_sent_per_s", "bytes_received_per_s")},
            "calls_per_s": draw(_RATES),
        }
        for name in names
    ]
    conns = [
        {
            "conn": draw(st.integers(1, 2**63)),
            "state": draw(st.sampled_from(["offloaded", "uploading", "host"])),
            "remote": "127.0.0.1:9000",
            "path": draw(st.lists(_NAMES, min_size=1, max_size=5)),
            **{k: draw(_COUNTS) for k in ("bytes_sent", "bytes_received")},
            "bytes_per_s": draw(_RATES),
        }
        for _ in range(draw(st.integers(0, 5)))
    ]
    return {
        "rpc": "127.0.0.1:7411",
        "interval": 1.0,
        "connections": draw(st.sampled_from([0, 1, 10_000, 10**12])),
        "rpc_clients": 3,
        "in_flight": 2,
        "tasks": 9,
        "invariant_violations": 0,
        "invariant_checker": True,
        "layers": layers,
        "conns": conns,
        "conns_visible": len(conns),
        "note": None,
    }


def _shown(frame: dict[str, Any], width: int) -> list[str]:
    console = Console(width=width, file=io.StringIO(), markup=False, highlight=False)
    return render_text(console, render(frame, width)).splitlines()


@settings(max_examples=150, deadline=None)
@given(frame=_frames(), width=st.integers(20, 200))
def test_no_cell_is_cut_at_any_width(frame: dict[str, Any], width: int) -> None:
    lines = _shown(frame, width)
    assert not [line for line in lines if "…" in line], f"a cell cut at {width}: {lines}"
    words = " ".join(lines).split()
    # a value longer than its line's room is folded over lines, never cut: compare unspaced
    text = "".join(words)
    for r in frame["layers"]:
        assert r["layer"] in text, f"layer {r['layer']!r} lost at {width}: {lines}"
        for value in (_num(r["offloads_active"]), _num(r["failed"]), _bytes(r["bytes_sent_per_s"])):
            assert value.replace(" ", "") in text, f"{value!r} lost at {width}: {lines}"
    for c in frame["conns"]:
        assert str(c["conn"]) in text, f"conn {c['conn']} lost at {width}: {lines}"
        assert "→".join(c["path"]) in text, f"a path lost at {width}: {lines}"


def test_the_full_tables_give_way_to_the_compact_ones_when_they_do_not_fit() -> None:
    """At 140 columns (TOP_WIDE) the full layer table of a busy stack is 144 wide: rich cut
    "bytes_sent" and "failed" to "bytes_se…" and "fail…"."""
    frame = {
        "rpc": "127.0.0.1:7411", "interval": 1.0, "connections": 1, "rpc_clients": 3,
        "in_flight": 2, "tasks": 9, "invariant_violations": 0, "invariant_checker": True,
        "layers": [
            {"layer": "filter0", "offloads_active": 1200, "handles": 3600,
             "outstanding_nbls": 17, "inbox": 0, "bytes_sent": 4_500_000,
             "bytes_sent_per_s": 147e6, "bytes_received": 4_500_000,
             "bytes_received_per_s": 147e6, "calls": 79_990, "calls_per_s": 0.0, "failed": 0}
        ],
        "conns": [], "conns_visible": 0, "note": None,
    }  # fmt: skip
    for width in (140, 141, 142, 143, 144):
        lines = _shown(frame, width)
        assert not [line for line in lines if "…" in line], f"a cell cut at {width}: {lines}"
        assert not [line for line in lines if len(line) > width], lines


def _one_layer(name: str, conn: int) -> dict[str, Any]:
    frame = {
        "rpc": "127.0.0.1:7411", "interval": 1.0, "connections": 1, "rpc_clients": 3,
        "in_flight": 2, "tasks": 9, "invariant_violations": 0, "invariant_checker": True,
        "layers": [
            {"layer": name, "offloads_active": 1200, "handles": 3600, "outstanding_nbls": 17,
             "inbox": 0, "bytes_sent": 0, "bytes_sent_per_s": 0.0, "bytes_received": 0,
             "bytes_received_per_s": 0.0, "calls": 0, "calls_per_s": 0.0, "failed": 0}
        ],
        "conns": [
            {"conn": conn, "state": "offloaded", "remote": "127.0.0.1:9000",
             "path": ["tcpip", "nic0"], "bytes_sent": 0, "bytes_received": 0, "bytes_per_s": 0.0}
        ],
        "conns_visible": 1, "note": None,
    }  # fmt: skip
    return frame


def test_a_long_connection_id_leaves_its_fields_room() -> None:
    """A 19-digit id at 20 columns left its fields one column, beyond the terminal: rich
    cropped every one of them to nothing."""
    lines = _shown(_one_layer("tcpip", 2**63 - 1), 20)
    assert str(2**63 - 1) in lines, lines
    words = " ".join(lines).split()
    for value in ("offloaded", "127.0.0.1:9000", "tcpip → nic0"):
        assert all(w in words for w in value.split()), f"{value!r} lost at 20: {lines}"
    assert all(len(line) <= 20 for line in lines), lines


def test_a_name_longer_than_the_terminal_is_folded_not_cropped() -> None:
    name = "filter_with_a_very_long_name0"
    lines = _shown(_one_layer(name, 7), 20)
    assert name in "".join(lines), f"{name} cropped at 20: {lines}"
