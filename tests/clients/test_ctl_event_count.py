"""`chimneyctl subscribe '*' --count N` prints N events and stops: events read along with the
Nth (one socket read can hold several) were printed after it by the end-of-command flush, so
`--count 3` printed 4 when a connection's `uploaded` and `closed` came together."""

from __future__ import annotations

import argparse
import io

from chimney_client.blocking import Notification
from chimney_client.ctl import Session
from chimney_client.ctl_render import Output


class _Client:
    """Every notification arrived in one read: all in the buffer at the first wait."""

    def __init__(self, events: list[str]) -> None:
        self.notifications = [Notification("tcp.event", [7, e, {}]) for e in events]

    def wait_notification(self, timeout: float | None = None) -> Notification | None:
        return self.notifications.pop(0) if self.notifications else None


def _session(interactive: bool, events: list[str]) -> tuple[Session, io.StringIO]:
    out = io.StringIO()
    s = Session(argparse.Namespace(), Output(json_mode=False, file=out), interactive=interactive)
    s._client = _Client(events)  # type: ignore[assignment]
    return s, out


def test_a_one_shot_count_prints_that_many_events() -> None:
    s, out = _session(False, ["offloaded", "TcpIndicateSendBacklogChange", "uploaded", "closed"])
    assert s.wait_events(3, None) == 3
    s.print_events()  # what ends every command
    assert out.getvalue().splitlines() == [
        "event conn 7: offloaded",
        "event conn 7: TcpIndicateSendBacklogChange",
        "event conn 7: uploaded",
    ]


def test_in_a_run_the_later_events_still_print() -> None:
    s, out = _session(True, ["offloaded", "uploaded", "closed"])
    assert s.wait_events(1, None) == 1
    s.print_events()
    assert len(out.getvalue().splitlines()) == 3
