"""The probed kinds put into one shard (`/shard=K`) of a daemon of shards: the probe
connections a fault is checked with must live in that shard — a client's connections are its
RPC connection's shard's (docs/rpc.md, Shards) — or the probe of a host_event is not refused
and the probe call of a delay is not held, and an unbroken daemon fails the soak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.soak.support import soak_env

pytestmark = pytest.mark.soak


def _soak(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "chimney_client.soak", "--spawn", "--quiet", "--json", str(out)]
    argv.append("--no-rss")  # these runs judge the probed faults, not memory
    proc = subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=150, env=soak_env(tmp_path)
    )
    assert out.exists(), proc.stderr[-3000:]
    return proc.returncode, json.loads(out.read_text())


@pytest.mark.timeout(180)
def test_a_probed_fault_in_each_shard_is_checked_in_that_shard(tmp_path: Path) -> None:
    """One of each into shard 0 and one into shard 1: whichever shard the coordinator's own
    RPC connection landed on, one of the two is in the other shard."""
    faults = (
        "host_event@1s/for=1.5s/shard=0,host_event@4s/for=1.5s/shard=1,"
        "delay@7s/for=1s/ms=300/layer=nic0/shard=0,delay@9s/for=1s/ms=300/layer=nic0/shard=1"
    )
    code, report = _soak(
        tmp_path, *("--shards", "2", "-n", "40", "--duration", "11"), *("--faults", faults)
    )
    detail = {k: report.get(k) for k in ("failures", "faults", "host_mode")}
    assert code == 0 and report["ok"], json.dumps(detail, indent=1)
    by_kind = {f["kind"]: f for f in report["faults"]}
    assert by_kind["host_event"]["injected"] == 2 and by_kind["delay"]["injected"] == 2, detail
