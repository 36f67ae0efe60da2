"""The `delay` and `host_event` checks made with a connection of the soak's own
(soak/probe_faults.py) on a NIC with no room for it (full at `max_connections`, spec §8), as
the `invalidate`'s is (test_probe_no_room.py): what the probe could not show is not judged,
said, and fails no run; where the NIC has room the check is made as before, and a refusal
the NIC's room does not explain still fails."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chimney_client.errors import InvalidState, NdisStatusError
from chimney_client.soak.outcomes import judge
from tests.soak.support import soak_env
from tests.soak.test_probe_doubts import FakeTeam, _prober, _rec
from tests.soak.test_probe_no_room import STACK, FakeFullNic, _short  # noqa: F401 (autouse)
from tests.soak.test_probed_faults import _upload
from tests.soak.test_verdict import _report

pytestmark = pytest.mark.soak

Rec = dict[str, Any]
WITHHELD = "INVALID_STATE: the host withholds offloads to nic0: {} (spec §6.2)"
FAILURE = "NDIS_STATUS: NDIS_STATUS_FAILURE (0xC0000001) nic0 refused the initiate"


class FakeFullNicFaults(FakeFullNic):
    """FakeFullNic (nic0 with room for `capacity`, `workers` of them the workers') that takes a
    `delay` (each send or initiate of a connection offloaded on nic0 held `ms`; every
    stack.stats read while it is armed counts `busy` sends of the workers', none of their
    initiates) and a `host_event` (nic0 emptied and withheld until the clear, then the
    workers' connections back on it: `refill` of them). `refuse_after`: a `tcp.offload` after
    the clear is refused NDIS_STATUS_FAILURE, whatever the room (a daemon's fault)."""

    def __init__(
        self, capacity: int, workers: int, refill: int | None = None, refuse_after: bool = False
    ) -> None:
        super().__init__(capacity, workers)
        self.refill = workers if refill is None else refill
        self.refuse_after = refuse_after
        self.sends = self.initiates = 0

    def armed_kind(self, kind: str) -> Rec | None:
        return next((f for f in self.armed.values() if f["kind"] == kind), None)

    async def stack_stats(self) -> Rec:
        delay = self.armed_kind("delay")
        if delay is not None and delay["call"] == "MiniportTcpOffloadSend":
            self.sends += 5
        calls = {"NdisOffloadTcpSend": self.sends, "NdisInitiateOffload": self.initiates}
        return {"layers": {"tcpip": {"calls": calls}}}

    async def tcp_connect(self, host: str, port: int, target: str | None = None) -> int:
        cid = await super().tcp_connect(host, port, target)
        if self.armed_kind("host_event") is not None or self.refuse_after:
            self.state[cid] = "host"
        return cid

    async def tcp_upload(self, cid: int) -> Rec:
        self.state[cid] = "host"
        return {"state": "host"}

    async def tcp_offload(self, cid: int) -> Rec:
        event = self.armed_kind("host_event")
        if event is not None:
            raise InvalidState(InvalidState.code, WITHHELD.format(event["event"]))
        if self.refuse_after and self.cleared:
            raise NdisStatusError(NdisStatusError.code, FAILURE)
        refused = self.state[cid] != "offloaded" and self.used() >= self.capacity
        result = await super().tcp_offload(cid)
        delay = self.armed_kind("delay")
        if not refused and delay is not None and delay["call"] == "MiniportInitiateOffload":
            self.initiates += 1
            await asyncio.sleep(delay["ms"] / 1000.0)
        return result

    async def tcp_send(self, cid: int, data: bytes) -> int:
        delay = self.armed_kind("delay")
        held = delay is not None and delay["call"] == "MiniportTcpOffloadSend"
        if held and self.state[cid] == "offloaded":
            self.sends += 1
            await asyncio.sleep(delay["ms"] / 1000.0)  # type: ignore[index]
        self.echo[cid] += data
        return len(data)

    cleared = False

    async def fault_inject(self, kind: str, **spec: Any) -> int:
        if kind == "host_event":
            self.workers = 0  # the host uploads everything on nic0 (spec §6.2)
        return await FakeTeam.fault_inject(self, kind, **spec)

    async def fault_clear(self, fid: int) -> bool:
        if self.armed.get(fid, {}).get("kind") == "host_event":
            self.workers, self.cleared = self.refill, True
        return await super().fault_clear(fid)


def _delay(call: str) -> Rec:
    return _rec("delay", layer="nic0", call=call, ms="20", **{"for": "0.1s"})


async def _injected(daemon: FakeFullNicFaults, rec: Rec) -> Rec:
    await _prober(daemon).inject_probed(rec, {})
    assert rec["injected"] and not rec.get("error") and not rec.get("probe_error"), rec
    return rec


@pytest.mark.parametrize("call", ["MiniportTcpOffloadSend", "MiniportInitiateOffload"])
async def test_a_delay_whose_probe_finds_no_room_is_not_judged_on_it(call: str) -> None:
    """nic0 full with the workers' 5: the probe stays in the host stack, where no call of it
    goes through nic0. Before, the send's delay failed `a probe call made while delayed 20 ms
    took 0.000 s` and the initiate's `the probe failed: NdisStatusError: ... ENTRIES`."""
    rec = await _injected(FakeFullNicFaults(capacity=5, workers=5), _delay(call))
    r = _report([rec], [], {})
    assert r["ok"], r["failures"]
    [f] = r["faults"]
    assert any("whether a call of the soak's own was held" in t for t in f["not_judged"]), f
    assert all("OFFLOAD_TCP_ENTRIES" in t for t in f["not_judged"]), f


@pytest.mark.parametrize("call", ["MiniportTcpOffloadSend", "MiniportInitiateOffload"])
async def test_a_delay_whose_probe_has_room_is_judged_on_it(call: str) -> None:
    rec = await _injected(FakeFullNicFaults(capacity=6, workers=5), _delay(call))
    assert rec["probe_held_s"] >= 0.02 - 0.005, rec
    (e,), _ = judge([rec], [], {})
    assert e["ok"] and not e.get("not_judged"), e


async def test_a_delay_whose_probe_is_refused_with_room_is_not_injected() -> None:
    """Refused NDIS_STATUS_FAILURE by a NIC with room: the daemon's to explain, a failure."""
    daemon = FakeFullNicFaults(capacity=100, workers=5, refuse_after=True)
    daemon.cleared = True  # refused from the start
    rec = _delay("MiniportTcpOffloadSend")
    await _prober(daemon).inject_probed(rec, {})
    assert not rec["injected"] and "NDIS_STATUS_FAILURE" in rec["error"], rec
    (e,), _ = judge([rec], [], {})
    assert not e["ok"], e


def _host_event() -> Rec:
    return _rec("host_event", layer="nic0", event="media_disconnect", **{"for": "0.05s"})


def _workers_uploaded(rec: Rec) -> dict[str, list[Rec]]:
    """The workers' 5 connections on nic0 uploaded for the event, then offloaded again."""
    return {"unrequested": [_upload(c, float(rec["t1"]), None) for c in range(1, 6)]}


async def test_a_host_event_whose_nic_is_full_again_after_it_is_not_judged_there() -> None:
    """After the clear the workers' 5 fill nic0 again: the probe's offload, which must work
    then, finds no room. Before: `the probe failed: NdisStatusError: ... ENTRIES`, a failed
    run of a daemon that did right."""
    rec = await _injected(FakeFullNicFaults(capacity=5, workers=5), _host_event())
    r = _report([rec], [], _workers_uploaded(rec))
    assert r["ok"], r["failures"]
    [f] = r["faults"]
    [why] = f["not_judged"]
    assert "works after fault.clear" in why and "nic0 carries 5 of 5" in why, why


@pytest.mark.parametrize(("refill", "refuse", "ok"), [(4, False, True), (0, True, False)])
async def test_a_host_event_with_room_after_it_is_judged_there(
    refill: int, refuse: bool, ok: bool
) -> None:
    """Room for the probe after the clear: its offload must work; refused FAILURE there (no
    lack of room) still fails the check."""
    daemon = FakeFullNicFaults(capacity=5, workers=5, refill=refill, refuse_after=refuse)
    rec = await _injected(daemon, _host_event())
    (e,), _ = judge([rec], [], _workers_uploaded(rec))
    assert e["ok"] is ok and not e.get("not_judged"), e
    if not ok:
        assert any("still failed after fault.clear" in p for p in e["problems"]), e


@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    "fault", ["host_event@3s", "delay@3s", "delay@3s/call=MiniportInitiateOffload"]
)
def test_a_soak_on_a_full_nic_does_not_fail_for_its_own_probe(tmp_path: Path, fault: str) -> None:
    """30 connections on a NIC with room for 30. Before: each run failed, for its probe alone
    (host_event: `conn 31: offload refused at reoffload (NDIS_STATUS_OFFLOAD_TCP_ENTRIES)`,
    the probe taking a worker's place; delay: `took 0.001 s`, `the probe failed`)."""
    config = tmp_path / "stack.toml"
    config.write_text(STACK.format(30))
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "chimney_client.soak", "--daemon-config", str(config)]
    argv += ["-n", "30", "--duration", "8", "--faults", fault, "--quiet"]
    argv += ["--json", str(out), "--no-rss", "--settle", "10"]
    soak = subprocess.run(
        argv, capture_output=True, text=True, env=soak_env(tmp_path), timeout=150, check=False
    )
    assert out.exists(), soak.stderr[-3000:]
    report = json.loads(out.read_text())
    assert soak.returncode == 0 and report["ok"], (report["failures"], report["faults"])
    [f] = report["faults"]
    assert f["injected"] == 1 and report["not_judged"], f
    # --quiet: no table, no verdict line; the pass with less judged is said on stderr (before:
    # nothing at all, exit 0)
    assert "check(s) of the soak's own probes not judged: " in soak.stderr, soak.stderr


class FakeShardedFull(FakeFullNicFaults):
    """FakeFullNicFaults in two shards, nic0 of each with room for 30 and 20 of them taken; the
    soak's client is in shard 1. stack.info's daemon-wide nic0 carries the sum, 40, against
    one shard's `max_connections`, 30. Every offload of the soak's is refused FAILURE."""

    def __init__(self) -> None:
        super().__init__(capacity=30, workers=20, refuse_after=True)
        self.cleared = True  # refused from the start

    async def stack_info(self) -> Rec:
        own = await super().stack_info()
        folded = [dict(la) for la in own["layers"]]
        folded[1]["tcp"] = 2 * int(folded[1]["tcp"])
        other = {"shard": 0, "layers": own["layers"]}
        return {"layers": folded, "shard": 1, "shards": [other, {"shard": 1, **own}]}


async def test_a_refusal_is_weighed_against_the_room_of_the_probes_shard() -> None:
    """The daemon-wide sum (40 of 30) is no lack of room in the probe's shard (20 of 30): the
    FAILURE is the daemon's to explain. Before: the delay's probe refusal read the sum, and
    the run passed with the probe's timing `not judged` (`rec["injected"]` True)."""
    rec = _delay("MiniportTcpOffloadSend")
    await _prober(FakeShardedFull()).inject_probed(rec, {})
    assert not rec["injected"] and "NDIS_STATUS_FAILURE" in rec["error"], rec
    assert "nic0 carries 20 of 30" in rec["error"], rec
