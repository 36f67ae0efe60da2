"""`chimneyctl subscribe '*'` says what it subscribed to: every connection with the admin
token, this client's own without it (docs/rpc.md, events.subscribe), not "all connections"
while it will see only its own."""

from __future__ import annotations

import pytest

from tests.clients.mini_server import MiniServer
from tests.clients.mini_server import run_ctl as run


def test_without_the_admin_token_it_says_its_own_connections(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, out, err = run(capsys, server, "subscribe", "*", "--count", "1")
    assert status == 0
    first = out.splitlines()[0]
    assert "all connections" not in first, f"claims every connection: {first!r}"
    assert first == "subscribed to this client's own connections (no admin token)", first
    assert err.startswith("hint: without the admin token"), err


def test_in_a_run_without_the_admin_token_too(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, out, _ = run(capsys, server, "run", "subscribe '*'", "events --count 1")
    assert status == 0
    assert "subscribed to this client's own connections (no admin token)" in out, out


def test_with_the_admin_token_all_connections(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, out, err = run(capsys, server, "--token", "secret", "subscribe", "*", "--count", "1")
    assert status == 0, err
    assert out.splitlines()[0] == "subscribed to all connections", out
    assert "hint" not in err, err
