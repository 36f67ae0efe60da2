"""The probe's "no room" rule (soak/probe_faults.py `_judge_refusal`) reads tcp.info's
`offload_refused` (docs/rpc.md, extension: `status`, `layer`, `reason`) where the offload's own
answer says less: a `tcp.offload` answered without an error that left the connection in the
host stack is judged by the status and layer the daemon gives for its refusal, and the why
names the layer that refused it. Against a daemon without the extension (nil) it is judged as
before: with room on the NIC, a failure."""

from __future__ import annotations

from typing import Any

import pytest

from tests.soak.test_probe_doubts import _prober, _rec
from tests.soak.test_probe_no_room import FakeFullNic, _short  # noqa: F401 (autouse)
from tests.soak.test_verdict import _report

pytestmark = pytest.mark.soak

Rec = dict[str, Any]
WITHHELD = "INVALID_STATE: the host withholds offloads to nic0: power_down (spec §6.2)"


class FakeQuietRefusal(FakeFullNic):
    """nic0 with room to spare whose `tcp.offload` answers without an error yet leaves the
    connection in the host stack (its refusal came later, e.g. the initiate's completion),
    saying why only in tcp.info's `offload_refused` (`said`; None: a daemon without it)."""

    def __init__(self, said: Rec | None) -> None:
        super().__init__(capacity=100, workers=5)
        self.said = said

    async def tcp_connect(self, host: str, port: int, target: str | None = None) -> int:
        cid = await super().tcp_connect(host, port, target)
        self.state[cid] = "host"
        return cid

    async def tcp_offload(self, cid: int) -> Rec:
        return {"state": "host"}

    async def tcp_info(self, cid: int) -> Rec:
        return {**await super().tcp_info(cid), "offload_refused": self.said}


@pytest.mark.parametrize(
    ("said", "excused"),
    [
        # no room for TCP said while stack.info says nic0 carries 5 of 100: not believed
        # (test_probe_refusal_bounds.py: believed where nic0 is full)
        ({"status": "NDIS_STATUS_OFFLOAD_TCP_ENTRIES", "layer": "nic0", "reason": "full"}, False),
        ({"status": "NDIS_STATUS_OFFLOAD_PATH_ENTRIES", "layer": "nic0", "reason": "full"}, True),
        ({"status": "NDIS_STATUS_OFFLOAD_PAUSE", "layer": "tcpip", "reason": "paused"}, True),
        ({"status": None, "layer": "tcpip", "reason": WITHHELD}, True),
        ({"status": "NDIS_STATUS_FAILURE", "layer": "nic0", "reason": "failed"}, False),
        (None, False),
    ],
)
async def test_a_refusal_tcp_info_explains_is_judged_by_it(said: Rec | None, excused: bool) -> None:
    """Before, every one of these was `not injected: ValueError: ... tcp.offload left it host`
    whatever the daemon said of why: a run failed for a NIC with no room or paused."""
    rec = _rec("invalidate", object="tcp", layer="nic0")
    await _prober(FakeQuietRefusal(said)).inject_probed(rec, {})
    r = _report([rec], [], {})
    assert r["ok"] is excused, (rec, r["failures"])
    if excused:
        assert said is not None
        assert f"(refused by {said['layer']})" in rec["not_judged"], rec
    else:
        assert "ValueError" in rec["error"], rec
