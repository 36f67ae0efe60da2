"""A short soak in the default run: 300 offloaded connections for 15 s with uploads mixed in and a
peer reset (an RST from the echo peer), through a daemon and echo peers the soak spawns itself
(127.0.0.1 only); the report must show what the verdict judges, not only that it passed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.soak.support import soak_env

pytestmark = pytest.mark.soak  # run by `make test` after the default selection


@pytest.mark.timeout(90)
def test_short_soak(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    env = soak_env(tmp_path)
    scratch = Path(env["TMPDIR"])  # a passing run must leave nothing in it
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "chimney_client.soak",
            "--spawn",
            "--connections",
            "300",
            "--duration",
            "15",
            "--upload-share",
            "0.2",
            "--faults",
            "peer_reset:1",
            "--quiet",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=80,
        env=env,
    )
    assert out.exists(), proc.stderr[-2000:]
    report = json.loads(out.read_text())
    detail = json.dumps(
        {k: report.get(k) for k in ("failures", "error_details", "left_over", "daemon")}, indent=1
    )
    assert proc.returncode == 0, detail
    assert report["ok"], detail
    assert report["integrity_errors"] == 0
    assert report["connections"] == 300
    assert report["connections_detail"]["with_traffic"] == 300
    assert report["bytes_verified"] > 0
    assert report["bytes_verified"] == report["bytes_sent"]
    assert report["drained"] and report["left_over"] == {}
    assert report["daemon"]["logs"] is None  # passed: its temporary log directory is gone
    assert not list(scratch.glob("chimney-soak-*"))
    after = report["stats_after"]
    assert after["connections"] == 0
    for name, layer in after["layers"].items():
        for gauge in ("offloads_active", "handles", "outstanding_nbls"):
            assert layer[gauge] == 0, (name, gauge)
    # the echo peer's RST came in from the wire: abort seen, nothing echoed before it lost,
    # and the reopened slot carried verified data
    (reset,) = report["faults"]
    assert reset["kind"] == "peer_reset" and reset["ok"], reset
    assert reset["injected"] == 1 and reset["abort_seen"] == 1 and reset["reopened"] == 1
    assert reset["verified_after"] > 0 and reset["echoed_before_rst"] > 0
    assert "lost_before_reset" not in reset
    assert report["counters"]["lost_before_reset"] == 0
    # every connection offloaded the whole time, except for the soak's own planned uploads
    host = report["host_mode"]
    assert host["unexplained"] == 0 and host["refusal_episodes"] == 0, host
    assert host["host_at_close"] == 0 and host["state_disagreements"] == 0
    states = report["states"]
    # host mode only for the soak's planned uploads, and while a connection is being made
    # (until the offload inside tcp.connect, when its "offloaded" event is heard first)
    assert set(states["host_by_cause"]) <= {"planned_upload", "connect"}, states
    assert states["seconds"]["offloaded"] > 0
    assert states["share"]["offloaded"] > states["share"]["host"]
    assert report["counters"]["uploads_planned"] > 0
    assert report["counters"]["reoffloads_planned"] == report["counters"]["uploads_planned"]
    assert report["counters"]["unrequested_uploads"] == 0
    assert report["daemon"]["exit_status"] == 0 and not report["daemon"]["crashed"]
    assert report["latency_ms"]["p50"] > 0 and report["ops_per_s"] > 0
    # the idle daemon gives back what the soak made it take: judged by the verdict now (ok
    # above), and measured (a run without a daemon pid would not be)
    assert report["rss_kb"]["judged"] and report["rss_kb"]["within_10pct"], report["rss_kb"]
    assert not report["interrupted"]
