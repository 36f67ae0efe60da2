"""`--settle` and `--no-rss`: options the soak's own tests use to judge a fault or a mutant
without the waits a memory judgement or a busy machine needs. Each must do what it says and
no more: `--settle` bounds what is owed after the hold (not less: a run still owes it up to
the bound), `--no-rss` leaves memory unmeasured and says so, judging everything else."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chimney_client.soak.channels import LocalChannel
from chimney_client.soak.conn import Conn
from chimney_client.soak.limits import SETTLE_S
from chimney_client.soak.worker import Worker
from tests.soak.support import soak_env
from tests.soak.test_outage_accounts import _state

pytestmark = pytest.mark.soak


def _worker(settle_s: float) -> Worker:
    cfg = dataclasses.replace(_state().cfg, settle_s=settle_s)
    return Worker(cfg, LocalChannel(), LocalChannel())


@pytest.mark.parametrize("settle_s", [5.0, SETTLE_S])
def test_what_is_owed_after_the_hold_is_owed_up_to_the_settle_bound(settle_s: float) -> None:
    w = _worker(settle_s)
    owing = Conn(1, 1, 7, 0, time.monotonic())  # its slot has carried no byte yet
    w.stopping, w.stop_at = True, time.monotonic() - (settle_s - 1.0)
    assert w.keep_going(owing) and w.keep_going_after_reset()
    w.stop_at = time.monotonic() - (settle_s + 1.0)
    assert not w.keep_going(owing) and not w.keep_going_after_reset()


@pytest.mark.timeout(120)
def test_a_run_without_rss_says_memory_was_not_measured_and_judges_the_rest(
    tmp_path: Path,
) -> None:
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "chimney_client.soak", "--spawn", "-n", "20"]
    argv += ["--duration", "2", "--no-rss", "--settle", "7", "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=100, env=soak_env(tmp_path))
    assert out.exists(), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert proc.returncode == 0, (report["failures"], proc.stderr[-3000:])
    rss = report["rss_kb"]
    assert (rss["before"], rss["after"], rss["measured"]) == (None, None, False)
    assert "not measured (--no-rss)" in proc.stdout + proc.stderr
    assert report["settings"]["settle_s"] == 7.0
    # the rest is judged as ever: every slot carried verified bytes, every gauge drained
    assert report["drained"] and report["bytes_verified"] > 0
    assert report["connections_detail"]["with_traffic"] == 20, report["connections_detail"]
    # no wait for memory after the drain
    assert "memory_s" not in report["timing_s"], report["timing_s"]
