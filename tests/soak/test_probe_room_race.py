"""The room a probe's "no room for TCP" refusal is judged on (soak/probe_faults.py): stack.info
is read around the refusal, not in the same moment as the daemon decided, and under a soak's
churn a worker's connection may close in between. A NIC seen full at any read of the probe's
refusal episode, or whose room changed during it, excuses the refusal (spec §8); one that
shows the same places free at every read still does not (test_probe_refusal_bounds.py)."""

from __future__ import annotations

from typing import Any

import pytest

from chimney_client.soak import probe_faults
from tests.soak.test_probe_doubts import _prober, _rec
from tests.soak.test_probe_no_room import FakeFullNic, _short  # noqa: F401 (autouse)
from tests.soak.test_verdict import _report

pytestmark = pytest.mark.soak

Rec = dict[str, Any]


async def test_a_place_freed_just_after_the_probes_refusal_does_not_fail_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nic0 full (5 of 5): the probe's one offer is refused OFFLOAD_TCP_ENTRIES, and a worker's
    connection closes before the soak reads stack.info. Before, the read after saw 4 of 5, the
    refusal was not excused and a good daemon failed: `not injected: ValueError: ... nic0
    carries 4 of 5`."""
    monkeypatch.setattr(probe_faults, "PROBE_OFFLOAD_S", 0.0)  # one offer, the last
    daemon = FakeFullNic(capacity=5, workers=5, frees_after=1)
    rec = _rec("invalidate", object="tcp", layer="nic0")
    await _prober(daemon).inject_probed(rec, {})
    assert daemon.refusals == 1, daemon.refusals
    r = _report([rec], [], {})
    assert r["ok"], (r["failures"], rec)
    assert not rec["injected"] and "OFFLOAD_TCP_ENTRIES" in rec["not_judged"], rec
    # it may have taken a worker's place: the workers' refusals from then on are its to explain
    assert rec.get("probe_no_room_t") is not None, rec


class FakeChurningNic(FakeFullNic):
    """nic0 full whenever the probe offers (a worker's reopen takes a place freed since), one of
    the workers' connections closing after each refusal: every read of stack.info after a
    refusal sees a place free, and each a different count."""

    async def tcp_offload(self, cid: int) -> Rec:
        self.workers = self.capacity  # the reopen, in before the probe's offer
        try:
            return await super().tcp_offload(cid)
        finally:
            self.workers -= 1 + self.refusals % 2  # one or two close after the answer


async def test_a_nic_whose_room_changed_during_the_refusals_is_not_judged() -> None:
    """Every offer refused while nic0 was full, every read after one showing places free, and
    not the same number twice in a row: the room changed under the probe. Not judged, no
    failure; before, `not injected: ValueError`."""
    rec = _rec("invalidate", object="tcp", layer="nic0")
    daemon = FakeChurningNic(capacity=5, workers=5)
    await _prober(daemon).inject_probed(rec, {})
    assert daemon.refusals > 1, daemon.refusals
    r = _report([rec], [], {})
    assert r["ok"], (r["failures"], rec)
    assert "OFFLOAD_TCP_ENTRIES" in rec["not_judged"], rec
