"""What the daemon writes where: stdout carries only its few plain lines for people and scripts
(where it listens), stderr only the log, so `--log-format json` gives a stream of JSON objects
that a log shipper can read without filtering."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.conftest import SpawnDaemon
from tests.e2e.support import (
    BIN,
    HOST,
    child_env,
    peer_process,
    run_into_a_closed_pipe,
    run_on_a_taken_address,
)


def test_stdout_says_where_it_listens_and_stderr_is_only_json(spawn_daemon: SpawnDaemon) -> None:
    d = spawn_daemon(args=("--web", f"{HOST}:0", "--metrics", f"{HOST}:0", "--log-level", "debug"))
    with peer_process("echo") as (_, port), d.client() as c:
        conn = c.tcp_connect(HOST, port)  # debug lines for the connection's events
        assert c.tcp_send(conn, b"hi") == 2
        c.tcp_close(conn)
    d.assert_clean_stop()

    out = d.stdout.lines
    assert [line.split(" on ")[0] for line in out] == [
        "chimneyd web view",
        "chimneyd metrics",
        "chimneyd listening",
    ], out
    assert out[-1] == f"chimneyd listening on {d.address}"

    logged = [json.loads(line) for line in d.stderr.lines]  # every line one JSON object
    assert all(isinstance(e, dict) and e["event"] and e["level"] for e in logged)
    events = [e["event"] for e in logged]
    for name in ("daemon_ready", "conn_offloaded", "conn_closed", "daemon_stopped"):
        assert name in events, events


def test_log_lines_made_for_a_request_name_its_client(spawn_daemon: SpawnDaemon) -> None:
    """Lines logged while a request is served (a plain method, and the task of an `async`
    one) carry the address of the client that asked; another client's, its own."""
    d = spawn_daemon()
    refuse = {
        "kind": "fail_next",
        "layer": "nic0",
        "call": "MiniportInitiateOffload",
        "status": "NDIS_STATUS_FAILURE",
        "count": 1,
    }
    delay = {"kind": "delay", "layer": "nic0", "call": "MiniportQueryOffload", "ms": 1}
    with peer_process("echo") as (_, port), d.client() as a, d.client() as b:
        a.call("fault.inject", refuse)
        conn = a.tcp_connect(HOST, port)  # connected, its offload refused: logged by its task
        b.call("fault.clear", b.call("fault.inject", delay))
        a.tcp_close(conn)
    d.assert_clean_stop()
    logged = [json.loads(line) for line in d.stderr.lines]
    connected = [e["client"] for e in logged if e["event"] == "rpc_client_connected"]
    injected = [e.get("client") for e in logged if e["event"] == "fault_injected"]
    refused = [e.get("client") for e in logged if e["event"] == "offload_refused"]
    assert len(connected) == 2 and connected[0] != connected[1], connected
    assert injected == connected, logged
    assert refused == [connected[0]], logged


def test_an_address_that_cannot_be_bound_is_named(tmp_path: Path) -> None:
    """stderr's last line names the address the daemon could not listen on."""
    addr, run = run_on_a_taken_address(tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    # the last line names the address; an address in use is followed by a hint alone
    lines = run.stderr.strip().splitlines()
    last = lines[-2] if lines[-1].startswith("hint: ") else lines[-1]
    assert last.startswith(f"chimneyd: cannot listen on {addr}: "), last


def test_check_config_into_a_closed_pipe_ends_quietly() -> None:
    """`chimneyd --check-config | head`: once the reader is gone, no traceback, and the exit
    status a shell gives a writer SIGPIPE ended (as chimneyctl's)."""
    run = run_into_a_closed_pipe(str(BIN / "chimneyd"), "--check-config")
    assert (run.returncode, run.stderr) == (141, "")


def _admin_token_with(value: str) -> Any:
    env = {**child_env(), "CHIMNEYD_ADMIN_TOKEN": value}
    run = subprocess.run(
        [str(BIN / "chimneyd"), "--check-config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["rpc"]["admin_token"]


def test_the_admin_token_from_the_environment() -> None:
    """`CHIMNEYD_ADMIN_TOKEN` sets `rpc.admin_token` with no config file (a second terminal's
    `chimneyctl --token` then sees every client's connections); empty, it sets nothing."""
    assert _admin_token_with("s3cret") == "<set>"  # shown so, not itself
    assert _admin_token_with("") == ""
