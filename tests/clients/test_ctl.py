"""chimneyctl in-process against the mini server: parsing, human output, --json, sessions."""

from __future__ import annotations

import base64
import io
import json
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


def test_ping(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    assert run(capsys, server, "ping") == (0, "pong\n", "")
    assert run(capsys, server, "--json", "ping") == (0, '"pong"\n', "")


def test_stack_info_table(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    status, out, _ = run(capsys, server, "info")
    assert status == 0
    assert "contract 1" in out
    lines = out.splitlines()
    assert any(line.split() == ["im0", "passthrough", "nic0", "running"] for line in lines)
    assert any(line.split()[:2] == ["layer", "kind"] for line in lines)


def test_stats_table(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    status, out, _ = run(capsys, server, "stats")
    assert status == 0
    header = next(line for line in out.splitlines() if "offloads_active" in line).split()
    assert header[:4] == ["layer", "offloads_active", "handles", "outstanding_nbls"]
    row = next(line for line in out.splitlines() if line.startswith("nic0")).split()
    assert row[header.index("calls")] == "7" and row[header.index("failed")] == "1"


def test_errors_and_usage(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    status, out, err = run(capsys, server, "close", "17")
    assert (status, out) == (1, "")
    assert err == "error: NOT_FOUND: no connection 17\n"
    status, _, err = run(capsys, server, "connect", "127.0.0.1", "notaport")
    assert status == 2 and "bad port" in err
    status, _, err = run(capsys, server, "frobnicate")
    assert status == 2
    assert ctl.main(["--help"]) == 0
    assert "run" in capsys.readouterr().out


def test_connection_refused_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with mini_server_in_thread() as srv:
        address = srv.address
    assert ctl.main(["--rpc", address, "ping"]) == 1
    assert capsys.readouterr().err.startswith("error: cannot connect")


def test_run_session(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    status, out, err = run(
        capsys,
        server,
        "run",
        "connect 127.0.0.1 9000",
        "offload 1",
        "send 1 hello",
        "recv 1 100",
        "send 1 --hex 00ff",
        "recv 1 100",
        "info 1",
        "trace 1",
        "list",
        "close 1",
    )
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[:4] == [
        "conn 1",
        "conn 1: offloaded via tcpip → im0 → nic0",
        "sent 5 bytes (acknowledged)",
        "5 bytes: hello",
    ]
    assert "2 bytes (hex): 00ff" in lines
    assert any(line.split()[:2] == ["delegated.RcvNxt", "1005"] for line in lines)
    hop = next(line for line in lines if "MiniportTcpOffloadSend" in line).split()
    assert hop == ["2", "12.5", "nic0", "MiniportTcpOffloadSend", "301", "7"]
    assert lines[-2:] == ["1", "conn 1: closed"]


def test_run_checks_syntax_before_running(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, out, err = run(capsys, server, "run", "connect 127.0.0.1 9000", "recv 1")
    assert status == 2 and out == "" and "MAX" in err
    assert server.requests == []


def test_run_stops_at_first_error(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    status, out, err = run(capsys, server, "run", "ping", "close 5", "ping")
    assert status == 1 and out == "pong\n" and "NOT_FOUND" in err


def test_json_lines(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    status, out, _ = run(
        capsys,
        server,
        "--json",
        "run",
        "connect 127.0.0.1 9000",
        "send 1 hi",
        "recv 1 10",
        "stats",
        "fault inject delay layer=im0 call=MiniportTcpOffloadSend ms=50",
        "fault list",
    )
    assert status == 0
    docs = [json.loads(line) for line in out.splitlines()]
    assert docs[0] == 1 and docs[1] == 2
    assert base64.b64decode(docs[2]["base64"]) == b"hi"
    assert docs[3]["layers"]["nic0"]["offloads_active"] == 1
    assert docs[4] == 1
    assert docs[5] == [
        {"id": 1, "kind": "delay", "layer": "im0", "call": "MiniportTcpOffloadSend", "ms": 50}
    ]


def test_subscribe_prints_events(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    status, out, _ = run(capsys, server, "subscribe", "*", "--count", "1")
    assert status == 0
    assert out.splitlines() == [
        "subscribed to all connections",
        "event conn 1: offloaded path=tcpip, nic0",
    ]
    status, out, _ = run(capsys, server, "--json", "run", "subscribe 1", "events --count 1")
    docs = [json.loads(line) for line in out.splitlines()]
    assert docs == [True, {"event": "offloaded", "conn": 1, "info": {"path": ["tcpip", "nic0"]}}]


def test_shell_reads_lines(
    capsys: pytest.CaptureFixture[str], server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = "# a comment\n\nconnect 127.0.0.1 9000\nclose 9\nlist\nbogus\nping\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    status, out, err = run(capsys, server, "shell")
    assert out.splitlines() == ["conn 1", "1", "pong"]
    assert "NOT_FOUND" in err and "bogus" in err
    assert status == 2  # the worst line: a usage error


def test_parse_value() -> None:
    assert ctl.parse_value("5") == 5
    assert ctl.parse_value("0x10") == 16
    assert ctl.parse_value("1.5") == 1.5
    assert ctl.parse_value("true") is True
    assert ctl.parse_value("NDIS_STATUS_FAILURE") == "NDIS_STATUS_FAILURE"
    assert ctl.parse_value("[1, 2]") == [1, 2]
