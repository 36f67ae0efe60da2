"""Where a soak's wall time goes (README, "Soak"): the report's `timing_s` has every phase of
the run, start to stop, and the table's `time` row says each, so a run that takes twice its
hold shows what the rest was (set-up, the warm-up's wait for the idle daemon, settle and
close, the memory wait, the stop)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from chimney_client.soak.render import PHASES, render_report
from tests.soak.support import soak_env
from tests.soak.test_verdict import _clean, _report

#: every phase a spawned run goes through, in order
RUN_PHASES = ("start", "warm-up", "ramp", "hold", "settle+close", "drain", "memory", "stop")


def test_the_time_row_names_every_phase_in_order() -> None:
    daemon = {"crashed": False, "exit_status": 0, "spawned": True, "address": "x", "pid": 1}
    r = _report(*_clean(), daemon=daemon)
    r["connections_detail"].update(opened_total=10)
    keys = [key for key, _ in PHASES]
    r["timing_s"] = {key: float(i + 1) for i, key in enumerate(keys)} | {"total_s": 40.5}
    assert [name for _, name in PHASES] == list(RUN_PHASES)
    console = Console(record=True, width=400)
    render_report(r, console)
    (row,) = [line for line in console.export_text().splitlines() if re.match(r"│ time +│", line)]
    shown = ", ".join(f"{name} {i + 1}.0 s" for i, name in enumerate(RUN_PHASES))
    assert f"{shown}; total 40.5 s" in row, row


@pytest.mark.soak
@pytest.mark.timeout(90)
def test_a_spawned_run_times_every_phase(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    argv = [sys.executable, "-m", "chimney_client.soak", "--spawn", "--connections", "20"]
    argv += ["--duration", "2", "--quiet", "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=80, env=soak_env(tmp_path))
    assert out.exists(), proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert proc.returncode == 0 and report["ok"], report.get("failures")
    timing = report["timing_s"]
    phases = [key for key, _ in PHASES]
    assert set(phases) <= set(timing), timing
    # the phases follow each other: together no longer than the run (rounding aside)
    assert sum(timing[key] for key in phases) <= timing["total_s"] + 0.01 * len(phases), timing


@pytest.mark.soak
@pytest.mark.timeout(120)
def test_the_phases_cover_the_whole_run(tmp_path: Path) -> None:
    """Each phase starts where the one before ended, so the time row accounts for the whole
    wall time. An outage put in late in the hold is still under way when the hold ends (the
    coordinator waits for it, its NICs to settle and the grace after, before it stops the
    workers): that wait belongs to settle+close, not to no phase at all."""
    out = tmp_path / "out.json"
    argv = [sys.executable, "-m", "chimney_client.soak", "--spawn", "--connections", "20"]
    argv += ["--duration", "3", "--faults", "target_failure@2.5s/for=2s"]
    argv += ["--quiet", "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=110, env=soak_env(tmp_path))
    assert out.exists(), proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert proc.returncode == 0 and report["ok"], report.get("failures")
    timing = report["timing_s"]
    phases = [key for key, _ in PHASES]
    assert set(phases) <= set(timing), timing
    # the same clock read at each phase's end: the sum is the total, rounding aside (each
    # value is rounded to 0.01 s)
    covered = sum(timing[key] for key in phases)
    assert abs(covered - timing["total_s"]) <= 0.005 * (len(phases) + 1), timing
