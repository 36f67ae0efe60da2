"""`python -m bench --quick --sections echo` at small N: every echoed byte verified, a ratio made.

N is shrunk to 10 and 20 connections through BENCH_ECHO_COUNTS. Never asserts a timing or the
size of the ratio (design.md: tests never assert timings): only that both sides ran every
connection with no integrity error and no error, and that the figures are positive.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COUNTS = (10, 20)


@pytest.mark.timeout(120)
def test_quick_echo_section_verifies_every_byte(tmp_path: Path) -> None:
    out = tmp_path / "echo.json"
    env = dict(os.environ, BENCH_ECHO_COUNTS=",".join(map(str, COUNTS)))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--sections", "echo", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    doc = json.loads(out.read_text())
    assert set(doc["sections"]) == {"echo"}
    sec = doc["sections"]["echo"]
    assert sec["skipped"] is None, sec["skipped"]
    assert sec["notes"] == [], sec["notes"]  # a failed side or undrained gauges leave a note

    figures = [f for f in doc["figures"] if f["section"] == "echo"]
    assert len(figures) == len(COUNTS)
    for f in figures:
        assert math.isfinite(f["value"]) and f["value"] > 0, f
        assert f["baseline"] > 0 and f["ratio"] > 0, f
        assert f["met"] is None, f  # False marks a failed figure (errors, not all offloaded)

    raw = sec["raw"]["counts"]
    assert set(raw) == {str(n) for n in COUNTS}
    for n in COUNTS:
        run = raw[str(n)]
        assert run["ratio"] > 0
        for side in ("emulated", "direct"):
            r = run[side]
            assert r["integrity_errors"] == 0, (n, side, r["examples"])
            assert r["errors"] == 0, (n, side, r["examples"])
            assert r["conns_active"] == n, (n, side)
            assert r["ops"] > 0 and r["bytes_verified"] > 0, (n, side)
            # whole 16 KiB rounds only: every verified byte belongs to a completed round
            assert r["bytes_verified"] == r["ops"] * 16 * 1024, (n, side)
        assert run["emulated"]["offloaded"] == n
        assert run["emulated"]["drained"] == {}
