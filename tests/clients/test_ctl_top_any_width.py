"""`chimneyctl top` at TOP_WIDE columns and wider: the full tables' cells were cut at 140-143
columns, where the compact ones would have fitted."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from chimney_client.ctl_live import render
from chimney_client.ctl_render import render_text


def _shown(frame: dict[str, Any], width: int) -> list[str]:
    console = Console(width=width, file=io.StringIO(), markup=False, highlight=False)
    return render_text(console, render(frame, width)).splitlines()


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
