"""`chimneyctl watch` and `trace` in a terminal narrower than 80 columns (from WATCH_STACKED
down, a hop over two lines or three, tests/clients/test_ctl_watch_stacked.py): the call name gives
up its room before the status does, so a hop's status is never cut to `…` (the one value a
user reads a failed send by); a line that cannot hold it whole is longer than the terminal
rather than silent about it."""

from __future__ import annotations

import pytest

from chimney_client.ctl_live import WATCH_STACKED, WatchLayout

#: a failed send's completion and a receive with a long timestamp and handle, statuses whole
ROWS = [
    ["3", "2000.0", "nic0", "NdisTcpOffloadSendComplete", "", "", "1",
     "NDIS_STATUS_REQUEST_ABORTED"],
    ["3123", "123456789.0", "nic0", "NdisTcpOffloadSendComplete", "12345", "", "1",
     "NDIS_STATUS_INVALID_PARAMETER"],
]  # fmt: skip


@pytest.mark.parametrize("columns", [40, 50, 60, 70, 80])
def test_the_status_is_never_cut(columns: int) -> None:
    layout = WatchLayout(columns)
    for cells in ROWS:
        row = layout.row(list(cells))
        status = cells[7].removeprefix("NDIS_STATUS_")
        assert row.endswith(" " + status), f"status cut at {columns} columns: {row!r}"
        handle = 3 if layout.stacked else 4  # stacked, the call is on the next line
        assert row.split()[handle] == cells[4] or not cells[4], f"handle lost: {row!r}"


@pytest.mark.parametrize("columns", [WATCH_STACKED, 70, 80])
def test_the_call_gives_way_and_the_line_still_fits(columns: int) -> None:
    layout = WatchLayout(columns)
    row = layout.row(list(ROWS[0]))
    assert len(row) <= columns, row
    assert row.split()[3].startswith("NdisTcp"), row


def test_an_event_after_the_status_may_be_cut_but_not_the_status() -> None:
    layout = WatchLayout(WATCH_STACKED)
    row = layout.row(
        ["6", "1.0", "nic0", "NdisTcpOffloadEventHandler", "9", "", "", "NDIS_STATUS_SUCCESS",
         "TcpIndicateSendBacklogChange"]
    )  # fmt: skip
    assert " SUCCESS T" in row and len(row) <= WATCH_STACKED, row


@pytest.mark.parametrize("columns", [WATCH_STACKED, 70, 80])
def test_the_heading_stays_over_its_columns(columns: int) -> None:
    """The heading's last cell is a label, not a status: it is cut, and call keeps its width."""
    layout = WatchLayout(columns)
    heading = layout.heading()
    row = layout.row(
        ["1", "0.0", "tcpip", "NdisOffloadTcpSend", "3", "", "1", "NDIS_STATUS_SUCCESS"]
    )
    assert heading.index("hdl") == row.index(" 3 ") + 1, f"\n{heading}\n{row}"
