"""What chimneyctl tells a person beyond a command's result: notes on what stays behind, hints
on why something is empty or cannot connect, and usage errors that name the bad value."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from chimney_client import ctl
from tests.clients.mini_server import MiniServer, mini_server_in_thread


@pytest.fixture
def server() -> Iterator[MiniServer]:
    with mini_server_in_thread() as srv:
        yield srv


def run(capsys: pytest.CaptureFixture[str], server: MiniServer, *args: str) -> tuple[int, str, str]:
    status = ctl.main(["--rpc", server.address, *args])
    out, err = capsys.readouterr()
    return status, out, err


# -- faults: which stay, and saying so -----------------------------------------------------------


@pytest.mark.parametrize("kind, layer", [("rebalance", "team0"), ("nic_up", "nic1")])
def test_a_fault_that_acts_at_once_is_not_said_to_stay(
    capsys: pytest.CaptureFixture[str], server: MiniServer, kind: str, layer: str
) -> None:
    status, out, err = run(capsys, server, "fault", "inject", kind, f"layer={layer}")
    assert (status, out, err) == (0, "fault 1\n", "")


def test_a_fault_on_a_layer_is_said_to_stay(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, _, err = run(capsys, server, "fault", "inject", "nic_down", "layer=nic1")
    assert status == 0 and err == "note: fault 1 stays on nic1 until `chimneyctl fault clear 1`\n"


#: a run of faults: 1 stays on nic1, 2 is cleared by the run, 3 acts at once, 4 goes with c
FAULT_SCRIPT = [
    "connect 127.0.0.1 9000 as c",
    "fault inject nic_down layer=nic1",
    "fault inject delay layer=im0 call=MiniportTcpOffloadSend ms=5",
    "fault inject rebalance layer=team0",
    "fault inject peer_reset conn=c",
    "fault clear 2",
]
STAYS_1 = "note: fault 1 stays on nic1 until `chimneyctl fault clear 1`\n"


@pytest.mark.parametrize("json_mode", [(), ("--json",)])
def test_a_completed_run_names_the_faults_it_leaves_on_a_layer(
    capsys: pytest.CaptureFixture[str], server: MiniServer, json_mode: tuple[str, ...]
) -> None:
    status, out, err = run(capsys, server, *json_mode, "run", *FAULT_SCRIPT)
    assert (status, err) == (0, STAYS_1)
    # with --json stdout stays JSON Lines: the note goes to stderr, as for a person
    assert all(line.startswith("{") for line in out.splitlines()) == bool(json_mode)


def test_a_shell_names_the_faults_it_leaves_on_a_layer(
    capsys: pytest.CaptureFixture[str], server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(FAULT_SCRIPT) + "\n"))
    status, _, err = run(capsys, server, "shell")
    assert (status, err) == (0, STAYS_1)


def test_a_run_that_stops_names_no_fault_it_cleared(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, _, err = run(capsys, server, "run", *FAULT_SCRIPT, "close 17")
    assert status == 1
    assert "cleared faults 1, 3, 4: injected by this run, which stopped at an error" in err
    assert "stays" not in err


def test_run_help_says_when_a_run_clears_its_faults(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["run", "-h"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "At the first error (or Ctrl-C) stop, and clear the faults this run injected" in text
    assert "a run that completes leaves them in place" in text
