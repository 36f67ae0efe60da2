"""A `raise_next` on MiniportInitiateOffload against a real spawned daemon, with the soak's own
invalidate probe initiating on nic0 two seconds after it: the bug raises once, the daemon counts
one layer error and one invariant violation for it (spec §6.3), and the soak expects exactly
that: the run passes, the invalidate judged. Bounded: four connections, a 5 s hold (about 10 s
in all). With the soak's count of planted bugs broken (outcomes `planted`), it fails: "1 layer
error(s) in the daemon".

Whose initiate the bug hits: the soak, having armed it, has one of the workers' connections
uploaded and offloaded again at once (layer_faults `provoke_offload`), so that the bug is
served in the hold; that reoffload, not the probe, is the next initiate on nic0. The probe's
side of an initiate's bug is tested against fakes (test_probe_own_faults.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.soak.support import soak_env

pytestmark = pytest.mark.soak

#: armed at 1 s, when the workers' four connections are long offloaded (no churn, no uploads:
#: none of theirs initiates again but the one the soak has uploaded and offloaded to serve it);
#: the invalidate's probe connects at 3 s
FAULTS = "raise_next@1s/call=MiniportInitiateOffload,invalidate@3s/object=tcp"


def _soak(tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "chimney_client.soak", "--spawn", "--quiet", "--no-rss"]
    argv += ["--json", str(out), "-n", "4", "--duration", "5", "--faults", FAULTS]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, env=soak_env(tmp_path))
    assert out.exists(), proc.stderr[-3000:]
    return proc.returncode, json.loads(out.read_text()), proc.stderr[-3000:]


@pytest.mark.timeout(120)
def test_a_raise_next_in_an_initiate_is_counted_once_and_the_run_passes(tmp_path: Path) -> None:
    code, report, err = _soak(tmp_path)
    by_kind = {f["kind"]: f for f in report["faults"]}
    detail = json.dumps({k: report.get(k) for k in ("failures", "faults", "not_judged")})
    assert code == 0 and report["ok"], (detail, err)
    bug, inv = by_kind["raise_next"], by_kind["invalidate"]
    # the bug raised once, in an initiate
    assert bug["ok"] and bug["planted"] == 1 and bug["connections_served"] == 1, bug
    # ... the soak's provoked reoffload of a worker's connection: that worker was answered the
    # INTERNAL (the one the soak saw), its connection the one hit, verified after; no probe's
    counters = report["counters"]
    assert counters["uploads_planned"] == 1 and counters["reoffloads"] == 1, counters
    assert counters["internal_answers"] == bug["internal_answers"] == 1, (counters, bug)
    assert bug["connections_hit"] == 1 and bug["refused_at_connect"] == 0, bug
    assert bug["verified_after"] > 0, bug
    # the daemon's count of it is the one the soak expects (spec §6.3), and no more
    assert bug["layer_errors_counted"] == 1, bug
    engine = report["stats_after"]["engine"]
    assert engine["layer_errors"] == engine["invariant_violations"] == 1, engine
    # the probe was offloaded at the next offer: the invalidate judged, not "not judged"
    assert inv["ok"] and inv["injected"] == 1 and not inv.get("not_judged"), inv
    assert report["integrity_errors"] == 0 and report["drained"], detail
