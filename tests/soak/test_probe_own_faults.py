"""A fault the soak itself put in may refuse its own probe's offload: a `refuse_offload` (a
`fail_next` on MiniportInitiateOffload) or a `raise_next` on it, armed at the moment a probed
fault offers its probe connection (soak/probe_faults.py). That refusal is no fault of the
daemon's: the probe is offered again, and what it still could not show is not judged. One
the daemon says (fault.list `used`) no fault of the soak's made still fails the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chimney_client.errors import InternalError, NdisStatusError
from chimney_client.soak.layer_faults import LayerFaults
from chimney_client.soak.outcomes import judge
from tests.soak.support import soak_env
from tests.soak.test_probe_doubts import _prober, _rec
from tests.soak.test_probe_full_nic import FakeFullNicFaults
from tests.soak.test_probe_no_room import STACK, FakeFullNic, _short  # noqa: F401 (autouse)
from tests.soak.test_verdict import _report

pytestmark = pytest.mark.soak

Rec = dict[str, Any]
OWN_ID = 77
FAILURE = "NDIS_STATUS: NDIS_STATUS_FAILURE (0xC0000001)"
BUG = "INTERNAL: nic0 raised in MiniportInitiateOffload (PlantedBug)"


class FakeOwnFault(FakeFullNicFaults):
    """nic0 with room to spare, and a fault of the soak's (fault OWN_ID, on nic0's
    MiniportInitiateOffload: a fail_next, or with `bug` a raise_next) that fails the next
    `count` initiates, armed when the soak injects `arm_on` (None: from the start). Each
    initiate it fails is listed under fault.list `used`'s `failed` (`raised`) with its
    connection, and tcp.info's `offload_refused` names nic0 and the status; `said`: False for
    a daemon without that extension (nil)."""

    def __init__(
        self, count: int, arm_on: str | None = None, bug: bool = False, said: bool = True
    ) -> None:
        super().__init__(capacity=100, workers=5)
        self.count, self.arm_on, self.bug, self.said = count, arm_on, bug, said
        self.armed_own = arm_on is None
        self.hit: list[int] = []

    def own(self) -> Rec:
        kind = "raise_next" if self.bug else "fail_next"
        f: Rec = {"id": OWN_ID, "kind": kind, "layer": "nic0", "call": "MiniportInitiateOffload"}
        f["active"] = len(self.hit) < self.count
        entry = {"layer": "nic0", "handler": "MiniportInitiateOffload", "conns": self.hit}
        f["raised" if self.bug else "failed"] = [entry] if self.hit else []
        if not self.bug:
            f["status"] = "NDIS_STATUS_FAILURE"
        return f

    def refuse(self, cid: int) -> bool:
        if not self.armed_own or len(self.hit) >= self.count:
            return False
        self.hit.append(cid)
        self.state[cid] = "host"
        return True

    async def tcp_connect(self, host: str, port: int, target: str | None = None) -> int:
        cid = await super().tcp_connect(host, port, target)
        self.refuse(cid)  # the offload at connect is an initiate too
        return cid

    async def tcp_offload(self, cid: int) -> Rec:
        if self.state[cid] != "offloaded" and self.refuse(cid):
            if self.bug:
                raise InternalError(InternalError.code, BUG)
            raise NdisStatusError(NdisStatusError.code, FAILURE)
        return await super().tcp_offload(cid)

    async def tcp_info(self, cid: int) -> Rec:
        info = await super().tcp_info(cid)
        if self.said:
            refused = cid in self.hit and self.state[cid] == "host"
            status = None if self.bug else "NDIS_STATUS_FAILURE"
            reason = BUG if self.bug else FAILURE
            info["offload_refused"] = (
                {"status": status, "layer": "nic0", "reason": reason} if refused else None
            )
        return info

    async def stack_stats(self) -> Rec:
        stats = await super().stack_stats()
        stats["layers"]["tcpip"]["calls"]["NdisInvalidateOffload"] = self.invalidates
        return stats

    async def fault_inject(self, kind: str, **spec: Any) -> int:
        self.armed_own = self.armed_own or kind == self.arm_on
        if kind == "invalidate":  # (FakeFullNicFaults takes a delay and a host_event only)
            return await FakeFullNic.fault_inject(self, kind, **spec)
        return await super().fault_inject(kind, **spec)

    async def fault_list(self, used: bool = False) -> list[Rec]:
        listed = await super().fault_list()
        own = self.own()
        return listed + ([own] if used or own["active"] else [])


def _soaks_own(daemon: FakeOwnFault, kind: str = "refuse_offload") -> LayerFaults:
    """The prober, with the soak's record of its own fault OWN_ID (LayerFaults'
    `layer_records`: what the coordinator injected)."""
    lf = _prober(daemon)
    call = "MiniportInitiateOffload"
    lf.layer_records = [{**_rec(kind, layer="nic0", call=call), "fault_id": OWN_ID}]
    return lf


async def _probed(lf: LayerFaults, rec: Rec) -> Rec:
    await lf.inject_probed(rec, {})
    return rec


def _invalidate() -> Rec:
    return _rec("invalidate", object="tcp", layer="nic0")


@pytest.mark.parametrize("bug", [False, True])
async def test_a_probe_refused_throughout_by_the_soaks_own_fault_is_not_judged(bug: bool) -> None:
    """Every offer of the invalidate's probe failed by the soak's own refuse_offload (or
    raise_next): not the daemon's doing. Before, `not injected: ValueError: the soak's probe
    connection could not be offloaded on nic0: NDIS_STATUS: NDIS_STATUS_FAILURE` (with a
    bug: `InternalError: INTERNAL: nic0 raised ...`) failed the run."""
    daemon = FakeOwnFault(count=10**6, bug=bug)
    rec = await _probed(
        _soaks_own(daemon, "raise_next" if bug else "refuse_offload"), _invalidate()
    )
    assert not rec.get("error") and not rec["injected"], rec
    assert "refused it" in rec["not_judged"] and f"fault {OWN_ID}" in rec["not_judged"], rec
    assert len(daemon.hit) > 2  # offered again while PROBE_OFFLOAD_S lasted
    r = _report([rec], [], {})
    assert r["ok"], r["failures"]
    assert r["not_judged_count"] == 1, r["not_judged"]


@pytest.mark.parametrize("said", [True, False])
async def test_a_refusal_no_fault_of_the_soaks_made_still_fails(said: bool) -> None:
    """The same refusals with the soak's record of no such fault (another client's, or the
    daemon's own doing): the daemon refused a connection nic0 had room for. With or without
    tcp.info's `offload_refused`."""
    daemon = FakeOwnFault(count=10**6, said=said)
    lf = _prober(daemon)
    lf.layer_records = []
    rec = await _probed(lf, _invalidate())
    assert "ValueError" in rec.get("error", "") and "NDIS_STATUS_FAILURE" in rec["error"], rec
    r = _report([rec], [], {})
    assert not r["ok"]


async def test_a_probe_whose_fault_the_daemon_does_not_say_it_made_is_failed() -> None:
    """The soak's own fault is armed, but fault.list `used` does not name the probe among
    what it failed: nothing shows the refusal was the soak's."""
    daemon = FakeOwnFault(count=10**6)

    async def unnamed(used: bool = False) -> list[Rec]:
        return [{**daemon.own(), "failed": []}]

    daemon.fault_list = unnamed  # type: ignore[method-assign]
    rec = await _probed(_soaks_own(daemon), _invalidate())
    assert "ValueError" in rec.get("error", ""), rec


async def test_an_invalidates_reoffload_refused_by_the_soaks_own_fault_is_offered_again() -> None:
    """The soak's refuse_offload goes in with the invalidate and fails the next 2 initiates:
    the probe's offload again after its upload. Before, that one offer's refusal failed the
    run (`the probe failed: NdisStatusError: NDIS_STATUS: NDIS_STATUS_FAILURE`)."""
    daemon = FakeOwnFault(count=2, arm_on="invalidate")
    rec = await _probed(_soaks_own(daemon), _invalidate())
    assert rec["injected"] and not rec.get("probe_error"), rec
    assert rec["probe_reoffloaded"] and len(daemon.hit) == 2, rec
    (e,), _ = judge([rec], [], {})
    assert e["ok"] and not e.get("not_judged"), e


async def test_an_invalidates_reoffload_refused_throughout_by_it_is_not_judged() -> None:
    daemon = FakeOwnFault(count=10**6, arm_on="invalidate")
    rec = await _probed(_soaks_own(daemon), _invalidate())
    assert rec["injected"] and not rec.get("probe_error"), rec
    (e,), _ = judge([rec], [], {})
    assert e["ok"], e["problems"]
    [why] = e["not_judged"]
    assert "whether the probe is offloaded again after its upload" in why, why
    assert f"fault {OWN_ID}" in why, why


async def test_a_delayed_initiate_refused_by_the_soaks_own_fault_is_not_judged() -> None:
    """A delay on nic0's MiniportInitiateOffload times one offload of the probe's; the soak's
    refuse_offload armed with it fails that offload. Before, `the probe failed:
    NdisStatusError: NDIS_STATUS: NDIS_STATUS_FAILURE` failed the run."""
    daemon = FakeOwnFault(count=1, arm_on="delay")
    rec = _rec("delay", layer="nic0", call="MiniportInitiateOffload", ms="20", **{"for": "0.1s"})
    rec = await _probed(_soaks_own(daemon), rec)
    assert rec["injected"] and not rec.get("probe_error"), rec
    assert f"fault {OWN_ID}" in rec["probe_not_offloaded"], rec
    r = _report([rec], [], {})
    assert r["ok"], r["failures"]
    [f] = r["faults"]
    assert any("whether a call of the soak's own was held" in t for t in f["not_judged"]), f


async def test_a_refuse_offload_that_refused_the_soaks_probe_is_not_failed_for_it() -> None:
    """The same collision seen from the refuse_offload: the daemon says (fault.list `used`)
    its 2 initiates failed were the probe's, which no worker saw. Before, the refuse_offload
    failed: `2 offload refusal(s) caused, 0 seen` and `conn 100: the daemon says a call of it
    failed, no outcome`."""
    daemon = FakeOwnFault(count=2, arm_on="invalidate")
    lf = _soaks_own(daemon)
    inv = await _probed(lf, {**_invalidate(), "tag": 2})
    assert inv["probe_conns"] == daemon.hit[:1], inv
    refuse = {
        **lf.layer_records[0],
        "effect": "offload_refusal",
        "injected": True,
        "consumed": True,
        "t0": inv["t0"],
        "t1": inv["t1"],
        "failed": daemon.own()["failed"],
    }
    refuse["params"].update(status="NDIS_STATUS_FAILURE", count="2")
    r = _report([refuse, inv], [], {})
    assert r["ok"], r["failures"]
    f = next(f for f in r["faults"] if f["kind"] == "refuse_offload")
    assert (f["expected"], f["observed"], f["probe_refusals"]) == (2, 2, 2), f


@pytest.mark.timeout(120)
def test_a_soak_whose_refuse_offload_and_invalidate_go_in_together_passes(tmp_path: Path) -> None:
    """A real soak: a refuse_offload of 3 initiates on nic0 and an invalidate at the same
    moment. The invalidate's probe, offloaded at connect and offered again, takes 2 of the 3
    (fault.list `used`), the workers' provoked re-offloads the last. Before, the run failed:
    `3 offload refusal(s) caused, 1 seen; conn 61: the daemon says a call of it failed, no
    outcome` (3 runs of 3 here)."""
    config = tmp_path / "stack.toml"
    config.write_text(STACK.format(31))
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "chimney_client.soak", "--daemon-config", str(config)]
    argv += ["-n", "30", "--duration", "8", "--quiet", "--json", str(out), "--no-rss"]
    argv += ["--settle", "10", "--faults", "refuse_offload@3s/count=3,invalidate@3s"]
    soak = subprocess.run(
        argv, capture_output=True, text=True, env=soak_env(tmp_path), timeout=100, check=False
    )
    assert out.exists(), soak.stderr[-3000:]
    report = json.loads(out.read_text())
    assert soak.returncode == 0 and report["ok"], (report["failures"], report["faults"])
    refuse = next(f for f in report["faults"] if f["kind"] == "refuse_offload")
    assert refuse["observed"] == refuse["expected"] == 3, refuse
