"""What chimneyctl says beside a result or an error so that a newcomer can act on it: a connect
whose offload was refused, a subscribe that needs no admin hint, a token the daemon wants, and
the help of --json."""

from __future__ import annotations

import json

import pytest

from chimney_client import ctl
from tests.clients.mini_server import MiniServer
from tests.clients.mini_server import run_ctl as run

STAYS = "conn 1 stays in the host stack: the offload at connect was refused"


def test_connect_says_when_the_connection_stayed_in_the_host_stack(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    server.state.host_mode.add(1)  # the daemon answers the id; tcp.info says "host"
    status, out, err = run(capsys, server, "run", "connect 127.0.0.1 9000 as c")
    assert (status, out) == (0, "conn 1\n")
    assert err.startswith(f"note: {STAYS}"), err
    assert "`offload 1` tries again and answers why" in err


def test_connect_says_why_the_offload_was_refused_when_tcp_info_says(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    """tcp.info's `offload_refused` (rpc.md): the layer and the refused offload's answer."""
    server.state.host_mode.add(1)
    server.state.offload_refused[1] = {
        "status": "NDIS_STATUS_FAILURE",
        "layer": "team0",
        "reason": "NDIS_STATUS: NDIS_STATUS_FAILURE (0xC0000001)",
    }
    status, out, err = run(capsys, server, "run", "connect 127.0.0.1 9000 as c")
    assert (status, out) == (0, "conn 1\n")
    assert err == (
        f"note: {STAYS} by team0: NDIS_STATUS: NDIS_STATUS_FAILURE (0xC0000001); it works "
        "unoffloaded, and `offload 1` tries again\n"
    ), err


def test_connect_says_the_reason_without_a_layer_when_none_is_known(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    server.state.host_mode.add(1)
    server.state.offload_refused[1] = {"status": None, "layer": None, "reason": "INTERNAL: x"}
    status, _, err = run(capsys, server, "run", "connect 127.0.0.1 9000 as c")
    assert status == 0
    assert err.startswith(f"note: {STAYS}: INTERNAL: x; it works unoffloaded"), err


def test_connect_says_nothing_more_when_the_connection_is_offloaded(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, out, err = run(capsys, server, "run", "connect 127.0.0.1 9000 as c")
    assert (status, out, err) == (0, "conn 1\n", "")


def test_connect_no_offload_asks_nothing_more(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    server.state.host_mode.add(1)
    status, out, err = run(capsys, server, "run", "connect 127.0.0.1 9000 --no-offload")
    assert (status, out, err) == (0, "conn 1\n", "")
    assert "tcp.info" not in [m for m, _ in server.requests]


def test_one_shot_connect_in_the_host_stack_says_both(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    server.state.host_mode.add(1)
    status, out, err = run(capsys, server, "--json", "connect", "127.0.0.1", "9000")
    assert status == 0
    doc = json.loads(out)
    assert doc["result"] == 1
    assert doc["note"].startswith(STAYS), doc
    assert "conn 1 was closed when chimneyctl left" in doc["note"], doc
    assert err == ""


def test_subscribe_star_in_a_run_gives_no_one_shot_hint(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, out, err = run(capsys, server, "run", "subscribe *", "connect 127.0.0.1 9000 as c")
    assert status == 0
    assert "event conn 1: offloaded" in out  # the events come: nothing to hint at
    assert "hint" not in err, err


def test_subscribe_star_one_shot_still_hints(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, _, err = run(capsys, server, "subscribe", "*", "--count", "1")
    assert status == 0
    assert err.startswith("hint: without the admin token, subscribe '*' sees only"), err


def test_a_bad_token_is_named_as_such(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, _, err = run(capsys, server, "--token", "wrong", "ping")
    assert status == 1
    assert err.splitlines() == [
        "error: DENIED: bad token",
        "hint: the token given (--token or CHIMNEY_TOKEN) is neither of the daemon's tokens",
    ]


def _json_help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert ctl.main([*args, "-h"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("--json"))
    rest = [lines[start]]
    for line in lines[start + 1 :]:
        if line.strip().startswith("-") or not line.strip():
            break
        rest.append(line)
    return " ".join(" ".join(rest).split())


def test_global_json_help_does_not_send_the_reader_to_its_own_page(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = _json_help(capsys)
    assert "chimneyctl -h" not in text, text
    assert "also after COMMAND" in text


def test_top_and_watch_json_help_say_what_they_print(capsys: pytest.CaptureFixture[str]) -> None:
    assert "per refresh" in _json_help(capsys, "top")
    assert "per hop" in _json_help(capsys, "watch")
    assert "per command" in _json_help(capsys, "send")
