"""`python -m bench --quick` runs end to end and writes every figure as JSON.

Never asserts a ratio or a timing (design.md: tests never assert timings); it checks that every
section ran (or said why not) and that the figures it produced are positive numbers.
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


@pytest.mark.timeout(180)
def test_quick_bench_writes_positive_figures(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        # the echo section's own smoke test covers it at small counts; keep this one short
        env={**os.environ, "BENCH_ECHO_COUNTS": "10,20"},
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "chimneyd bench" in proc.stdout

    doc = json.loads(out.read_text())
    assert set(doc) >= {"meta", "figures", "sections"}
    assert set(doc["sections"]) == {"baselines", "engine", "rpc", "echo"}
    for name, sec in doc["sections"].items():
        assert set(sec) >= {"skipped", "notes", "raw"}, name
    # the engine and its baselines never skip; the RPC section may, but must say why
    assert doc["sections"]["baselines"]["skipped"] is None
    assert doc["sections"]["engine"]["skipped"] is None
    rpc = doc["sections"]["rpc"]
    assert rpc["skipped"] is None or rpc["skipped"].strip()

    figures = doc["figures"]
    keys = {"section", "name", "value", "unit", "baseline", "ratio", "target", "met", "note"}
    for f in figures:
        assert set(f) >= keys, f
        assert isinstance(f["value"], int | float) and math.isfinite(f["value"]), f
        assert f["value"] > 0, f
        if f["baseline"] is not None:
            assert f["baseline"] > 0 and f["ratio"] > 0, f

    names = [f["name"] for f in figures]

    def has(prefix: str) -> bool:
        return any(n.startswith(prefix) for n in names)

    for prefix in (
        "raw uvloop loopback",
        "asyncio.Queue hop",
        "msgpack-RPC echo ping, 1 in flight",
        "msgpack-RPC echo ping, 64 in flight",
        "broker hop",
        "bulk offloaded send",
        "IM curve: 0 IM",
        "IM curve: 4 IM",
        "RSS per idle offloaded connection",
    ):
        assert has(prefix), f"no figure {prefix!r} in {names}"
    if rpc["skipped"] is None:
        assert has("daemon ping, 1 in flight") and has("tcp.send 64 KiB")

    raw = doc["sections"]["engine"]["raw"]
    assert set(raw) >= {"broker_hop_ns", "bulk", "memory", "trace_hops_per_send"}
    assert set(raw["bulk"]["curve"]) == {"0", "1", "2", "4"}
