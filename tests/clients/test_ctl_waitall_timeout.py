"""A `recv --waitall` that times out short: the daemon answers `TIMEOUT` with the words of a
plain read's timeout ("nothing arrived on connection N") although some bytes may have come,
which a reader takes for lost. chimneyctl says what the timeout means there: fewer than MAX
bytes came in time, and those that did wait for the next recv (docs/rpc.md, `tcp.recv`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.clients import mini_server
from tests.clients.mini_server import MiniServer
from tests.clients.mini_server import run_ctl as run

#: what the daemon answers a read whose time ran out, waitall or not (chimneyd/drivers/host)
DAEMON_TIMEOUT = "TIMEOUT: nothing arrived on connection 1"


@pytest.fixture
def reads_time_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mini server answers every tcp.recv as the daemon answers one whose time ran out."""
    dispatch = mini_server.MiniRpc.dispatch

    async def timing_out(self: mini_server.MiniRpc, method: str, params: list[Any]) -> Any:
        if method == "tcp.recv":
            raise mini_server._Err(7, DAEMON_TIMEOUT)
        return await dispatch(self, method, params)

    monkeypatch.setattr(mini_server.MiniRpc, "dispatch", timing_out)


@pytest.mark.usefixtures("reads_time_out")
def test_a_waitall_timeout_says_the_bytes_that_came_are_kept(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, _, err = run(
        capsys, server, "run", "connect 127.0.0.1 9000 as c", "recv c 10 --waitall --timeout-ms 300"
    )
    assert status == 1
    lines = err.splitlines()
    assert lines[0] == f"error: {DAEMON_TIMEOUT}"
    assert lines[1] == (
        "hint: --waitall waits for all 10 bytes: fewer came within 300 ms (maybe none); "
        "what came is not lost, the next recv of conn 1 reads it"
    ), err
    assert ("tcp.recv", [1, 10, 300, {"waitall": True}]) in server.requests


@pytest.mark.usefixtures("reads_time_out")
def test_the_hint_is_the_json_note_too(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, out, _ = run(
        capsys, server, "--json", "run", "connect 127.0.0.1 9000 as c", "recv c 4 --waitall"
    )
    assert status == 1
    doc = json.loads(out.splitlines()[-1])
    assert doc["error"]["symbol"] == "TIMEOUT"
    assert doc["note"].startswith("--waitall waits for all 4 bytes: fewer came within 5000 ms"), doc


@pytest.mark.usefixtures("reads_time_out")
def test_a_plain_read_timeout_needs_no_hint(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, _, err = run(capsys, server, "run", "connect 127.0.0.1 9000 as c", "recv c 10")
    assert (status, err) == (1, f"error: {DAEMON_TIMEOUT}\n")
