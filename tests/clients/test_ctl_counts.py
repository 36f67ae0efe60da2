"""chimneyctl refuses a negative count, limit, wait or size on its command line as a usage
error (exit 2), before anything is sent, as it does for seconds (test_ctl_seconds.py)."""

from __future__ import annotations

import pytest

from chimney_client import ctl
from tests.clients.mini_server import MiniServer
from tests.clients.mini_server import run_ctl as run

BAD_LINES = [
    "accept 1 --timeout-ms -1",
    "recv 1 10 --timeout-ms -5",
    "recv 1 -10",
    "trace 1 --limit -3",
    "subscribe * --count -1",
    "subscribe * --count 0",
    "subscribe * --timeout-ms -100",
    "events --count -2",
    "events --count 0",
    "events --timeout-ms -1",
    "fault inject fail_next layer=nic0 call=MiniportTcpOffloadSend count=-1",
    "fault inject fail_next layer=nic0 call=MiniportTcpOffloadSend count=0",
    "fault inject fail_next layer=nic0 call=MiniportTcpOffloadSend skip=-1",
    "fault inject raise_next layer=nic0 call=MiniportTcpOffloadSend count=-3",
    "fault inject raise_next layer=nic0 call=MiniportTcpOffloadSend count=1.5",
    "fault inject delay layer=im0 call=MiniportTcpOffloadSend ms=-50",
    "fault inject stall_peer conn=1 ms=-1",
]


@pytest.mark.parametrize("line", BAD_LINES)
def test_a_negative_count_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], server: MiniServer, line: str
) -> None:
    # in a run script: the whole script is checked before the daemon sees any of it
    status, out, err = run(capsys, server, "run", "connect 127.0.0.1 9000", line)
    assert status == 2, (out, err)
    assert "Traceback" not in err
    assert not server.state.conns, "the script ran although a line was bad"


def test_top_refuses_a_negative_number_of_connections(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, out, err = run(capsys, server, "top", "--once", "--conns", "-1")
    assert status == 2, (out, err)
    assert "--conns" in err and "-1" in err


def test_the_least_values_still_run(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    status, out, err = run(
        capsys,
        server,
        "run",
        "fault inject fail_next layer=nic0 call=MiniportTcpOffloadSend count=1 skip=0",
        "fault inject delay layer=im0 call=MiniportTcpOffloadSend ms=1",
        "events --count 1 --timeout-ms 0",
    )
    # all taken: the run reaches the wait, which (no event comes in 0 ms) ends short of its
    # count, an error of the wait and not of usage
    assert status == ctl.EXIT_ERROR, (out, err)
    assert err.startswith("error: timed out: got 0 of 1 events in 0 ms\n"), err
    status, out, err = run(capsys, server, "top", "--once", "--conns", "0", "--interval", "0")
    assert status == 0, (out, err)
