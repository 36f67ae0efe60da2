"""chimneyctl driving `tcp.update` of a connection's neighbor and path on a real teaming daemon
(deploy/teaming.toml): the update line names the object, and `info` shows each layer's copy of
the neighbor and path as a row of its own, not one clipped line."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.e2e.conftest import SpawnDaemon
from tests.e2e.support import BIN, HOST, Daemon, child_env, peer_process

TEAMING = Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml"
MAC = "02:00:00:00:00:2a"


def ctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "chimneyctl"), "--rpc", daemon.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**child_env(), "COLUMNS": "100"},
        stdin=subprocess.DEVNULL,
    )


def test_update_of_a_neighbor_and_a_path_and_info_of_every_layer_s_copy(
    spawn_daemon: SpawnDaemon,
) -> None:
    daemon = spawn_daemon(TEAMING.read_text())
    with peer_process("echo") as (_, port):
        run = ctl(
            daemon,
            "run",
            f"connect {HOST} {port} as c",
            f"update c object=neighbor DlDestinationAddress={MAC}",
            "update c object=path PathMtu=1400",
            "info c",
            "close c",
        )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "conn 1: updated neighbor DlDestinationAddress: status=NDIS_STATUS_SUCCESS" in lines
    assert "conn 1: updated path PathMtu: status=NDIS_STATUS_SUCCESS" in lines
    rows = {
        line.split()[0]: line.split(None, 1)[1] for line in lines if line.startswith("objects.")
    }
    nic = next(line.split()[-1] for line in lines if line.startswith("path "))
    assert set(rows) == {"objects.tcpip", "objects.team0", f"objects.{nic}"}, lines
    for text in rows.values():
        assert f"neighbor DlDestinationAddress={MAC}" in text, text
        assert "path PathMtu=1400" in text, text
        assert "…" not in text


def test_a_tcp_update_line_is_as_before(daemon: Daemon) -> None:
    with peer_process("echo") as (_, port):
        run = ctl(daemon, "run", f"connect {HOST} {port} as c", "update c RcvIndicationSize=512")
    assert run.returncode == 0, run.stderr
    assert "conn 1: updated RcvIndicationSize: status=NDIS_STATUS_SUCCESS" in run.stdout
