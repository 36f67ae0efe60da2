"""What chimneyctl tells a person beyond a command's result: notes on what stays behind, hints
on why something is empty or cannot connect, and usage errors that name the bad value."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chimney_client import Client, ctl
from chimney_client.errors import ConnectionLost
from tests.clients.mini_server import MiniServer, mini_server_in_thread
from tests.clients.mini_server import run_ctl as run

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
    # 3 (rebalance) and 4 (peer_reset) had acted already: fault.clear answers true for them
    # too (they are no longer armed), but there was nothing left of them to clear
    assert "cleared fault 1: injected by this run, which stopped at an error" in err
    assert "cleared faults" not in err
    assert "stays" not in err


def test_a_run_that_stops_after_a_one_shot_fault_claims_no_clearing(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    """A peer_reset acted as it was injected: fault.list never showed it, so the run that
    stops does not say it cleared it (it still clears it: the daemon then forgets it)."""
    script = ["connect 127.0.0.1 9000 as c", "fault inject peer_reset conn=c", "close 17"]
    status, _, err = run(capsys, server, "run", *script)
    assert status == 1
    assert "cleared" not in err
    assert ("fault.clear", [1]) in server.requests


def test_run_help_says_when_a_run_clears_its_faults(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["run", "-h"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "At the first error (or Ctrl-C) stop, and clear the faults this run injected" in text
    assert "a run that completes leaves them in place" in text


# -- trace: an empty one says why ----------------------------------------------------------------

HOST_MODE = "conn 1: no hops; it is in host mode, not offloaded"


@pytest.mark.parametrize("figure", ["--svg", "--mermaid"])
def test_trace_draws_no_empty_figure(
    capsys: pytest.CaptureFixture[str], server: MiniServer, tmp_path: Path, figure: str
) -> None:
    path = tmp_path / "send.figure"
    server.state.host_mode.update((1, 2))  # the connections it will make
    connect = "connect 127.0.0.1 9000 --no-offload as c"
    status, out, err = run(capsys, server, "run", connect, f"trace c {figure} {path}")
    assert (status, out) == (1, "conn 1\n")
    assert err.startswith(f"error: trace: nothing to draw, no file written: {HOST_MODE}")
    assert "`chimneyctl fault list`" in err
    assert not path.exists()
    status, out, _ = run(capsys, server, "--json", "run", connect, "trace c --mermaid")
    doc = json.loads(out.splitlines()[-1])
    assert (status, doc["ok"], doc["error"]["symbol"]) == (1, False, "EMPTY_TRACE")


def test_trace_table_says_why_it_is_empty(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    server.state.host_mode.add(1)  # the connection it will make
    connect = "connect 127.0.0.1 9000 --no-offload as c"
    status, out, err = run(capsys, server, "run", connect, "trace c")
    assert (status, out) == (0, "conn 1\n(no hops)\n")
    assert err.startswith(f"note: {HOST_MODE}")
    # an offloaded connection whose hops carry another NBL: the filter left nothing
    status, _, err = run(capsys, server, "run", "connect 127.0.0.1 9000 as d", "trace d --nbl 99")
    assert (status, err) == (0, "note: conn 2: none of its 3 hops carries NBL 99\n")


def test_trace_nbl_first_without_an_nbl_keeps_no_hop(
    capsys: pytest.CaptureFixture[str], server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hops of an offload and upload carry no NBL: `--nbl first` (the first send) finds none,
    rather than taking every hop whose NBL is missing."""
    real = Client.trace_get

    def without_nbl(self: Client, conn: int, limit: int | None = None) -> list[dict[str, Any]]:
        return [{**h, "nbl": None} for h in real(self, conn, limit)]

    monkeypatch.setattr(Client, "trace_get", without_nbl)
    script = ("connect 127.0.0.1 9000 as c", "trace c --nbl first")
    status, out, err = run(capsys, server, "run", *script)
    assert (status, out) == (0, "conn 1\n(no hops)\n")
    assert err == "note: conn 1: none of its 3 hops carries an NBL\n"


# -- info: a MUX's NICs, and the limits wrapped --------------------------------------------------

LIMITS = {
    "max_message_bytes": 8388608,
    "max_in_flight": 256,
    "max_connections_per_client": 10000,
    "max_listeners_per_client": 1024,
    "max_clients": 1024,
    "max_buffered_frame_bytes": 134217728,
    "auth_timeout_s": 10.0,
    "idle_timeout_s": 300.0,
    "frame_timeout_s": 30.0,
    "max_auth_failures": 3,
}


def _nic(in_service: bool, failed: bool, taken_out: bool, conns: int) -> dict[str, Any]:
    return {
        "in_service": in_service,
        "failed": failed,
        "taken_out": taken_out,
        "connections": conns,
        "outstanding_bytes": 0,
        "capacity": 8192,
    }


TEAMING_INFO = {
    "version": "0.1.0",
    "contract": 1,
    "layers": [
        {"name": "tcpip", "kind": "host", "lower": ["team0"], "state": "running"},
        {
            "name": "team0",
            "kind": "mux",
            "lower": ["nic0", "nic1"],
            "state": "running",
            "policy": "least-loaded",
            "deferred": [],
            "evacuating": 0,
            "lowers": {"nic0": _nic(True, False, False, 3), "nic1": _nic(False, True, False, 0)},
        },
        {"name": "nic0", "kind": "target", "lower": [], "state": "running"},
        {"name": "nic1", "kind": "target", "lower": [], "state": "running"},
    ],
    "rpc": {"listen": ["127.0.0.1:7411"], "auth": False, "limits": LIMITS},
}


def test_info_shows_each_mux_nic_and_wraps_the_limits(
    capsys: pytest.CaptureFixture[str], server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Client, "stack_info", lambda self: TEAMING_INFO)
    status, out, _ = run(capsys, server, "info")
    assert status == 0
    lines = out.splitlines()
    assert max(map(len, lines)) <= 100
    assert lines[1] == "rpc listen=127.0.0.1:7411 auth=false"
    assert lines[2].startswith("rpc limits max_message_bytes=8388608 ")
    limits = " ".join(line.removeprefix("rpc limits") for line in lines[2:5]).split()
    assert limits == [f"{k}={v}" for k, v in LIMITS.items()]
    at = lines.index("team0 (mux) · policy least-loaded · evacuating 0 · deferred 0")
    assert lines[at + 1].split() == ["lower", *_nic(True, False, False, 0)]
    assert lines[at + 3].split() == ["nic0", "true", "false", "false", "3", "0", "8192"]
    assert lines[at + 4].split() == ["nic1", "false", "true", "false", "0", "0", "8192"]


# -- usage errors that name the bad value --------------------------------------------------------


@pytest.mark.parametrize(
    "address, why",
    [
        ("127.0.0.1:abc", "port 'abc' is not a number"),
        ("127.0.0.1:99999", "port 99999 is out of range"),
        ("unix:", "unix: needs a path"),
        ("::1:7416", "IPv6 needs brackets: [::1]:7416"),
    ],
)
def test_a_bad_rpc_address_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], address: str, why: str
) -> None:
    assert ctl.main(["--rpc", address, "ping"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: chimneyctl: argument --rpc: bad address {address!r}: {why}")
    assert "expected HOST:PORT, [IPV6]:PORT" in err and "unix:PATH" in err
    assert "Traceback" not in err


def test_a_bad_chimney_rpc_is_named_as_such(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHIMNEY_RPC", "localhost:port")
    assert ctl.main(["ping"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("unix:PATH (from CHIMNEY_RPC)")


# -- no daemon there -----------------------------------------------------------------------------

NO_DAEMON = (
    "hint: is chimneyd running at that address{}? Start it with `make run` (or `chimneyd`), or "
    "give its address with --rpc ADDR or CHIMNEY_RPC\n"
)


def test_cannot_connect_asks_whether_chimneyd_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with mini_server_in_thread() as srv:
        address = srv.address  # closed again: nothing listens there now
    assert ctl.main(["--rpc", address, "ping"]) == 1
    err = capsys.readouterr().err.splitlines(keepends=True)
    assert err[0].startswith(f"error: cannot connect to {address}")
    assert err[1:] == [NO_DAEMON.format("")]
    monkeypatch.setenv("CHIMNEY_RPC", address)
    assert ctl.main(["--json", "ping"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["note"] + "\n" == NO_DAEMON.format(" (it came from CHIMNEY_RPC)")[len("hint: ") :]


def test_a_lost_daemon_is_not_said_to_be_missing(
    capsys: pytest.CaptureFixture[str], server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once connected, a lost connection is the daemon going away, not one never started."""

    def lost(self: Client) -> str:
        raise ConnectionLost("connection closed by the server")

    monkeypatch.setattr(Client, "ping", lost)
    status, _, err = run(capsys, server, "ping")
    assert (status, err) == (1, "error: connection closed by the server\n")


@pytest.mark.parametrize(
    "words, message",
    [
        (
            ["recv", "c", "abc"],
            "argument MAX: expected a number of bytes (positive int), got 'abc'",
        ),
        (["recv", "c", "0"], "argument MAX: expected a number of bytes (positive int), got '0'"),
        (["trace", "c", "--limit", "x"], "argument --limit: expected a number of hops"),
        (["close", "0"], "argument ID: expected an id (positive int), got '0'"),
    ],
)
def test_a_bad_number_says_what_it_counts(
    capsys: pytest.CaptureFixture[str], words: list[str], message: str
) -> None:
    assert ctl.main(words) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("seconds", ["-1", "0", "nan", "inf", "soon"])
def test_a_call_timeout_must_be_positive(capsys: pytest.CaptureFixture[str], seconds: str) -> None:
    assert ctl.main(["--timeout", seconds, "ping"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: chimneyctl: argument --timeout: expected seconds")
    assert repr(seconds) in err


# -- stdout closed early -------------------------------------------------------------------------


@contextlib.contextmanager
def closed_stdout(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """stdout a pipe whose reader left, as `chimneyctl ... | head` has once head exits. Set in
    the test itself: capture puts its own stdout back as each test phase starts."""
    read, write = os.pipe()
    os.close(read)
    with open(write, "w", encoding="utf-8") as pipe, monkeypatch.context() as patch:
        patch.setattr("sys.stdout", pipe)
        yield


def test_a_closed_stdout_ends_quietly_with_141(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with closed_stdout(monkeypatch):
        assert ctl.main(["completion", "bash"]) == 141
    assert capsys.readouterr() == ("", "")


def test_a_run_that_loses_its_stdout_clears_its_faults(
    capsys: pytest.CaptureFixture[str], server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with closed_stdout(monkeypatch):
        status = ctl.main(["--rpc", server.address, "run", "fault inject nic_down layer=nic1"])
    assert status == 141
    assert server.state.faults == {}
    assert capsys.readouterr().err == (
        "note: cleared fault 1: injected by this run, which lost its stdout\n"
    )


# -- top: the invariant checker, on or off -------------------------------------------------------


@pytest.mark.parametrize(
    "engine, shown, checker",
    [
        ({"invariant_violations": None}, "off (start chimneyd with --invariants)", False),
        ({"invariant_violations": 0}, "0", True),
        ({}, "-", None),  # a daemon that does not say
    ],
)
def test_top_says_whether_the_invariant_checker_is_on(
    capsys: pytest.CaptureFixture[str],
    server: MiniServer,
    monkeypatch: pytest.MonkeyPatch,
    engine: dict[str, Any],
    shown: str,
    checker: bool | None,
) -> None:
    real = Client.stack_stats

    def with_engine(self: Client) -> dict[str, Any]:
        return {**real(self), "engine": engine}

    monkeypatch.setattr(Client, "stack_stats", with_engine)
    status, out, _ = run(capsys, server, "top", "--once", "--interval", "0.01")
    assert status == 0
    assert f" · invariant violations {shown} · every 0.01 s" in out.splitlines()[0]
    status, out, _ = run(capsys, server, "--json", "top", "--once", "--interval", "0.01")
    frame = json.loads(out)["result"]
    assert (frame["invariant_violations"], frame["invariant_checker"]) == (
        engine.get("invariant_violations"),
        checker,
    )


# -- subscribe/events: a wait that ends short says so ---------------------------------------------


def test_subscribe_that_times_out_short_of_its_count_says_so_and_fails(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    """The mini server sends one event per subscribe: 3 asked for, 1 came, then the wait ended."""
    status, out, err = run(capsys, server, "subscribe", "1", "--count", "3", "--timeout-ms", "50")
    assert status == ctl.EXIT_ERROR
    assert out.splitlines()[-1] == "event conn 1: offloaded path=tcpip, nic0"
    assert err == "error: timed out: got 1 of 3 events in 50 ms\n"


def test_events_that_times_out_short_of_its_count_stops_a_run(
    capsys: pytest.CaptureFixture[str], server: MiniServer
) -> None:
    status, out, _ = run(
        capsys, server, "--json", "run", "subscribe 1", "events --count 2 --timeout-ms 50", "ping"
    )
    assert status == ctl.EXIT_ERROR
    docs = [json.loads(line) for line in out.splitlines()]
    assert docs[-1] == {
        "command": "events --count 2 --timeout-ms 50",
        "ok": False,
        "error": {"symbol": "EVENTS_TIMEOUT", "message": "timed out: got 1 of 2 events in 50 ms"},
    }
    assert ("ping", []) not in server.requests
