"""`chimneyctl watch` (and trace) in a terminal from 20 to 67 columns, a tmux pane's: every
line fits and no name is cut. Below 40 the stacked hop cut its call ("NdisOffloadTcp…" at
20) and its event, and below 34 its first line (seq, t, layer, hdl, ctx, nbl) ran past the
terminal, which wrapped it out of its columns."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimney_client.ctl_live import WATCH_STACKED, WatchLayout
from tests.clients.test_ctl_watch_width import HOPS, _Tty, _watch

_NAMES = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz:_", min_size=1, max_size=40)


@pytest.mark.parametrize("columns", [20, 25, 30, 33, 34, 39])
def test_a_narrow_pane_cuts_nothing(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    lines = _watch(_Tty())
    too_wide = [(len(line), line) for line in lines if len(line) > columns]
    assert not too_wide, f"lines wider than the terminal's {columns} columns: {too_wide}"
    assert "…" not in "\n".join(lines), f"a cell cut at {columns} columns: {lines}"
    text = "".join("".join(lines).split())
    for h in HOPS:
        assert h["call"] in text, f"{h['call']} lost at {columns} columns: {lines}"
    for name in ("REQUEST_ABORTED", "TcpIndicateSendBacklogChange"):
        assert name in text, f"{name} lost at {columns} columns: {lines}"
    assert lines[-1] == "conn 7: closed"


@given(
    columns=st.integers(20, WATCH_STACKED - 1),
    call=_NAMES,
    last=st.one_of(st.just(""), _NAMES),
    ids=st.lists(st.sampled_from(["", "1", "12", "123", "4096"]), min_size=3, max_size=3),
)
def test_a_stacked_hop_fits_and_keeps_every_name(
    columns: int, call: str, last: str, ids: list[str]
) -> None:
    layout = WatchLayout(columns)
    row = layout.row(["4", "3000.0", "nic0", call, *ids, "", last]).splitlines()
    assert all(len(line) <= columns for line in row), row
    text = "".join("".join(row).split())
    assert call in text and last in text and "…" not in text, row
    heading = layout.heading().splitlines()
    assert all(len(line) <= columns for line in heading), heading
