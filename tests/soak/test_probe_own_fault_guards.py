"""The guards of the probe's "a fault of the soak's own" excuse (soak/probe_faults.py
`_own_fault`) and of the rules next to it: each is broken on purpose in review and no test
failed. A fault of the soak's excuses the probe's refusal only where fault.list `used` names
the probe's connection, with the refusal's status, on the layer tcp.info says refused it, and
only a fault the soak put on an initiate; a worker's refusal the probe explains is one for no
room; an invalidate's or a delay's offload the daemon refused with room to spare still fails;
an InternalError no raise_next of the soak's explains is raised as what it is."""

from __future__ import annotations

from typing import Any

import pytest

from chimney_client.soak.outcomes import judge
from tests.soak.test_probe_doubts import _prober, _rec
from tests.soak.test_probe_no_room import FakeFullNic, _short  # noqa: F401 (autouse)
from tests.soak.test_probe_own_faults import FakeOwnFault, _invalidate, _soaks_own
from tests.soak.test_probe_takes_a_place import _reopen
from tests.soak.test_verdict import _report

pytestmark = pytest.mark.soak

Rec = dict[str, Any]


def _hit(**change: Any) -> Any:
    """fault.list `used` with the soak's fault OWN_ID's `failed` entry changed by `change`."""

    def edit(daemon: FakeOwnFault) -> None:
        async def listed(used: bool = False) -> list[Rec]:
            own = daemon.own()
            own["failed"] = [{**h, **change} for h in own["failed"]]
            return [own]

        daemon.fault_list = listed  # type: ignore[method-assign]

    return edit


def _status(daemon: FakeOwnFault) -> None:
    async def listed(used: bool = False) -> list[Rec]:
        return [{**daemon.own(), "status": "NDIS_STATUS_RESOURCES"}]

    daemon.fault_list = listed  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("what", "edit"),
    [
        ("it failed another connection", _hit(conns=[999])),
        ("it failed a call on another layer", _hit(layer="nic1")),
        ("it fails with another status", _status),
    ],
)
async def test_the_soaks_own_fault_excuses_only_the_refusal_it_made(what: str, edit: Any) -> None:
    daemon = FakeOwnFault(count=10**6)
    edit(daemon)
    rec = _invalidate()
    await _soaks_own(daemon).inject_probed(rec, {})
    assert "ValueError" in rec.get("error", ""), (what, rec)
    assert not _report([rec], [], {})["ok"], what


async def test_a_fault_of_the_soaks_on_another_call_excuses_nothing() -> None:
    """The soak's fault OWN_ID is a fail_next on MiniportTcpOffloadSend: whatever fault.list
    says it failed, it is no initiate's, and no offload refusal is its."""
    daemon = FakeOwnFault(count=10**6)
    lf = _soaks_own(daemon)
    lf.layer_records[0]["params"]["call"] = "MiniportTcpOffloadSend"
    rec = _invalidate()
    await lf.inject_probed(rec, {})
    assert "ValueError" in rec.get("error", ""), rec


async def test_a_raise_the_soak_did_not_plant_is_raised_as_it_is() -> None:
    daemon = FakeOwnFault(count=10**6, bug=True)
    lf = _prober(daemon)
    lf.layer_records = []
    rec = _invalidate()
    await lf.inject_probed(rec, {})
    assert rec.get("error", "").startswith("InternalError"), rec


async def test_an_invalidates_reoffload_refused_with_room_fails() -> None:
    """The probe's offload again after its upload refused NDIS_STATUS_FAILURE on nic0 with 95
    places free, by no fault of the soak's: the daemon's to explain, not "not judged"."""
    daemon = FakeOwnFault(count=10**6, arm_on="invalidate")
    lf = _prober(daemon)
    lf.layer_records = []
    rec = await _reopen_refused(lf)
    (e,), _ = judge([rec], [], {})
    assert not e["ok"] and not e.get("not_judged"), e
    assert any("not offloaded again after its upload" in p for p in e["problems"]), e


async def _reopen_refused(lf: Any) -> Rec:
    rec = _invalidate()
    await lf.inject_probed(rec, {})
    assert rec["injected"] and rec.get("probe_reoffload_refused"), rec
    return rec


async def test_a_delayed_initiate_refused_with_room_fails() -> None:
    """A delay on nic0's MiniportInitiateOffload: the probe's timed offload refused
    NDIS_STATUS_FAILURE with room to spare, by no fault of the soak's: the probe failed."""
    daemon = FakeOwnFault(count=1, arm_on="delay")
    lf = _prober(daemon)
    lf.layer_records = []
    rec = _rec("delay", layer="nic0", call="MiniportInitiateOffload", ms="20", **{"for": "0.1s"})
    await lf.inject_probed(rec, {})
    assert "NDIS_STATUS_FAILURE" in rec.get("probe_error", ""), rec
    assert not _report([rec], [], {})["ok"]


@pytest.mark.parametrize("status", ["NDIS_STATUS_FAILURE", "NDIS_STATUS_OFFLOAD_PAUSE"])
async def test_a_workers_refusal_for_another_reason_is_not_the_probes(status: str) -> None:
    """A worker's offload refused NDIS_STATUS_FAILURE (or a pause, with no fault pausing the
    NIC) while the probe held a place on its full NIC: the probe took a place, it failed or
    paused nothing. Still unexplained."""
    daemon = FakeFullNic(capacity=6, workers=6, frees_after=2)
    rec = _rec("invalidate", object="tcp", layer="nic0")
    await _prober(daemon).inject_probed(rec, {})
    assert rec["injected"] and rec.get("probe_no_room_t"), rec
    ep = {**_reopen(rec["t0"] - 0.001), "at": "reoffload", "status": status}
    r = _report([rec], [], {"refusals": [ep]})
    assert not r["ok"], r["faults"]
    assert not r["faults"][0].get("refused_for_the_probe"), r["faults"]
