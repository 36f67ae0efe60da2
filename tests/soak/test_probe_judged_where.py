"""Where the soak's probed faults read what they judge (docs/faults.md, the soak table): a
`delay` put into one shard (`/shard=K`) counts the calls its NIC held in that shard only (the
same NIC of another shard, busy meanwhile, held none of them); an `invalidate` of a path or
neighbor is judged on a second connection of the soak's own only if that one was offloaded
before it (one in the host stack stays there whatever the daemon does; refused with room on its
NIC, a problem)."""

from __future__ import annotations

from typing import Any

import pytest

from chimney_client.soak import probe_faults
from chimney_client.soak.outcomes import judge
from tests.soak.test_probe_doubts import FakeNic0, FakeTeam, _prober, _rec

pytestmark = pytest.mark.soak

Rec = dict[str, Any]
NICS = ("nic0", "nic1", "nic2")


class FakeShardedTeam(FakeTeam):
    """FakeTeam in two shards, each with its team0 over nic0..nic2. The probe's client is in
    shard 1, where its send goes to nic1; every stack.stats read while a fault is armed adds
    `busy` sends of other connections to nic1 of shard 0, where the delay is not."""

    def __init__(self, busy: int = 40) -> None:
        super().__init__(busy)
        self.by_shard: dict[int, dict[str, dict[str, int]]] = {
            k: {n: {} for n in ("team0", *NICS)} for k in (0, 1)
        }

    def send_on(self, nic: str, n: int = 1, shard: int = 1) -> None:
        calls = self.by_shard[shard]
        team, done = calls["team0"], calls[nic]
        team["NdisOffloadTcpSend"] = team.get("NdisOffloadTcpSend", 0) + n
        key = "NdisTcpOffloadSendComplete/NDIS_STATUS_SUCCESS"
        done[key] = done.get(key, 0) + n

    async def stack_info(self) -> Rec:
        one = (await super().stack_info())["layers"]
        shards = [{"shard": k, "state": "running", "layers": one} for k in (0, 1)]
        return {"layers": one, "shard": 1, "shards": shards}

    async def stack_stats(self) -> Rec:
        if self.armed:
            self.send_on("nic1", self.busy, shard=0)
        parts = {
            k: {n: {"calls": dict(c)} for n, c in calls.items()}
            for k, calls in self.by_shard.items()
        }
        total: dict[str, dict[str, Any]] = {}
        for layers in parts.values():
            for name, la in layers.items():
                calls = total.setdefault(name, {"calls": {}})["calls"]
                for key, n in la["calls"].items():
                    calls[key] = calls.get(key, 0) + n
        shards = [{"shard": k, "state": "running", "layers": v} for k, v in parts.items()]
        return {"layers": total, "shards": shards}

    async def close(self) -> None:
        return None


async def test_a_delay_in_one_shard_counts_its_nics_calls_in_that_shard_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    daemon = FakeShardedTeam(busy=40)
    lf = _prober(daemon)

    async def client_in_shard(shard: int) -> Any:
        assert shard == 1
        return daemon

    lf._client_in_shard = client_in_shard  # type: ignore[method-assign]
    monkeypatch.setattr(probe_faults, "SETTLE_MAX_S", 0.5)
    rec = _rec("delay", layer="nic1", call="MiniportTcpOffloadSend", ms="20", **{"for": "0.1s"})
    await lf.inject_probed(rec, {"shard": 1})
    assert not rec.get("error") and not rec.get("probe_error"), rec
    # the probe's one send, in shard 1; not shard 0's nic1's 40 per read
    assert rec["calls_while_armed"] == 1, rec


class FakeMateInHost(FakeNic0):
    """FakeNic0 where the soak's second connection (the probe's mate) is never offloaded: its
    offload at connect and its `tcp.offload` leave it in the host stack (taken off the NIC
    meanwhile, as another fault or a full NIC may). The daemon invalidates the probe's own
    TCP object alone."""

    async def tcp_connect(self, host: str, port: int, target: str | None = None) -> int:
        cid = await super().tcp_connect(host, port, target)
        if len(self.state) == 2:
            self.state[cid] = "host"
        return cid

    async def tcp_offload(self, cid: int) -> Rec:
        if cid != min(self.state):
            return {"state": "host"}
        return await super().tcp_offload(cid)


async def test_an_invalidate_whose_sharing_connection_was_never_offloaded_is_not_judged_ok(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mate in the host stack before the invalidate is in the host stack after it whatever
    the daemon did: that is no sign that it was asked up. Nor, with nic0 saying nothing of
    being full (stack.info), is its quiet refusal a lack of room: the daemon's to explain, a
    problem, not a check left "not judged" (test_probe_refused.py)."""
    monkeypatch.setattr(probe_faults, "PROBE_OFFLOAD_S", 0.1)
    lf = _prober(FakeMateInHost(workers=0, shares=False))
    rec = _rec("invalidate", object="neighbor", layer="nic0")
    await lf.inject_probed(rec, {})
    assert not rec.get("error") and not rec.get("probe_error"), rec
    (e,), _ = judge([rec], [], {})
    assert not e["ok"] and not e.get("not_judged"), (e, rec)
    assert any("tcp.offload left it host" in p for p in e["problems"]), (e["problems"], rec)
