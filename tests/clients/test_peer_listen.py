"""chimney-peer --listen refuses a port above 65535 (exit 2) rather than listening on it
modulo 65536."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("addr", ["127.0.0.1:99999", "127.0.0.1:70000"])
def test_port_out_of_range_is_a_usage_error(addr: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chimney_client.peer", "echo", "--listen", addr],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"chimney-peer --listen {addr} started instead of refusing: {out.strip()}")
    assert proc.returncode == 2, (out, err)
