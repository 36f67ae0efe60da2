"""`subscribe --count N` one-shot, with events split over socket reads in any way: it prints
exactly the first N (N=1 too); a subscription that ends before N prints what came and fails
with "got K of N events"."""

from __future__ import annotations

import argparse
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimney_client.blocking import Notification
from chimney_client.ctl import EventsTimeout, Session
from chimney_client.ctl_render import Output


class _Reads:
    """A client whose socket reads bring `reads` (lists of events) one at a time."""

    def __init__(self, reads: list[list[str]]) -> None:
        self.reads = [[Notification("tcp.event", [7, e, {}]) for e in r] for r in reads]
        self.notifications: list[Notification] = []

    def wait_notification(self, timeout: float | None = None) -> Notification | None:
        while not self.notifications and self.reads:
            self.notifications += self.reads.pop(0)
        return self.notifications.pop(0) if self.notifications else None


def _run(reads: list[list[str]], count: int) -> tuple[list[str], Exception | None]:
    out = io.StringIO()
    s = Session(argparse.Namespace(), Output(json_mode=False, file=out), interactive=False)
    s._client = _Reads(reads)  # type: ignore[assignment]
    error: Exception | None = None
    try:
        s.wait_events(count, None)
    except EventsTimeout as e:
        error = e
    s.print_events()  # what ends every command
    return out.getvalue().splitlines(), error


@given(
    reads=st.lists(st.lists(st.sampled_from(["offloaded", "uploaded", "closed"]), max_size=4)),
    count=st.integers(1, 8),
)
def test_exactly_n_events_however_they_are_read(reads: list[list[str]], count: int) -> None:
    events = [f"event conn 7: {e}" for r in reads for e in r]
    lines, error = _run(reads, count)
    assert lines == events[:count], (reads, count)
    if len(events) < count:
        assert str(error) == f"got {len(events)} of {count} events"
    else:
        assert error is None


@pytest.mark.parametrize("count", [1, 2])
def test_one_read_holding_more(count: int) -> None:
    lines, error = _run([["offloaded", "uploaded", "closed"], ["later"]], count)
    assert error is None and len(lines) == count, lines
