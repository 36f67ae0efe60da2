"""Ctrl-C during `chimney-soak --spawn`, as a terminal sends it: SIGINT to the soak's whole
process group. The soak stops, closes its clients, then the daemon it spawned (which the SIGINT
did not reach: it runs in its own session), prints a partial report marked as interrupted and
exits 130. A second Ctrl-C stops it at once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chimney_client.soak.procs import listener_pid
from tests.soak.support import soak_env


def _start(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "chimney_client.soak", "--spawn", "-n", "150"]
    argv += ["--duration", "60", "--json", str(tmp_path / "report.json"), *extra]
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, which the test then "Ctrl-C"s
        env=soak_env(tmp_path),
    )


def _wait_for_hold(proc: subprocess.Popen[str]) -> list[str]:
    lines: list[str] = []
    assert proc.stderr is not None
    while True:
        line = proc.stderr.readline()
        assert line, f"soak ended before its hold: {''.join(lines)[-2000:]}"
        lines.append(line)
        if "ramp done" in line:
            return lines


def _daemon_pid(tmp_path: Path) -> int | None:
    report = json.loads((tmp_path / "report.json").read_text())
    pid = report["daemon"]["pid"]
    return int(pid) if pid else None


@pytest.mark.timeout(90)
def test_ctrl_c_stops_in_order_and_reports(tmp_path: Path) -> None:
    proc = _start(tmp_path, "--workers", "1", "--logs", str(tmp_path / "logs"))
    lines = _wait_for_hold(proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)  # a bound, not a timing: a hang fails here
    err = "".join(lines) + err
    assert proc.returncode == 130, err[-3000:]
    assert "Task exception was never retrieved" not in err
    assert "Traceback" not in err
    assert len(err.splitlines()) < 50, err[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["interrupted"] is True and not report["ok"]
    assert report["failures"][0].startswith("interrupted")
    # the daemon outlived the SIGINT, served our closes, and was then stopped by us cleanly
    assert report["daemon"]["exit_status"] == 0 and not report["daemon"]["crashed"]
    assert report["drained"], report["left_over"]
    assert report["integrity_errors"] == 0 and report["bytes_verified"] > 0
    pid = _daemon_pid(tmp_path)
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    assert report["daemon"]["logs"] == str(tmp_path / "logs")  # where --logs said
    assert {p.name for p in (tmp_path / "logs").iterdir()} >= {"chimneyd.err", "peer0.err"}


@pytest.mark.timeout(90)
def test_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    _wait_for_hold(proc)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.stderr is not None
    # the second once the first was taken (two at once would merge into one pending signal)
    while "interrupted" not in (line := proc.stderr.readline()):
        assert line, "soak ended before it said it was interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-3000:]
    assert "stopped at once" in err
    assert "Task exception was never retrieved" not in err


@pytest.mark.timeout(90)
def test_a_daemon_that_dies_ends_the_soak_with_a_report(tmp_path: Path) -> None:
    """What the Ctrl-C flood came from: the daemon gone under the soak's clients. The soak must
    end by itself, quietly, with the counts it had and the crash in its verdict."""
    proc = _start(tmp_path)
    lines = _wait_for_hold(proc)
    port = int(re.search(r"daemon 127\.0\.0\.1:(\d+)", "".join(lines)).group(1))  # type: ignore[union-attr]
    pid = listener_pid(port)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err[-3000:]
    assert "Task exception was never retrieved" not in err and "Traceback" not in err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["daemon"]["crashed"] and any("daemon crashed" in f for f in report["failures"])
    assert report["bytes_verified"] > 0 and report["ops"] > 0  # the workers' counts survived
    # a failed run keeps the spawned processes' output, and names where
    logs = Path(report["daemon"]["logs"])
    assert logs.parent == tmp_path / "tmp", logs  # its temporary directory, under TMPDIR
    assert (logs / "chimneyd.err").exists() and (logs / "peer0.err").exists(), report["daemon"]
    assert report["daemon"]["log"] == str(logs / "chimneyd.err")
