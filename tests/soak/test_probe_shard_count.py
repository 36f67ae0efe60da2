"""The `invalidate` check on a daemon of shards (`--shards N`): its probe lives in one shard (its
RPC connection's), and the invalidate acts there alone (each shard has its own objects). What
the check reads must be that shard's: the `NdisInvalidateOffload` calls stack.stats counts
(summed over the shards, each shard's own under `shards`), and the workers' connections asked
up with InvalidState (another shard's were not asked up by it)."""

from __future__ import annotations

from typing import Any

import pytest

from chimney_client.soak import probe_faults
from chimney_client.soak.outcomes import judge
from tests.soak.test_probe_doubts import _prober, _rec
from tests.soak.test_probe_no_room import FakeFullNic
from tests.soak.test_probed_faults import _invalidate_rec, _upload

pytestmark = pytest.mark.soak

Rec = dict[str, Any]


class FakeShardedNic(FakeFullNic):
    """FakeFullNic in two shards; the soak's client answers from shard 1. Another client's
    invalidate in shard 0 counts one NdisInvalidateOffload there at each stack.stats read
    after the fault went in. The probe's shard counts the calls its host makes (`counts`: a
    daemon whose host asks the probe up without calling NdisInvalidateOffload counts none)."""

    def __init__(self, counts: bool) -> None:
        super().__init__(capacity=100, workers=5)
        self.counts = counts
        self.elsewhere = 0

    async def stack_info(self) -> Rec:
        own = await super().stack_info()
        other = {"shard": 0, "state": "running", "layers": own["layers"]}
        return {**own, "shard": 1, "shards": [other, {"shard": 1, "state": "running", **own}]}

    async def stack_stats(self) -> Rec:
        if self.invalidates:
            self.elsewhere += 1
        own = self.invalidates if self.counts else 0
        parts = [
            {"shard": 0, "layers": {"tcpip": {"calls": {"NdisInvalidateOffload": self.elsewhere}}}},
            {"shard": 1, "layers": {"tcpip": {"calls": {"NdisInvalidateOffload": own}}}},
        ]
        total = {"tcpip": {"calls": {"NdisInvalidateOffload": own + self.elsewhere}}}
        return {"layers": total, "shards": parts}


@pytest.fixture(autouse=True)
def _short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe_faults, "SETTLE_MAX_S", 0.5)
    monkeypatch.setattr(probe_faults, "RESUME_GRACE_S", 0.0)
    monkeypatch.setattr(probe_faults, "STAGGER_S", 0.0)


@pytest.mark.parametrize("counts", [True, False])
async def test_the_invalidate_calls_are_counted_in_the_probes_shard(counts: bool) -> None:
    """Shard 0 made NdisInvalidateOffload calls meanwhile (another client's invalidate): they
    are not the probe's. Before, the daemon-wide sum counted them, and a host that called none
    for the probe passed."""
    rec = _rec("invalidate", object="neighbor", layer="nic0")
    await _prober(FakeShardedNic(counts)).inject_probed(rec, {})
    assert rec["injected"] and not rec.get("probe_error"), rec
    assert rec["invalidate_calls"] == int(counts), rec
    (e,), _ = judge([rec], [], {})
    assert e["ok"] is counts, e
    if not counts:
        assert any("no NdisInvalidateOffload" in p for p in e["problems"]), e["problems"]


def test_workers_connections_asked_up_in_another_shard_are_not_the_invalidates() -> None:
    """The probe in shard 1; a worker's connection in shard 0 asked up with InvalidState in the
    invalidate's window: not by it (shard 0 has its own neighbor), so unexplained, and it does
    not stand for the connections sharing the probe's neighbor, which its second connection
    (no room on the NIC) could not show: not judged. One in shard 1 is the invalidate's."""
    rec = _invalidate_rec(shard=1, mate_not_offloaded="NDIS_STATUS_OFFLOAD_TCP_ENTRIES")
    other = {"unrequested": [_upload(5, 10.2, "InvalidState", shard=0)]}
    (e,), host = judge([rec], [], other)
    assert e["ok"] and e["connections_uploaded"] == 0 and e["not_judged"], e
    assert host["unexplained"] == 1, host
    own = {"unrequested": [_upload(5, 10.2, "InvalidState", shard=1)]}
    (e,), host = judge([rec], [], own)
    assert e["ok"] and e["connections_uploaded"] == 1 and not e.get("not_judged"), e
    assert host["unexplained"] == 0, host
