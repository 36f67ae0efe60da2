"""What the soak's probed faults (soak/probe_faults.py) read from the daemon, judged on the
answers of a fake daemon: each answer here is one a real daemon can give, and the judgement
must not pass on it for the wrong reason (docs/faults.md, the soak table)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimney_client.errors import InvalidState
from chimney_client.soak import probe_faults
from chimney_client.soak.layer_faults import LayerFaults
from chimney_client.soak.outcomes import judge

pytestmark = pytest.mark.soak

Rec = dict[str, Any]


class FakeTeam:
    """A daemon of one teaming MUX (`team0`) over nic0..nic2, as stack.info and stack.stats
    answer it: each send `team0` makes is counted by team0 (NdisOffloadTcpSend) and completed
    by the NIC it went to (NdisTcpOffloadSendComplete). The probe's connection is on `nic1`;
    every stack.stats read while a fault is armed adds `busy` sends of other connections, all
    on nic0."""

    def __init__(self, busy: int = 40) -> None:
        self.busy = busy
        self.armed: dict[int, Rec] = {}
        self.next_fid = 1
        self.calls: dict[str, dict[str, int]] = {n: {} for n in ("team0", "nic0", "nic1", "nic2")}
        self.echo: dict[int, bytes] = {}
        self.tcp = {"nic0": 5, "nic1": 3, "nic2": 4}

    def send_on(self, nic: str, n: int = 1) -> None:
        team, done = self.calls["team0"], self.calls[nic]
        team["NdisOffloadTcpSend"] = team.get("NdisOffloadTcpSend", 0) + n
        key = "NdisTcpOffloadSendComplete/NDIS_STATUS_SUCCESS"
        done[key] = done.get(key, 0) + n

    async def stack_info(self) -> Rec:
        lowers = {n: {"in_service": True} for n in ("nic0", "nic1", "nic2")}
        return {
            "layers": [
                {"name": "tcpip", "kind": "host", "lower": ["team0"]},
                {"name": "team0", "kind": "mux", "lowers": lowers},
                *({"name": n, "kind": "target", "tcp": self.tcp[n]} for n in lowers),
            ]
        }

    async def stack_stats(self) -> Rec:
        if self.armed:
            self.send_on("nic0", self.busy)
        return {"layers": {n: {"calls": dict(c)} for n, c in self.calls.items()}}

    async def tcp_connect(self, host: str, port: int, target: str | None = None) -> int:
        cid = 100 + len(self.echo)
        self.echo[cid] = b""
        return cid

    async def tcp_send(self, cid: int, data: bytes) -> int:
        for f in self.armed.values():
            if f["kind"] == "delay":
                await asyncio.sleep(f["ms"] / 1000.0)
        self.send_on("nic1")
        self.echo[cid] += data
        return len(data)

    async def tcp_recv(self, cid: int, n: int, timeout_ms: int) -> bytes:
        out, self.echo[cid] = self.echo[cid][:n], self.echo[cid][n:]
        return out

    async def tcp_info(self, cid: int) -> Rec:
        return {"state": "offloaded", "path": ["tcpip", "team0", "nic1"]}

    async def tcp_close(self, cid: int) -> bool:
        return True

    async def fault_inject(self, kind: str, **spec: Any) -> int:
        fid, self.next_fid = self.next_fid, self.next_fid + 1
        self.armed[fid] = {"id": fid, "kind": kind, **spec}
        return fid

    async def fault_list(self) -> list[Rec]:
        return list(self.armed.values())

    async def fault_clear(self, fid: int) -> bool:
        self.armed.pop(fid, None)
        return True


@pytest.fixture(autouse=True)
def _no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """No wait after a fault for what the daemon asks up late (no worker here asks), and a
    short one for a state a fake daemon never changes."""
    monkeypatch.setattr(probe_faults, "SETTLE_MAX_S", 0.5)
    monkeypatch.setattr(probe_faults, "RESUME_GRACE_S", 0.0)
    monkeypatch.setattr(probe_faults, "STAGGER_S", 0.0)


def _prober(daemon: Any) -> LayerFaults:
    """The coordinator's fault half, with nothing but `daemon` to talk to."""
    lf = LayerFaults.__new__(LayerFaults)
    lf.control = daemon
    lf.interrupted = asyncio.Event()
    lf.peer_addrs = [("127.0.0.1", 9)]
    lf.nics_settling = 0
    lf.ins = []
    lf.say = lambda text: None  # type: ignore[method-assign]

    async def settle(rec: Rec, layer: str, shard: int | None) -> None:
        return None

    lf.settle = settle  # type: ignore[method-assign]
    return lf


def _rec(kind: str, **params: str) -> Rec:
    return {"tag": 1, "kind": kind, "params": params, "injected": False, "t": 0.0}


# -- 1: a delay on one NIC of a MUX counts that NIC's calls --------------------------------------
async def test_a_delay_on_a_nic_under_a_mux_counts_that_nics_calls_only() -> None:
    """Under a MUX, stack.stats counts the MUX's sends to all its NICs together: 40 sends to
    nic0 per read while a delay on nic1 was armed are not calls nic1 held. Only the probe's
    own send went to nic1."""
    daemon = FakeTeam(busy=40)
    lf = _prober(daemon)
    rec = _rec("delay", layer="nic1", call="MiniportTcpOffloadSend", ms="20", **{"for": "0.1s"})
    await lf.inject_probed(rec, {})
    assert not rec.get("error") and not rec.get("probe_error"), rec
    assert rec["calls_while_armed"] == 1, rec


async def test_a_delay_on_a_nic_that_got_no_call_delayed_nothing() -> None:
    """A NIC under a MUX that completed no call while the delay was armed held none, however
    many its MUX made to the other NICs meanwhile: the judgement says it delayed nothing."""
    daemon = FakeTeam(busy=40)
    daemon.send_on = _only_nic0(daemon.send_on)  # type: ignore[method-assign]
    lf = _prober(daemon)
    rec = _rec("delay", layer="nic1", call="MiniportTcpOffloadSend", ms="20", **{"for": "0.1s"})
    await lf.inject_probed(rec, {})
    (e,), _ = judge([rec], [], {})
    assert any("it delayed nothing" in p for p in e["problems"]), (e, rec)


def _only_nic0(send_on: Any) -> Any:
    def on_nic0(nic: str, n: int = 1) -> None:
        send_on("nic0", n)

    return on_nic0


# -- 2: no count of what is left offloaded is no pass --------------------------------------------
class FakeSilent(FakeTeam):
    """A daemon whose stack.info and stack.stats say nothing of the NIC (no `tcp`, no gauge):
    the soak's `tcp_left` answers None."""

    async def stack_info(self) -> Rec:
        return {"layers": [{"name": "tcpip", "kind": "host"}]}

    async def stack_stats(self) -> Rec:
        return {"layers": {}}

    async def tcp_offload(self, cid: int) -> Rec:
        if any(f["kind"] == "host_event" for f in self.armed.values()):
            raise InvalidState(InvalidState.code, "INVALID_STATE: media_disconnect on nic1")
        return {"state": "offloaded"}

    async def tcp_info(self, cid: int) -> Rec:
        held = any(f["kind"] == "host_event" for f in self.armed.values())
        return {"state": "host" if held else "offloaded", "path": ["tcpip"]}


async def test_a_host_event_with_no_count_of_what_is_left_on_its_nic_does_not_pass() -> None:
    lf = _prober(FakeSilent())
    rec = _rec("host_event", layer="nic1", event="media_disconnect", **{"for": "0.05s"})
    await lf.inject_probed(rec, {})
    assert rec["injected"] and "offloaded_at_end" in rec and rec["offloaded_at_end"] is None, rec
    (e,), _ = judge([rec], [], {})
    assert any("could not judge" in p for p in e["problems"]), e["problems"]


def test_an_outage_with_no_count_of_what_is_left_on_its_nic_does_not_pass() -> None:
    rec = {
        "tag": 1,
        "kind": "target_failure",
        "params": {"layer": "nic0", "for": "1s", "shard": ""},
        "injected": True,
        "cleared": True,
        "t0": 10.0,
        "t1": 10.01,
        "t_clear0": 11.0,
        "t_clear1": 11.01,
        "offloaded_before": None,
        "offloaded_at_end": None,
    }
    (e,), _ = judge([rec], [], {})
    assert any("could not judge" in p for p in e["problems"]), e["problems"]


# -- 3: the invalidate is judged on what the daemon did at it, not on a count taken before -------
class FakeNic0(FakeTeam):
    """One NIC, nic0, carrying the soak's connections and `workers` of the workers', all to one
    echo peer (one path, one neighbor). An invalidate of a path or neighbor asks up every
    connection on it then (`shares`: a daemon that invalidates only the connection's own TCP
    object asks up that one alone). A worker's connection closes as the daemon is asked its
    invalidate count (`close_at_count`): after the soak counted the NIC, before the invalidate."""

    def __init__(self, workers: int = 1, shares: bool = True) -> None:
        super().__init__(busy=0)
        self.workers = workers
        self.shares = shares
        self.state: dict[int, str] = {}
        self.invalidates = 0

    async def stack_info(self) -> Rec:
        mine = sum(1 for s in self.state.values() if s == "offloaded")
        return {
            "layers": [
                {"name": "tcpip", "kind": "host", "lower": ["nic0"]},
                {"name": "nic0", "kind": "target", "tcp": mine + self.workers},
            ]
        }

    async def stack_stats(self) -> Rec:
        self.workers = 0  # the worker's connection closes now, its close answered
        return {"layers": {"tcpip": {"calls": {"NdisInvalidateOffload": self.invalidates}}}}

    async def tcp_connect(self, host: str, port: int, target: str | None = None) -> int:
        cid = await super().tcp_connect(host, port, target)
        self.state[cid] = "offloaded"
        return cid

    async def tcp_offload(self, cid: int) -> Rec:
        self.state[cid] = "offloaded"
        return {"state": "offloaded"}

    async def tcp_info(self, cid: int) -> Rec:
        return {"state": self.state[cid], "path": ["tcpip", "nic0"]}

    async def fault_inject(self, kind: str, **spec: Any) -> int:
        assert kind == "invalidate"
        self.invalidates += 1
        hit = [c for c, s in self.state.items() if s == "offloaded"] if self.shares else []
        for cid in {spec["conn"], *hit}:
            self.state[cid] = "host"
        return await super().fault_inject(kind, **spec)


def _invalidate(obj: str = "neighbor") -> Rec:
    return _rec("invalidate", object=obj, layer="nic0")


async def test_an_invalidate_passes_when_the_only_other_connection_closed_before_it() -> None:
    """The NIC carried one worker's connection when the soak counted it, none at the invalidate:
    that none of the workers' was asked up is no fault of the daemon's."""
    lf = _prober(FakeNic0(workers=1))
    rec = _invalidate()
    await lf.inject_probed(rec, {})
    assert not rec.get("error") and not rec.get("probe_error"), rec
    (e,), _ = judge([rec], [], {})
    assert e["ok"], (e["problems"], rec)


async def test_an_invalidate_that_asked_up_only_its_own_connection_fails() -> None:
    """A daemon that invalidates the probe's TCP object alone leaves the soak's other
    connection sharing the neighbor offloaded on the stale object (spec §3.5)."""
    lf = _prober(FakeNic0(workers=0, shares=False))
    rec = _invalidate()
    await lf.inject_probed(rec, {})
    (e,), _ = judge([rec], [], {})
    assert any("sharing it was asked up" in p for p in e["problems"]), (e["problems"], rec)
    # a TCP object is the connection's own: the other stays offloaded, and that is right
    lf = _prober(FakeNic0(workers=0, shares=False))
    rec = _invalidate("tcp")
    await lf.inject_probed(rec, {})
    (e,), _ = judge([rec], [], {})
    assert e["ok"], (e["problems"], rec)
