"""The examples in docs/examples run against a real daemon (a subprocess on a free port)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.mdcheck import DOCS
from tests.e2e.support import Daemon, child_env, start_daemon

EXAMPLES = DOCS / "examples"
NODE_EXAMPLE = EXAMPLES / "node"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path)
    try:
        yield d
        d.assert_clean_stop()
    finally:
        d.kill()


def documented_events(section: int) -> str:
    """The `events:` line the README of the examples shows for its `section`-th example: the
    events a connection gets are part of the contract, so the doc shows them exactly."""
    lines = (EXAMPLES / "README.md").read_text().splitlines()
    return [line for line in lines if line.startswith("events: ")][section]


def events_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("events: "))


def run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def test_python_example(daemon: Daemon, tmp_path: Path) -> None:
    script = EXAMPLES / "offload_tour.py"
    done = run([sys.executable, str(script), "--rpc", daemon.address], tmp_path, 120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "echoed back: b'host-mode bytes'" in out
    assert "offloaded via tcpip → im0 → nic0" in out
    assert out.count("NdisOffloadTcpSend") == 2  # host and IM hops of one NBL
    assert "gauges after close: {'tcpip': 0, 'im0': 0, 'nic0': 0}" in out
    assert events_line(out) == documented_events(0)
    assert not [line for line in out.splitlines() if line.endswith(" ")], out


def test_node_example(daemon: Daemon, tmp_path: Path) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js (node and npm) is not installed on this machine")
    work = tmp_path / "node"
    work.mkdir()
    for name in ("package.json", "package-lock.json", "client.mjs"):
        shutil.copy(NODE_EXAMPLE / name, work / name)
    # the locked @msgpack/msgpack from the npm registry; a failure here fails the test
    installed = run([npm, "ci", "--no-audit", "--no-fund"], work, 300)
    assert installed.returncode == 0, f"npm ci failed:\n{installed.stdout}{installed.stderr}"
    done = run([node, "client.mjs", daemon.address], work, 120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "echoed back: hello from node" in done.stdout
    assert "error answer: code 3, NOT_FOUND" in done.stdout
    assert "ProtocolTcpOffloadSendComplete" in done.stdout
    assert events_line(done.stdout) == documented_events(1)
    assert not [line for line in done.stdout.splitlines() if line.endswith(" ")], done.stdout
