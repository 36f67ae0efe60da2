"""`chimney-soak --json -` writes the report to stdout: then stdout is that JSON alone (a pipe
into `jq .` reads it), and what is for the reader (the notes, the table) goes to stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.soak.support import soak_env

pytestmark = pytest.mark.soak  # run by `make test` after the default selection


@pytest.mark.timeout(90)
def test_json_to_stdout_is_all_stdout_and_the_table_goes_to_stderr(tmp_path: Path) -> None:
    argv = ["--spawn", "-n", "5", "--duration", "2s", "--json", "-"]
    proc = subprocess.run(
        [sys.executable, "-m", "chimney_client.soak", *argv],
        capture_output=True,
        text=True,
        timeout=80,
        env=soak_env(tmp_path),
    )
    report = json.loads(proc.stdout)  # the whole of stdout, nothing before or after it
    assert proc.returncode == 0, (report.get("failures"), proc.stderr[-2000:])
    assert report["ok"] and report["connections"] == 5
    # the reader still has the table and the notes, on stderr
    assert "verdict" in proc.stderr and "PASS" in proc.stderr, proc.stderr
    assert "chimney-soak: 5 connections at" in proc.stderr, proc.stderr
