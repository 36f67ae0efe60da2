"""The hints a newcomer needs from chimneyctl and chimneyd on a real daemon: a token the daemon
wants, a peer that is not listening, a connection whose offload at connect was refused, and a
port another daemon holds."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.e2e.conftest import SpawnDaemon
from tests.e2e.support import BIN, HOST, Daemon, child_env, peer_process, run_on_a_taken_address


def ctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_env()
    env.pop("CHIMNEY_TOKEN", None)
    return subprocess.run(
        [str(BIN / "chimneyctl"), "--rpc", daemon.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_a_token_daemon_called_without_a_token_names_the_option(
    spawn_daemon: SpawnDaemon,
) -> None:
    daemon = spawn_daemon('[rpc]\ntoken = "s3cret"\n', token="s3cret")
    run = ctl(daemon, "info")
    assert run.returncode == 1
    error, hint = run.stderr.splitlines()
    assert error == "error: DENIED: authenticate first (auth)"
    assert hint.startswith("hint: this daemon wants a token: give --token TOKEN or set "), hint
    assert "CHIMNEY_TOKEN" in hint


def test_a_peer_that_does_not_listen_points_to_chimney_peer(daemon: Daemon) -> None:
    with socket.socket() as held:  # a port nothing listens on (bound, so no one else takes it)
        held.bind((HOST, 0))
        port = held.getsockname()[1]
        run = ctl(daemon, "connect", HOST, str(port))
    assert run.returncode == 1
    error, hint = run.stderr.splitlines()
    assert error.startswith(f"error: CONNECT_FAILED: {HOST}:{port}: "), error
    assert "refused" in error
    assert hint == (
        f"hint: nothing listens on {HOST}:{port}: start a peer there first, e.g. "
        f"`chimney-peer echo --listen {HOST}:{port}` (as in the README's tour)"
    )


def test_connect_under_a_host_event_says_it_stays_in_the_host_stack(daemon: Daemon) -> None:
    with peer_process("echo") as (_, port):
        run = ctl(
            daemon,
            "run",
            "fault inject host_event layer=nic0 event=capability_disabled",
            f"connect {HOST} {port} as c",
            "info c",
            "fault clear *",
        )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:2] == ["fault 1", "conn 1"], run.stdout
    assert any(line.split() == ["state", "host"] for line in lines), run.stdout
    assert run.stderr.startswith(
        "note: conn 1 stays in the host stack: the offload at connect was refused by tcpip: "
        "INVALID_STATE: the host withholds offloads to nic0: capability_disabled"
    ), run.stderr  # why, from tcp.info's `offload_refused`


def test_a_port_in_use_suggests_another_address(tmp_path: Path) -> None:
    addr, run = run_on_a_taken_address(tmp_path)
    assert run.returncode == 2, run.stderr
    *_, error, hint = run.stderr.strip().splitlines()
    assert error.startswith(f"chimneyd: cannot listen on {addr}: "), error
    assert hint == (
        "hint: another program (another chimneyd?) listens there: stop it, or give another "
        'address with --listen ADDR (make run ARGS="--listen 127.0.0.1:7412")'
    )
