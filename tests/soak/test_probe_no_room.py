"""An `invalidate` the soak checks with connections of its own (soak/probe_faults.py) on a NIC
with no room for them (full at its `max_connections`, spec §8): a probe that could not run is
no fault of the daemon's. It is offered again for a while (a worker's connection may close);
what it still could not show is reported not judged (the fault entry's and the report's
`not_judged`) and does not fail the run. A daemon that does the invalidate wrong still fails
where the soak could judge it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chimney_client.errors import NdisStatusError
from chimney_client.soak import probe_faults
from chimney_client.soak.outcomes import judge
from tests.soak.support import soak_env
from tests.soak.test_probe_doubts import FakeTeam, _prober, _rec
from tests.soak.test_probed_faults import _upload
from tests.soak.test_verdict import _report

pytestmark = pytest.mark.soak

Rec = dict[str, Any]
FULL = (
    "NDIS_STATUS: NDIS_STATUS_OFFLOAD_TCP_ENTRIES (0xC0231004) im0 advertises room for {} "
    "connections (spec §8)"
)


class FakeFullNic(FakeTeam):
    """One NIC, nic0, with room for `capacity` connections, `workers` of them the workers'
    (all to one echo peer: one path, one neighbor). A connection the NIC has no room for stays
    in the host stack, and its `tcp.offload` is refused OFFLOAD_TCP_ENTRIES; after `frees_after`
    refusals a worker's connection closes and leaves room. An invalidate of a path or neighbor
    asks up every connection on it (`shares`; else the connection's own alone)."""

    def __init__(
        self, capacity: int, workers: int, shares: bool = True, frees_after: int = 0
    ) -> None:
        super().__init__(busy=0)
        self.capacity, self.workers, self.shares = capacity, workers, shares
        self.frees_after = frees_after
        self.refusals = 0
        self.state: dict[int, str] = {}
        self.invalidates = 0

    def used(self) -> int:
        return self.workers + sum(1 for s in self.state.values() if s == "offloaded")

    async def stack_info(self) -> Rec:
        nic = {"name": "nic0", "kind": "target", "tcp": self.used()}
        return {
            "layers": [
                {"name": "tcpip", "kind": "host", "lower": ["nic0"]},
                {**nic, "max_connections": self.capacity},
            ]
        }

    async def stack_stats(self) -> Rec:
        return {"layers": {"tcpip": {"calls": {"NdisInvalidateOffload": self.invalidates}}}}

    async def tcp_connect(self, host: str, port: int, target: str | None = None) -> int:
        cid = await super().tcp_connect(host, port, target)
        self.state[cid] = "offloaded" if self.used() < self.capacity else "host"
        return cid

    async def tcp_offload(self, cid: int) -> Rec:
        if self.state[cid] != "offloaded" and self.used() >= self.capacity:
            self.refusals += 1
            if self.refusals == self.frees_after:
                self.workers -= 1  # a worker's connection closes: room from now on
            raise NdisStatusError(NdisStatusError.code, FULL.format(self.capacity))
        self.state[cid] = "offloaded"
        return {"state": "offloaded", "path": ["tcpip", "nic0"]}

    async def tcp_info(self, cid: int) -> Rec:
        return {"state": self.state[cid], "path": ["tcpip", "nic0"]}

    async def fault_inject(self, kind: str, **spec: Any) -> int:
        assert kind == "invalidate"
        self.invalidates += 1
        hit = [c for c, s in self.state.items() if s == "offloaded"] if self.shares else []
        for cid in {spec["conn"], *hit}:
            self.state[cid] = "host"
        return await super().fault_inject(kind, **spec)


@pytest.fixture(autouse=True)
def _short(monkeypatch: pytest.MonkeyPatch) -> None:
    """No wait after the fault (no worker here asks), and a short offer of the probe."""
    monkeypatch.setattr(probe_faults, "SETTLE_MAX_S", 0.5)
    monkeypatch.setattr(probe_faults, "SETTLE_POLL_S", 0.01)
    monkeypatch.setattr(probe_faults, "RESUME_GRACE_S", 0.0)
    monkeypatch.setattr(probe_faults, "STAGGER_S", 0.0)
    monkeypatch.setattr(probe_faults, "PROBE_OFFLOAD_S", 0.2)


async def _invalidated(daemon: FakeFullNic, obj: str = "neighbor") -> Rec:
    rec = _rec("invalidate", object=obj, layer="nic0")
    await _prober(daemon).inject_probed(rec, {})
    assert not rec.get("error") and not rec.get("probe_error"), rec
    return rec


def _workers_asked_up(rec: Rec) -> dict[str, list[Rec]]:
    """Two of the workers' connections asked up with InvalidState at the invalidate."""
    t = float(rec["t1"])
    return {"unrequested": [_upload(5, t, "InvalidState"), _upload(6, t, "InvalidState")]}


async def test_an_invalidate_whose_second_connection_finds_no_room_does_not_fail() -> None:
    """nic0 has room for the workers' 5 and the probe, not for the probe's mate. Before, the
    mate's refused offload made the fault `not injected: NdisStatusError: ... OFFLOAD_TCP_
    ENTRIES` and failed a run whose daemon did nothing wrong."""
    rec = await _invalidated(FakeFullNic(capacity=6, workers=5))
    assert rec["injected"] and "OFFLOAD_TCP_ENTRIES" in rec["mate_not_offloaded"], rec
    # the workers' connections asked up with the probe show that it was shared: judged
    (e,), _ = judge([rec], [], _workers_asked_up(rec))
    assert e["ok"] and not e.get("not_judged"), e
    assert e["connections_uploaded"] == 2, e
    # none asked up: nothing shows either way; said, and no failure
    r = _report([rec], [], {})
    assert r["ok"], r["failures"]
    [f] = r["faults"]
    [why] = f["not_judged"]
    assert "whether the connections sharing it were asked up" in why, why
    assert "OFFLOAD_TCP_ENTRIES" in why and "nic0 carries 6 of 6" in why, why
    assert r["not_judged"] == [f"invalidate: {why}"], r["not_judged"]


async def test_an_invalidate_whose_probe_finds_no_room_is_not_injected_and_not_failed() -> None:
    daemon = FakeFullNic(capacity=5, workers=5)
    rec = await _invalidated(daemon)
    assert not rec["injected"] and daemon.invalidates == 0, rec
    assert daemon.refusals > 1  # offered again while PROBE_OFFLOAD_S lasted
    r = _report([rec], [], {})
    assert r["ok"], r["failures"]
    [f] = r["faults"]
    assert (f["injected"], f["failed_to_inject"], f.get("not_injected")) == (0, 0, 1), f
    [why] = r["not_judged"]
    assert why.startswith("invalidate: not injected: the soak's probe connection could not be")
    assert "OFFLOAD_TCP_ENTRIES" in why, why


@pytest.mark.parametrize(("shares", "ok"), [(True, True), (False, False)])
async def test_a_probe_refused_while_its_nic_is_full_is_offered_again(
    shares: bool, ok: bool
) -> None:
    """The mate is refused twice, then a worker's connection closes and it is offloaded: the
    invalidate is judged on it as on a NIC with room. One that asks up the probe alone
    (spec §3.5: every connection sharing the neighbor is asked up) still fails."""
    daemon = FakeFullNic(capacity=6, workers=5, shares=shares, frees_after=2)
    rec = await _invalidated(daemon)
    assert "mate_not_offloaded" not in rec and rec["mate_state_before"] == "offloaded", rec
    (e,), _ = judge([rec], [], {})
    assert e["ok"] is ok and not e.get("not_judged"), e
    if not ok:
        assert any("sharing it was asked up" in p for p in e["problems"]), e["problems"]


async def test_an_invalidate_of_a_tcp_object_needs_no_second_connection() -> None:
    """A TCP object is the probe's own: no mate is opened, so a NIC with room for the probe
    alone judges it whole."""
    daemon = FakeFullNic(capacity=6, workers=5)
    rec = await _invalidated(daemon, "tcp")
    assert len(daemon.state) == 1 and "mate_state_before" not in rec, rec
    (e,), _ = judge([rec], [], {})
    assert e["ok"] and not e.get("not_judged"), e


# -- a real soak on a NIC with room for the workers' connections and no more --------------------
STACK = """
[[layer]]
name = "tcpip"
kind = "host"
lower = ["im0"]

[[layer]]
name = "im0"
kind = "passthrough"
lower = ["nic0"]

[[layer]]
name = "nic0"
kind = "target"
max_connections = {}
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("room", "judged"), [(31, True), (30, False)])
def test_a_soak_on_a_full_nic_does_not_fail_for_its_own_probe(
    tmp_path: Path, room: int, judged: bool
) -> None:
    """30 connections on a NIC with room for 31: the probe takes the last, its mate finds
    none, and the neighbor's invalidate is judged on the workers' connections asked up with
    it. With room for 30: the probe finds none, and the invalidate is not injected, said so.
    Before, both runs failed (`not injected: NdisStatusError: ... OFFLOAD_TCP_ENTRIES`)."""
    config = tmp_path / "stack.toml"
    config.write_text(STACK.format(room))
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "chimney_client.soak", "--daemon-config", str(config)]
    argv += ["-n", "30", "--duration", "6", "--faults", "invalidate@3s", "--quiet"]
    argv += ["--json", str(out), "--no-rss", "--settle", "10"]
    soak = subprocess.run(
        argv, capture_output=True, text=True, env=soak_env(tmp_path), timeout=100, check=False
    )
    assert out.exists(), soak.stderr[-3000:]
    report = json.loads(out.read_text())
    assert soak.returncode == 0 and report["ok"], (report["failures"], report["faults"])
    [fault] = report["faults"]
    if judged:
        assert fault["injected"] == 1 and fault["connections_uploaded"] > 0, fault
    else:
        assert (fault["injected"], fault.get("not_injected")) == (0, 1), fault
        [why] = report["not_judged"]
        assert "OFFLOAD_TCP_ENTRIES" in why and f"nic0 carries {room} of {room}" in why, why


def test_a_pass_with_a_check_not_judged_says_so_on_its_verdict_line() -> None:
    """The run passes, and its table says, beside the fault's row, that not all was judged."""
    from rich.console import Console

    from chimney_client.soak.render import render_report

    rec = _rec("invalidate", object="neighbor", layer="nic0")
    rec["not_judged"] = "the soak's probe connection could not be offloaded: full"
    daemon = {"crashed": False, "exit_status": None, "spawned": False, "address": "x", "pid": 1}
    r = _report([rec], [], {}, daemon=daemon)
    r["connections_detail"].update(opened_total=10)
    assert r["ok"], r["failures"]
    console = Console(record=True, width=300)
    render_report(r, console)
    text = console.export_text()
    assert "fault invalidate │ ok, not all judged: " in text, text
    assert "PASS (1 check(s) of the soak's own probes not judged" in text, text
