"""What chimneyctl tells a person beyond a command's result: notes on what stays behind, hints
on why something is empty or cannot connect, and usage errors that name the bad value."""

from __future__ import annotations

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
