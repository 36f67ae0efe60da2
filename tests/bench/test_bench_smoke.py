"""`python -m bench --smoke`: every section runs end to end against the real daemon, and says so.

Never asserts a ratio or a timing (design.md: tests never assert timings). It checks that the
run exits 0, that no section failed, that a section skips only for a reason in ALLOWED_SKIPS,
that every figure is judged against a row of bench/targets.py with positive numbers for each
repeat, that the echo section verified every byte with no error on either side, and that the
observe section scraped /metrics from its daemon with the web view and metrics on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import SECTION_NAMES
from bench.targets import TARGETS
from tests.bench.support import ALLOWED_SKIPS, output, run_bench

pytestmark = pytest.mark.soak  # run by `make test` after the default selection


@pytest.mark.timeout(240)
def test_smoke_run_of_every_section(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = run_bench("--smoke", "--json", str(out))
    assert proc.returncode == 0, output(proc)
    assert "chimneyd bench" in proc.stdout

    doc = json.loads(out.read_text())
    sections: dict[str, Any] = doc["sections"]
    assert list(sections) == list(SECTION_NAMES)
    for name, sec in sections.items():
        assert sec["failed"] is None, (name, sec["failed"])
        assert sec["problems"] == [], (name, sec["problems"])
        if sec["skipped"] is not None:
            assert sec["skipped"]["code"] in ALLOWED_SKIPS, (name, sec["skipped"])
            assert sec["skipped"]["detail"].strip(), name
    ran = {name for name, sec in sections.items() if sec["skipped"] is None}
    # the sections that need nothing from the machine never skip
    assert {"hops", "bulk", "rpc"} <= ran

    figures = doc["figures"]
    assert {f["section"] for f in figures} == ran
    for f in figures:
        assert f["key"] in TARGETS, f
        assert f["failed"] is None, f
        assert f["repeats"] == len(f["values"]) == len(f["baselines"]) >= 2, f
        for x in (*f["values"], *f["baselines"], *f["ratios"]):
            assert isinstance(x, int | float) and math.isfinite(x) and x > 0, f
        assert f["ratio_min"] <= f["ratio"] <= f["ratio_max"], f
        assert f["verdict"] == "too few repeats", f  # --smoke runs 2 repeats: nothing judged
    keys = {f["key"] for f in figures}
    assert {"hops.io_traced.single", "bulk.1im", "bulk.im_curve.4", "rpc.ping.64"} <= keys
    # the bulk runs were placed as their figures say (Linux has sched_setaffinity)
    assert sections["bulk"]["raw"]["bulk"]["placed"] is True

    if "echo" in ran:
        counts = sections["echo"]["raw"]["counts"]
        assert counts, "the echo section measured no count"
        for n, run in counts.items():
            for side in ("emulated", "direct", "floor"):
                windows = run[side]
                assert len(windows) >= 2, (n, side)
                for w in windows:
                    assert w["integrity_errors"] == 0 and w["errors"] == 0, (n, side, w)
                    assert w["conns_active"] == int(n), (n, side)
                    assert w["ops"] > 0 and w["bytes_verified"] == w["ops"] * 16 * 1024
                    if side != "direct":  # the server's CPU, read from /proc
                        assert w["server_cpu_s"] > 0 and w["server_us_per_round"] > 0, w
                    assert w["client_cpu_s"] > 0 and w["client_us_per_round"] > 0, w
            assert run["emulated_setup"]["offloaded"] == int(n)
            assert run["emulated_setup"]["drained"] == {}
            assert run["floor_setup"]["offloaded"] == int(n)  # `tcp.info`: "proxied"
            assert run["floor_setup"]["drained"] == {}
    if "shards" in ran:
        raw = sections["shards"]["raw"]
        for k in ("1", "2"):
            # the load scales with the shards: so many echo connections on each shard
            conns = raw["echo_conns_per_shard"] * int(k)
            assert len(raw["ping"][k]) >= 2 and all(r["errors"] == 0 for r in raw["ping"][k])
            setup = raw["echo_setup"][k]
            assert setup["offloaded"] == conns and setup["drained"] == {}, setup
            for w in raw["echo"][k]:
                assert w["integrity_errors"] == 0 and w["errors"] == 0, (k, w)
                assert w["conns_active"] == conns and w["ops"] > 0
    if "observe" in ran:
        assert {"observe.ping.64", "observe.echo.other"} <= keys
        observe = sections["observe"]["raw"]
        assert observe["metrics"] and observe["web"] and observe["scrape_problems"] == []
        for side in ("off", "on"):
            assert len(observe["ping"][side]) >= 2 and len(observe["echo"][side]) >= 2, side
            for w in observe["echo"][side]:
                assert w["integrity_errors"] == 0 and w["errors"] == 0, (side, w)
                assert w["ops"] > 0 and w["bytes_verified"] == w["ops"] * 16 * 1024
                assert w["server_cpu_s"] > 0 and w["server_us_per_round"] > 0, (side, w)
            # each daemon's CPU per ping, one per window (a short window may read 0 ticks)
            cpu = observe["ping_cpu_us"][side]
            assert len(cpu) == len(observe["ping"][side]), (side, cpu)
            assert all(u is not None and u >= 0 for u in cpu) and sum(cpu) > 0, (side, cpu)
            assert observe["echo_setup"][side]["drained"] == {}, side
    if "memory" in ran:
        ramps = sections["memory"]["raw"]["ramps"]
        assert len(ramps["daemon"]) == len(ramps["bare"]) >= 2
