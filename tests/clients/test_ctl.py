"""chimneyctl in-process against the mini server: parsing, human output, --json, sessions."""

from __future__ import annotations

import argparse
import base64
import io
import json

import pytest

from chimney_client import ctl
from tests.clients.mini_server import MiniServer, mini_server_in_thread
from tests.clients.mini_server import run_ctl as run


def shell(
    capsys: pytest.CaptureFixture[str],
    server: MiniServer,
    monkeypatch: pytest.MonkeyPatch,
    script: str,
    *args: str,
) -> tuple[int, str, str]:
    """`chimneyctl [ARGS] shell` reading `script` from stdin."""
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    return run(capsys, server, *args, "shell")


def test_ping(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    assert run(capsys, server, "ping") == (0, "pong\n", "")
    assert run(capsys, server, "--json", "ping") == (
        0,
        '{"command": "ping", "ok": true, "result": "pong"}\n',
        "",
    )


def test_stack_info_table(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    status, out, _ = run(capsys, server, "info")
    assert status == 0
    assert "contract 1" in out
    # the mini server says neither its build nor its allocator: nothing is made up for them
    assert "build" not in out and "allocator" not in out
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
    assert err.splitlines()[0] == "error: NOT_FOUND: no connection 17"
    assert err.splitlines()[1].startswith("hint: a one-shot chimneyctl sees only what it makes")
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
    assert "delegated (as of offload/last query):" in lines
    assert any(line.split() == ["RcvNxt", "1005"] for line in lines)
    assert any(
        line.split() == ["handles.im0", "context", "201,", "handle", "202"] for line in lines
    )
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
    assert [d["command"] for d in docs] == [
        "connect 127.0.0.1 9000",
        "send 1 hi",
        "recv 1 10",
        "stats",
        "fault inject delay layer=im0 call=MiniportTcpOffloadSend ms=50",
        "fault list",
    ]
    assert all(d["ok"] is True for d in docs)
    results = [d["result"] for d in docs]
    assert results[0] == 1 and results[1] == 2
    assert base64.b64decode(results[2]["base64"]) == b"hi"
    assert results[3]["layers"]["nic0"]["offloads_active"] == 1
    assert results[4] == 1
    assert results[5] == [
        {"id": 1, "kind": "delay", "layer": "im0", "call": "MiniportTcpOffloadSend", "ms": 50}
    ]


def test_subscribe_prints_events(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    status, out, _ = run(capsys, server, "subscribe", "*", "--count", "1")
    assert status == 0
    assert out.splitlines() == [
        "subscribed to this client's own connections (no admin token)",
        "event conn 1: offloaded path=tcpip, nic0",
    ]
    status, out, _ = run(capsys, server, "--json", "run", "subscribe 1", "events --count 1")
    docs = [json.loads(line) for line in out.splitlines()]
    assert docs == [
        {"command": "subscribe 1", "ok": True, "result": True},
        {"event": "offloaded", "conn": 1, "info": {"path": ["tcpip", "nic0"]}},
        {"command": "events --count 1", "ok": True, "result": 1},
    ]


def test_shell_reads_lines(
    capsys: pytest.CaptureFixture[str], server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = "# a comment\n\nconnect 127.0.0.1 9000\nclose 9\nlist\nbogus\nping\n"
    status, out, err = shell(capsys, server, monkeypatch, script)
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


# -- scripts name their connections -------------------------------------------------------------


def test_run_names_connections(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    """`connect … as NAME` and `$last` stand for the ids the daemon handed out, whatever they are."""
    server.state.next_id = 41  # connection ids are global: a second run does not get 1
    status, out, err = run(
        capsys,
        server,
        "run",
        "connect 127.0.0.1 9000 as c1",
        "connect 127.0.0.1 9000",
        "send c1 hello",
        "send $last bye",
        "recv c1 100",
        "close c1",
        "close $last",
    )
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "conn 41",
        "conn 42",
        "sent 5 bytes (acknowledged)",
        "sent 3 bytes (acknowledged)",
        "5 bytes: hello",
        "conn 41: closed",
        "conn 42: closed",
    ]
    assert [p[0] for m, p in server.requests if m == "tcp.send"] == [41, 42]


@pytest.mark.parametrize(
    "script",
    [
        ["send c1 hi", "connect 127.0.0.1 9000 as c1"],
        ["send $last hi"],
        ["listen 127.0.0.1 0 as l", "send l hi"],
        ["connect 127.0.0.1 9000 as c", "fault inject peer_reset conn=d"],
    ],
)
def test_run_refuses_unnamed_refs_before_running(
    capsys: pytest.CaptureFixture[str], server: MiniServer, script: list[str]
) -> None:
    status, out, err = run(capsys, server, "run", *script)
    assert (status, out) == (2, "")
    assert "error:" in err
    assert server.requests == []


def test_shell_names_and_rest_of_line(
    capsys: pytest.CaptureFixture[str], server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = "connect 127.0.0.1 9000 as c\nsend c hi there\nrecv c 100\nsend nope x\n"
    status, out, err = shell(capsys, server, monkeypatch, script)
    assert out.splitlines() == ["conn 1", "sent 8 bytes (acknowledged)", "8 bytes: hi there"]
    assert status == 2 and "'nope' names nothing" in err


# -- --json: anywhere, tagged, errors included --------------------------------------------------


def test_json_after_the_command(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    status, out, err = run(capsys, server, "stats", "--json")
    assert (status, err) == (0, "")
    doc = json.loads(out)
    assert doc["command"] == "stats" and doc["ok"] is True
    assert doc["result"]["layers"]["nic0"]["bytes_sent"] == 5
    status, out, _ = run(capsys, server, "fault", "list", "--json")
    assert json.loads(out) == {"command": "fault list", "ok": True, "result": []}


def test_json_errors_line_up(
    capsys: pytest.CaptureFixture[str], server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One object per command on stdout, errors too; nothing on stderr; exit codes unchanged."""
    script = "ping\nclose 9\nbogus\nping\n"
    status, out, err = shell(capsys, server, monkeypatch, script, "--json")
    assert err == "" and status == 2
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["command"] for d in docs] == ["ping", "close 9", "bogus", "ping"]
    assert [d["ok"] for d in docs] == [True, False, False, True]
    assert docs[1]["error"] == {
        "code": 3,
        "symbol": "NOT_FOUND",
        "message": "NOT_FOUND: no connection 9",
    }
    assert docs[2]["error"]["symbol"] == "USAGE"
    status, out, err = run(capsys, server, "--json", "run", "ping", "close 5", "ping")
    assert status == 1 and err == ""
    assert [json.loads(line)["ok"] for line in out.splitlines()] == [True, False]
    status, out, err = run(capsys, server, "close", "x y", "--json")
    assert status == 2 and err == "" and json.loads(out)["error"]["symbol"] == "USAGE"


# -- faults --------------------------------------------------------------------------------------
def test_fault_list_used_asks_for_the_spent_faults_and_shows_what_a_bug_hit(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, _, _ = run(capsys, server, "fault", "inject", "raise_next", "layer=nic0", "call=x")
    assert status == 0
    status, out, _ = run(capsys, server, "fault", "list")
    assert status == 0 and "raised" not in out and "nic0" in out
    status, out, _ = run(capsys, server, "fault", "list", "--used")
    assert status == 0
    assert "active" in out and "nic0 MiniportTcpOffloadSend: 1, 2, 3, 4, 5, 6, 7, 8 (+1)" in out
    # a fail_next says which connection each call it failed was for
    status, _, _ = run(capsys, server, "fault", "inject", "fail_next", "layer=nic0", "call=x")
    assert status == 0
    status, out, _ = run(capsys, server, "fault", "list", "--used")
    assert status == 0 and "nic0 MiniportTcpOffloadSend: 4" in out and "+2 more" in out
    assert "failed_dropped" not in out


def test_fault_inject_help_lists_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["fault", "inject", "--help"]) == 0
    out = capsys.readouterr().out
    for kind in ctl.FAULT_KINDS.values():
        assert f"{kind.name} {kind.keys}" in out
        assert kind.example in out
    assert "nic_failure = target_failure" in out and "stall = stall_peer" in out


def test_chimneyctl_knows_every_kind_the_daemon_takes() -> None:
    from chimneyd import faults

    assert set(ctl.FAULT_KINDS) == set(faults.KINDS)
    for name, kind in ctl.FAULT_KINDS.items():
        keys = {k for k in faults.KINDS[name].keys if k != "shard"}
        assert set(kind.required) | set(kind.optional) == keys, name
        assert set(kind.required) == {k for k in keys if faults.KINDS[name].keys[k].required}


def test_fault_kinds_checked_and_aliases_sent_by_contract_name(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, _, err = run(capsys, server, "fault", "inject", "peer_rest", "conn=1")
    assert status == 2 and "unknown kind 'peer_rest'" in err and "peer_reset" in err
    status, _, err = run(capsys, server, "fault", "inject", "delay", "layer=im0", "ms=5")
    assert status == 2 and "missing call" in err
    assert server.requests == []
    status, _, err = run(capsys, server, "fault", "inject", "nic_failure", "layer=nic0")
    assert status == 0 and "stays on nic0 until `chimneyctl fault clear 1`" in err
    status, _, _ = run(capsys, server, "fault", "inject", "--unchecked", "im_failover", "layer=im0")
    assert status == 0
    kinds = [p[0]["kind"] for m, p in server.requests if m == "fault.inject"]
    assert kinds == ["target_failure", "im_failover"]


def test_fault_kinds_lists_the_optional_keys_marked(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    """The keys column shows optional keys as `fault inject --help` does, `[key]`: the
    examples use them (`invalidate conn=c object=path`)."""
    status, out, _ = run(capsys, server, "fault", "kinds")
    assert status == 0
    rows = {line.split("fault inject")[0].split()[0]: line for line in out.splitlines()[2:-1]}
    for name, kind in ctl.FAULT_KINDS.items():
        assert f" {kind.keys} " in rows[name], rows[name]
    assert " conn [object] " in rows["invalidate"]
    assert " layer call [status] [count] [skip] " in rows["fail_next"]


def test_run_clears_its_faults_when_it_stops(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, _, err = run(
        capsys,
        server,
        "run",
        "fault inject fail_next layer=nic0 call=MiniportTcpOffloadSend",
        "close 17",
        "ping",
    )
    assert status == 1
    assert "cleared fault 1: injected by this run, which stopped at an error" in err
    assert server.requests[-1] == ("fault.clear", [1])
    assert ("ping", []) not in server.requests


# -- one-shot commands, small things --------------------------------------------------------------


def test_one_shot_connect_says_it_was_closed(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, out, err = run(capsys, server, "connect", "127.0.0.1", "9000")
    assert (status, out) == (0, "conn 1\n")
    assert err.startswith("note: conn 1 was closed when chimneyctl left")
    assert "chimneyctl run" in err and "chimneyctl shell" in err
    assert ctl.main(["connect", "--help"]) == 0
    assert "the daemon closes the connection as chimneyctl exits" in " ".join(
        capsys.readouterr().out.split()
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("chimneyctl 0.1")


def test_shell_help_lists_commands(
    capsys: pytest.CaptureFixture[str], server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, out, _ = shell(capsys, server, monkeypatch, "help\n")
    assert status == 0
    listed = [line.split()[0] for line in out.splitlines()[1:] if line.startswith("  ")]
    for name in ("connect", "send", "trace", "fault", "query", "update", "metrics", "watch"):
        assert name in listed
    assert "top" not in listed and "run" not in listed


def test_info_rows_are_clean(capsys: pytest.CaptureFixture[str], server: MiniServer) -> None:
    status, out, _ = run(capsys, server, "run", "connect 127.0.0.1 9000 as c", "info c")
    assert status == 0
    rows = [line.split() for line in out.splitlines()]
    assert ["handles.tcpip", "handle", "101"] in rows
    assert ["handles.im0", "context", "201,", "handle", "202"] in rows
    assert not any(r and r[0] == "listener" for r in rows)  # None: no row
    assert not any("=" in line for line in out.splitlines())
    keyed = [r for r in rows[2:] if r and not r[0].startswith("─")]
    assert all(len(r) > 1 for r in keyed), out  # no row with a key and nothing else


def test_subscribe_star_hints_at_the_admin_token(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, _, err = run(capsys, server, "subscribe", "*", "--count", "1")
    assert status == 0
    assert err.startswith("hint: without the admin token, subscribe '*' sees only")
    status, _, err = run(capsys, server, "subscribe", "1", "--count", "1")
    assert err == ""


def test_every_option_has_help() -> None:
    """`--help` of every command documents every argument."""

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    missing += walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path}: {action.option_strings or action.dest}")
        return missing

    assert walk(ctl.build_parser(), "chimneyctl") == []


def test_failures_are_error_completions_only() -> None:
    from chimney_client.ctl_render import call_totals, is_failure

    assert not is_failure("NdisTcpOffloadEventHandler/TcpIndicateDisconnect")
    assert not is_failure("NdisTcpOffloadEventHandler/TcpIndicateSendBacklogChange")
    assert not is_failure("NdisMIndicateStatusEx/NDIS_STATUS_UPLOAD_ALL")
    assert not is_failure("NdisTcpOffloadSendComplete/NDIS_STATUS_SUCCESS")
    assert not is_failure("NdisMInitiateOffloadComplete")
    assert is_failure("NdisTcpOffloadSendComplete/NDIS_STATUS_REQUEST_ABORTED")
    assert is_failure("NdisMInitiateOffloadComplete/0xC0000001")
    assert not is_failure("NdisMInitiateOffloadComplete/0x40020004")
    layer = {
        "calls": {
            "NdisTcpOffloadEventHandler/TcpIndicateDisconnect": 1,
            "NdisTcpOffloadEventHandler/TcpIndicateSendBacklogChange": 2,
            "NdisTcpOffloadSendComplete/NDIS_STATUS_SUCCESS": 4,
            "NdisTcpOffloadSendComplete/NDIS_STATUS_FAILURE": 1,
        }
    }
    assert call_totals(layer) == (8, 1)


def test_one_byte_is_said_in_the_singular(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    """The mini server echoes: one byte sent and read back reads "1 byte", not "1 bytes"."""
    script = ["connect 127.0.0.1 9000 as c", "send c x", "recv c 1", "send c xy", "recv c 2"]
    status, out, err = run(capsys, server, "run", *script)
    assert status == 0, err
    assert out.splitlines()[1:] == [
        "sent 1 byte (acknowledged)",
        "1 byte: x",
        "sent 2 bytes (acknowledged)",
        "2 bytes: xy",
    ], out
