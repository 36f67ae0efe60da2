"""A probe of the soak's offered again on a NIC without room for it (soak/probe_faults.py,
every SETTLE_POLL_S for PROBE_OFFLOAD_S) may get the place a worker's connection just left and
was about to take again: a churned (or reset) slot closes its connection, then reopens one,
whose offload at connect the NIC, full with the probe now, refuses. That refusal is the
probe's doing, not the daemon's: from the probe's first offer refused for no room (or one that
took the NIC's last place) until its connections close, a worker's offload refused for no room
is explained by the probed fault, and must be offloaded again after, as any refusal a fault
explains. Before, it was left unexplained (`offload refused at connect (no status)`) and
failed the run."""

from __future__ import annotations

from typing import Any

import pytest

from tests.soak.test_probe_doubts import _prober, _rec
from tests.soak.test_probe_no_room import FakeFullNic, _short  # noqa: F401 (autouse)
from tests.soak.test_verdict import _report

pytestmark = pytest.mark.soak

Rec = dict[str, Any]


async def _invalidated(daemon: FakeFullNic) -> Rec:
    rec = _rec("invalidate", object="tcp", layer="nic0")
    await _prober(daemon).inject_probed(rec, {})
    assert rec["injected"] and not rec.get("error") and not rec.get("probe_error"), rec
    return rec


def _reopen(t: float, offloaded: bool = True) -> Rec:
    """A churned slot's reopen, its offload at connect refused at `t` (no status said)."""
    ep: Rec = {"conn": 9, "at": "connect", "status": None, "t_first": t, "t_last": t}
    ep.update(t_first_sent=t - 0.01, t_last_sent=t - 0.01, attempts=1)
    ep.update(offloaded_t=t + 1.0 if offloaded else None, done=offloaded)
    return ep


async def test_a_workers_reopen_refused_while_the_probe_took_its_place_is_the_probes() -> None:
    """nic0 full with the workers' 6 of 6: the probe is refused twice for no room, then a
    worker's connection closes and the probe takes its place; the worker's reopen, refused
    meanwhile, is offloaded once the probe's place is free."""
    daemon = FakeFullNic(capacity=6, workers=6, frees_after=2)
    rec = await _invalidated(daemon)
    # refused as the probe got its place, before the invalidate went in
    t = rec["t0"] - 0.001
    r = _report([rec], [], {"refusals": [_reopen(t)]})
    assert r["ok"], r["failures"]
    [f] = r["faults"]
    assert f["refused_for_the_probe"] == 1, f
    assert rec["probe_no_room_t"] < t < rec["probes_closed_t"], rec
    # never offloaded again once the probe's place was free: the fault's problem
    r = _report([rec], [], {"refusals": [_reopen(t, offloaded=False)]})
    assert not r["ok"]
    assert any("never offloaded again after the probe's place" in p for p in r["failures"]), r


async def test_a_refusal_outside_the_probes_stay_is_still_unexplained() -> None:
    daemon = FakeFullNic(capacity=6, workers=6, frees_after=2)
    rec = await _invalidated(daemon)
    for t in (rec["probe_no_room_t"] - 5.0, rec["probes_closed_t"] + 5.0):
        r = _report([rec], [], {"refusals": [_reopen(t)]})
        assert not r["ok"] and "offload refused at connect" in " ".join(r["failures"]), t


async def test_a_probe_that_found_room_explains_no_refusal() -> None:
    """nic0 with room to spare: the probe took no one's place."""
    daemon = FakeFullNic(capacity=100, workers=5)
    rec = await _invalidated(daemon)
    assert "probe_no_room_t" not in rec, rec
    r = _report([rec], [], {"refusals": [_reopen(rec["t0"] - 0.1)]})
    assert not r["ok"] and "offload refused at connect" in " ".join(r["failures"]), r


async def test_a_probe_that_took_the_nics_last_place_at_once_explains_them_too() -> None:
    """Room for the workers' 5 and the probe: the probe's first offer takes the last place,
    which a worker's reopen may have been about to take."""
    daemon = FakeFullNic(capacity=6, workers=5)
    rec = await _invalidated(daemon)
    assert rec["probe_no_room_t"] < rec["t0"], rec
