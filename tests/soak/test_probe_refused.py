"""An `invalidate` whose connection of the soak's own the daemon refuses to offload: it is "not
judged" (no fault of the daemon's) only where the NIC has no room for it, as the daemon says
(a status of no room or a pause, spec §3.2.4, §5.5; the host withholding the NIC for a host
event, spec §6.2) or stack.info shows (full at `max_connections`, out of service). A refusal
of a connection the NIC has room for is the daemon's to explain: the run fails, as it did
before the soak learnt to say "not judged" (soak/probe_faults.py `_offload_on`)."""

from __future__ import annotations

from typing import Any

import pytest

from chimney_client.errors import InvalidState, NdisStatusError, RpcError
from chimney_client.soak.outcomes import judge
from tests.soak.test_probe_doubts import _prober, _rec
from tests.soak.test_probe_no_room import FakeFullNic, _short  # noqa: F401 (autouse fixture)
from tests.soak.test_verdict import _report

pytestmark = pytest.mark.soak

Rec = dict[str, Any]
FAILURE = "NDIS_STATUS: NDIS_STATUS_FAILURE (0xC0000001) nic0 refused the initiate"
CLOSED = "INVALID_STATE: connection 101 is closed"
WITHHELD = "INVALID_STATE: the host withholds offloads to nic0: power_down (spec §6.2)"


class FakeRefusing(FakeFullNic):
    """FakeFullNic with room for 100 (the workers' 5 and the soak's own) that answers the
    `tcp.offload` of the soak's connection number `nth` (0: the probe, 1: its mate) with
    `refusal`, and leaves it in the host stack; `full`: stack.info says nic0 is full then."""

    def __init__(self, nth: int, refusal: RpcError, full: bool = False) -> None:
        super().__init__(capacity=100, workers=5)
        self.nth, self.refusal, self.full = nth, refusal, full

    async def stack_info(self) -> Rec:
        info = await super().stack_info()
        if self.full:
            info["layers"][1]["tcp"] = self.capacity
        return info

    async def tcp_connect(self, host: str, port: int, target: str | None = None) -> int:
        cid = await super().tcp_connect(host, port, target)
        if len(self.state) == self.nth + 1:
            self.state[cid] = "host"
        return cid

    async def tcp_offload(self, cid: int) -> Rec:
        if list(self.state).index(cid) == self.nth:
            raise self.refusal
        return await super().tcp_offload(cid)


def _failure() -> NdisStatusError:
    return NdisStatusError(NdisStatusError.code, FAILURE)


async def _invalidated(daemon: FakeRefusing) -> Rec:
    rec = _rec("invalidate", object="neighbor", layer="nic0")
    await _prober(daemon).inject_probed(rec, {})
    return rec


@pytest.mark.parametrize(
    "refusal",
    [_failure(), InvalidState(InvalidState.code, CLOSED)],
    ids=["NDIS_STATUS_FAILURE", "INVALID_STATE-closed"],
)
async def test_a_probe_refused_on_a_nic_with_room_fails_the_run(refusal: RpcError) -> None:
    """nic0 carries 5 of 100 and refuses the probe for no reason of room: a daemon that cannot
    offload a pinned connection. Before, the run passed with the invalidate `not judged`
    (`r["ok"]` True, `not_injected` 1)."""
    rec = await _invalidated(FakeRefusing(0, refusal))
    assert not rec["injected"] and not rec.get("not_judged"), rec
    r = _report([rec], [], {})
    assert not r["ok"] and not r["not_judged"], r["not_judged"]
    [f] = r["faults"]
    assert f["failed_to_inject"] == 1, f
    assert any("nic0 carries 5 of 100" in p for p in f["problems"]), f["problems"]


async def test_a_second_connection_refused_on_a_nic_with_room_is_a_problem() -> None:
    """The probe is offloaded; its mate, which nic0 has room for, is refused FAILURE: the
    neighbor's sharing could have been judged but for the daemon. Before: `ok`, not judged."""
    rec = await _invalidated(FakeRefusing(1, _failure()))
    assert rec["injected"] and "mate_not_offloaded" not in rec, rec
    (e,), _ = judge([rec], [], {})
    assert not e["ok"] and not e.get("not_judged"), e
    assert any("had room for, could not be offloaded" in p for p in e["problems"]), e


@pytest.mark.parametrize(
    ("nth", "refusal", "full"),
    [
        (0, _failure(), True),  # stack.info: full (a MUX answers FAILURE for a full pin)
        (1, _failure(), True),
        (0, InvalidState(InvalidState.code, WITHHELD), False),  # a host event holds nic0
    ],
    ids=["probe-full", "mate-full", "probe-withheld"],
)
async def test_a_refusal_the_nics_room_explains_is_not_judged(
    nth: int, refusal: RpcError, full: bool
) -> None:
    rec = await _invalidated(FakeRefusing(nth, refusal, full))
    assert not rec.get("error"), rec
    r = _report([rec], [], {})
    assert r["ok"], r["failures"]
    assert r["not_judged"], r["faults"]


def test_a_pass_counts_every_check_not_judged_not_the_examples_kept() -> None:
    """`invalidate:7` on a NIC with no room for any probe: 7 not injected. The fault keeps 5
    examples (outcomes.EXAMPLES); the verdict line counts all 7. Before: `PASS (5 check(s)
    ...` on the verdict line, and no count in the JSON."""
    from rich.console import Console

    from chimney_client.soak.render import render_report

    recs = []
    for tag in range(7):
        rec = _rec("invalidate", object="neighbor", layer="nic0")
        rec["tag"], rec["not_judged"] = tag, "the soak's probe connection could not be offloaded"
        recs.append(rec)
    daemon = {"crashed": False, "exit_status": None, "spawned": False, "address": "x", "pid": 1}
    r = _report(recs, [], {}, daemon=daemon)
    r["connections_detail"].update(opened_total=10)
    assert r["ok"] and r["not_judged_count"] == 7 and len(r["not_judged"]) == 5, r
    console = Console(record=True, width=300)
    render_report(r, console)
    text = console.export_text()
    assert "PASS (7 check(s) of the soak's own probes not judged" in text, text
    # the fault's row says why, and that there were more than it shows
    why = "NOT JUDGED: not injected: the soak's probe connection could not be offloaded"
    assert why in text and "(+2 more)" in text, text
