"""`chimney-soak --fail-not-judged`: a run that found nothing wrong but left checks of the
soak's own probes not judged (no room for them on their NIC) exits 3, said on its verdict line
and in `--json`; without the flag it exits 0, and a run that failed exits 1 either way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from chimney_client.soak.cli import build_parser
from chimney_client.soak.render import not_judged_verdict, render_report
from chimney_client.soak.report import NOT_JUDGED_EXIT, exit_status
from tests.soak.support import soak_env
from tests.soak.test_probe_doubts import _rec
from tests.soak.test_probe_no_room import STACK
from tests.soak.test_verdict import _report

pytestmark = pytest.mark.soak

DAEMON = {"crashed": False, "exit_status": None, "spawned": False, "address": "x", "pid": 1}


def _unjudged(flag: bool, daemon: dict[str, Any] = DAEMON) -> dict[str, Any]:
    """A run that found nothing wrong, its invalidate's probe not judged (no room)."""
    rec = _rec("invalidate", object="neighbor", layer="nic0")
    rec["not_judged"] = "the soak's probe connection could not be offloaded: full"
    r = _report([rec], [], {}, daemon=daemon, fail_not_judged=flag)
    r["connections_detail"].update(opened_total=10)
    return r


def test_the_flag_is_in_the_help_with_its_exit_status() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "--fail-not-judged" in text and "exit 3" in text, text
    assert "3 a pass with checks not judged under --fail-not-judged" in text, text


@pytest.mark.parametrize(("flag", "status"), [(False, 0), (True, NOT_JUDGED_EXIT)])
def test_a_pass_with_checks_not_judged_exits_3_with_the_flag(flag: bool, status: int) -> None:
    r = _unjudged(flag)
    assert r["ok"], r["failures"]  # the daemon did nothing wrong either way
    assert (r["settings"]["fail_not_judged"], r["not_judged_fail"]) == (flag, flag), r
    assert exit_status(r) == status
    console = Console(record=True, width=300)
    render_report(r, console)
    line = not_judged_verdict(r)
    [row] = [r for r in console.export_text().splitlines() if "verdict" in r]
    row = " ".join(row.split())
    if flag:
        assert "verdict │ NOT JUDGED (--fail-not-judged: exit 3): 1 check(s)" in row, row
        assert line.startswith("NOT JUDGED (--fail-not-judged: exit 3): 1 check(s)"), line
    else:
        assert "verdict │ PASS (1 check(s) of the soak's own probes not judged" in row, row
        assert line.startswith("PASS with 1 check(s)"), line


def test_a_failed_run_exits_1_and_a_fully_judged_one_0_with_the_flag() -> None:
    failed = _unjudged(True, daemon={**DAEMON, "crashed": True, "crash": "gone"})
    assert not failed["ok"] and not failed["not_judged_fail"], failed["failures"]
    assert exit_status(failed) == 1
    judged = _report([], [], {}, fail_not_judged=True)
    assert judged["ok"] and not judged["not_judged_fail"] and exit_status(judged) == 0


@pytest.mark.timeout(120)
def test_a_soak_whose_probe_finds_no_room_exits_3_with_the_flag(tmp_path: Path) -> None:
    """30 connections on a NIC with room for 30: the invalidate's probe finds none, and the
    run (which exits 0 without the flag: test_probe_no_room.py) exits 3 with it. Before,
    there was no such flag (argparse: `unrecognized arguments: --fail-not-judged`, exit 2)."""
    config = tmp_path / "stack.toml"
    config.write_text(STACK.format(30))
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "chimney_client.soak", "--daemon-config", str(config)]
    argv += ["-n", "30", "--duration", "6", "--faults", "invalidate@3s", "--quiet"]
    argv += ["--json", str(out), "--no-rss", "--settle", "10", "--fail-not-judged"]
    soak = subprocess.run(
        argv, capture_output=True, text=True, env=soak_env(tmp_path), timeout=100, check=False
    )
    assert out.exists(), soak.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"], (report["failures"], report["faults"])
    assert soak.returncode == NOT_JUDGED_EXIT, (soak.returncode, soak.stderr[-3000:])
    assert report["not_judged_fail"] and report["not_judged_count"] == 1, report["not_judged"]
    assert report["settings"]["fail_not_judged"] is True
    assert "chimney-soak: NOT JUDGED (--fail-not-judged: exit 3): 1 check(s)" in soak.stderr
