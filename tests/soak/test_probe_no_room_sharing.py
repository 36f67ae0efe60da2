"""The author's first doubt on the `invalidate` whose second connection of the soak's own finds
no room on the NIC (test_probe_no_room.py): a daemon that asks up the probe alone passed
there, its check "not judged", wherever no worker's connection was asked up. The workers'
connections on the NIC at the invalidate, which share the probe's path and neighbor, now
show it: each must be asked up (spec §3.5), as a NIC outage's must leave it (their
`placements`, kept for the invalidate as for an outage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chimney_client.soak.outcomes import judge
from tests.soak.support import soak_env
from tests.soak.test_probe_no_room import STACK
from tests.soak.test_probed_faults import MUTANT, READY, _invalidate_rec, _upload

pytestmark = pytest.mark.soak

Rec = dict[str, Any]
FULL = "NDIS_STATUS_OFFLOAD_TCP_ENTRIES (stack.info: nic0 carries 31 of 31)"


def _there(conn: int, off: float, why: str = "closing", **over: Any) -> Rec:
    """A worker's connection on nic0 from before the invalidate (t0 10.0) until `off`."""
    return {"conn": conn, "nic": "nic0", "on": 5.0, "off": off, "why": why, **over}


def _judged(obs: dict[str, list[Rec]], **over: Any) -> Rec:
    rec = _invalidate_rec(mate_not_offloaded=FULL, sharing_before=3, **over)
    (e,), _ = judge([rec], [], obs)
    return e


def test_the_workers_connections_there_at_the_invalidate_must_be_asked_up() -> None:
    """Conns 5 and 6 were on nic0 at the invalidate and stayed until the end of the run
    (closing at 30 s): not asked up. Before: `ok`, with the sharing check `not judged`."""
    e = _judged({"placements": [_there(5, 30.0), _there(6, 30.0)]})
    assert not e["ok"], e
    assert any("2 of the workers' connections on nic0" in p for p in e["problems"]), e
    # one asked up (InvalidState, in the window), the other not: still a problem
    obs = {
        "placements": [_there(5, 10.1, "host:unrequested_retrieve"), _there(6, 30.0)],
        "unrequested": [_upload(5, 10.1, "InvalidState")],
    }
    e = _judged(obs)
    assert any("1 of the workers' connections" in p and "conn 6" in p for p in e["problems"]), e


def test_the_workers_connections_that_left_or_were_asked_up_pass() -> None:
    """Asked up with InvalidState, closed in the window, or on another NIC, shard or only
    after the invalidate: none stayed unasked; judged on the uploads as before."""
    obs = {
        "placements": [
            _there(5, 10.1, "host:unrequested_retrieve"),
            _there(6, 10.05),  # closed by its worker just after the invalidate
            _there(7, 30.0, nic="nic1"),
            _there(8, 30.0, shard=0),
            {"conn": 9, "nic": "nic0", "on": 10.5, "off": 30.0, "why": "closing"},
        ],
        "unrequested": [_upload(5, 10.1, "InvalidState")],
    }
    e = _judged(obs, shard=1)
    assert e["ok"] and not e.get("not_judged"), e
    # none there and none asked up: nothing shows either way, not judged (as before)
    e = _judged({"placements": []})
    assert e["ok"] and e["not_judged"], e
    # an echo peer on another host (no `sharing_before`): the workers' need not share it
    rec = _invalidate_rec(mate_not_offloaded=FULL)
    (e,), _ = judge([rec], [], {"placements": [_there(5, 30.0)]})
    assert e["ok"] and e["not_judged"], e


# -- a real soak: a daemon that invalidates the probe's own TCP object alone --------------------
@pytest.fixture
def mutant_on_a_full_nic(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """tests/soak/mutant_probed.py `invalidate_tcp_only` on nic0 with room for 31."""
    config = tmp_path / "stack.toml"
    config.write_text(STACK.format(31))
    out = tmp_path / "daemon.out"
    argv = [sys.executable, str(MUTANT), "invalidate_tcp_only", "--listen", "127.0.0.1:0"]
    argv += ["--invariants", "--config", str(config)]
    with open(out, "wb") as sink, open(tmp_path / "daemon.err", "wb") as err:
        proc = subprocess.Popen(
            argv,
            stdout=sink,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONMALLOC": "malloc"},
        )
    try:
        deadline = time.monotonic() + 30
        while (m := READY.search(out.read_text())) is None:
            assert proc.poll() is None, (tmp_path / "daemon.err").read_text()[-2000:]
            assert time.monotonic() < deadline, "the mutant daemon never said it listens"
            time.sleep(0.05)
        yield proc, m.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(150)
def test_a_daemon_asking_up_the_probe_alone_fails_on_a_nic_with_room_for_it_alone(
    tmp_path: Path, mutant_on_a_full_nic: tuple[subprocess.Popen[bytes], str]
) -> None:
    """30 workers' connections and the probe fill nic0 (31): no room for the probe's second
    connection. The daemon asks up the probe alone. Before: exit 0, `ok`, the invalidate's
    sharing `not judged`."""
    proc, address = mutant_on_a_full_nic
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "chimney_client.soak", "--rpc", address]
    argv += ["--daemon-pid", str(proc.pid), "-n", "30", "--duration", "6"]
    argv += ["--quiet", "--json", str(out), "--faults", "invalidate@3s"]
    argv += ["--no-rss", "--settle", "10"]
    soak = subprocess.run(
        argv, capture_output=True, text=True, env=soak_env(tmp_path), timeout=120, check=False
    )
    assert out.exists(), soak.stderr[-3000:]
    report = json.loads(out.read_text())
    [fault] = report["faults"]
    assert "mate_not_offloaded" in json.dumps(fault), fault  # the case of the doubt
    assert soak.returncode == 1 and not report["ok"], fault
    assert any("not asked up" in p for p in fault["problems"]), fault["problems"]
