"""Where the probe's refusal rules (soak/probe_faults.py) stop excusing: a daemon must not pass
by naming, in tcp.info's `offload_refused`, a full NIC the probe never went to, and a probe that
took a place on its NIC in one shard explains no worker's refusal in another shard (each shard
has its own connections and its own `max_connections`, docs/rpc.md Shards)."""

from __future__ import annotations

from typing import Any

import pytest

from chimney_client.errors import NdisStatusError
from chimney_client.soak.conn import Conn
from chimney_client.soak.probe_faults import TCP_ENTRIES
from chimney_client.soak.state import Rpc
from tests.soak.test_outage_accounts import _state
from tests.soak.test_probe_doubts import _prober, _rec
from tests.soak.test_probe_no_room import FULL, FakeFullNic, _short  # noqa: F401 (autouse)
from tests.soak.test_probe_offload_refused import FakeQuietRefusal
from tests.soak.test_probe_takes_a_place import _reopen
from tests.soak.test_verdict import _report

pytestmark = pytest.mark.soak

Rec = dict[str, Any]


class FakeTwoNics(FakeQuietRefusal):
    """nic0 (the probe's, room to spare) and nic1 (full) side by side under the host: nic1 is
    no layer a connection pinned to nic0 goes through."""

    async def stack_info(self) -> Rec:
        info = await super().stack_info()
        layers = info["layers"]
        layers[0] = {**layers[0], "lower": ["nic0", "nic1"]}
        nic1 = {"name": "nic1", "kind": "target", "tcp": 8, "max_connections": 8}
        return {**info, "layers": [*layers, nic1]}


@pytest.mark.parametrize(
    ("by", "status"),
    [
        ("nic1", "NDIS_STATUS_FAILURE"),
        ("nic9", "NDIS_STATUS_FAILURE"),
        ("nic1", "NDIS_STATUS_OFFLOAD_TCP_ENTRIES"),
        ("nic9", "NDIS_STATUS_OFFLOAD_TCP_ENTRIES"),
    ],
)
async def test_a_refusal_blamed_on_a_layer_off_the_probes_way_is_not_excused(
    by: str, status: str
) -> None:
    """The probe pinned to nic0, which has room: a daemon whose tcp.offload answers without an
    error and whose tcp.info says a refusal by nic1 (full, but beside nic0, not above it) or
    by a layer it does not have refused a connection it could take, whatever status it gives.
    Before, nic1's room excused it, and so did the no-room status of either claim: the run
    passed with the invalidate `not judged ... (refused by nic1) (stack.info: ...)`."""
    said = {"status": status, "layer": by, "reason": "failed"}
    rec = _rec("invalidate", object="tcp", layer="nic0")
    await _prober(FakeTwoNics(said)).inject_probed(rec, {})
    r = _report([rec], [], {})
    assert not r["ok"], (rec, r["not_judged"])
    assert "ValueError" in rec.get("error", ""), rec


async def test_a_refusal_blamed_on_a_full_layer_above_the_nic_is_still_excused() -> None:
    """A MUX above the pinned NIC (docs/rpc.md: `team0` for a full pinned NIC) is on its way:
    its saying no room stays excused."""

    class FakeUnderTeam(FakeQuietRefusal):
        async def stack_info(self) -> Rec:
            info = await super().stack_info()
            host, nic0 = info["layers"]
            team = {"name": "team0", "kind": "mux", "lower": ["nic0"]}
            team.update(lowers={"nic0": {"in_service": False}})
            return {**info, "layers": [{**host, "lower": ["team0"]}, team, nic0]}

    said = {"status": "NDIS_STATUS_FAILURE", "layer": "team0", "reason": "out of service"}
    rec = _rec("invalidate", object="tcp", layer="nic0")
    await _prober(FakeUnderTeam(said)).inject_probed(rec, {})
    r = _report([rec], [], {})
    assert r["ok"], r["failures"]
    assert "(refused by team0)" in rec["not_judged"], rec


class FakeShardedFullNic(FakeFullNic):
    """FakeFullNic as shard 0 of a daemon of two shards: the probe's client is in shard 0."""

    async def stack_info(self) -> Rec:
        info = await super().stack_info()
        other = {**info, "shard": 1}
        return {**info, "shard": 0, "shards": [{**info, "shard": 0}, other]}

    async def stack_stats(self) -> Rec:
        stats = await super().stack_stats()
        return {**stats, "shards": [{**stats, "shard": 0}, {"shard": 1, "layers": {}}]}


async def test_a_refusal_in_another_shard_is_not_the_probes() -> None:
    """The probe took nic0's last place in shard 0; a worker's reopen refused in shard 1 at the
    same moment had nic0 of shard 1 to itself. Before, `_refused_for_the_probe` took it as the
    probe's doing (`refused_for_the_probe` 1) and the run passed."""
    daemon = FakeShardedFullNic(capacity=6, workers=6, frees_after=2)
    rec = _rec("invalidate", object="tcp", layer="nic0")
    await _prober(daemon).inject_probed(rec, {})
    assert rec["injected"] and rec["shard"] == 0 and rec.get("probe_no_room_t"), rec
    t = rec["t0"] - 0.001
    elsewhere = {**_reopen(t), "shard": 1}
    r = _report([rec], [], {"refusals": [elsewhere]})
    assert not r["ok"], r["faults"]
    assert "offload refused at connect" in " ".join(r["failures"]), r["failures"]
    # in the probe's own shard (or a daemon that does not say): the probe's, as before
    for ep in ({**_reopen(t), "shard": 0}, _reopen(t)):
        r = _report([rec], [], {"refusals": [ep]})
        assert r["ok"], r["failures"]


@pytest.mark.parametrize("shard", [1, None])
def test_a_workers_refusal_says_its_shard(shard: int | None) -> None:
    """The worker's refusal episode keeps the shard of its RPC client (as an upload's record
    does), which `_refused_for_the_probe` needs; a daemon of one process: none."""
    st = _state()
    st.rpc_by_cid[9] = Rpc(client=None, ops=1, shard=shard)  # type: ignore[arg-type]
    conn = Conn(9, 1, 0, 0, 1.0)
    st.refused(conn, "connect", None)
    [ep] = st.obs["refusals"]
    assert ep.get("shard") == shard, ep


class FakeSaysFull(FakeFullNic):
    """nic0 with room to spare (5 of 100) that answers the probe's first `lies` offers
    OFFLOAD_TCP_ENTRIES all the same, then takes it."""

    def __init__(self, lies: int) -> None:
        super().__init__(capacity=100, workers=5)
        self.lies = lies

    async def tcp_offload(self, cid: int) -> Rec:
        if self.lies > 0:
            self.lies -= 1
            raise NdisStatusError(NdisStatusError.code, FULL.format(self.capacity))
        return await super().tcp_offload(cid)


async def test_a_no_room_answer_with_room_on_the_nic_explains_no_workers_refusal() -> None:
    """The probe took no one's place on a NIC that stack.info says had 95 places free: a
    worker's reopen refused meanwhile is the daemon's to explain. Before, the probe's first
    answer of OFFLOAD_TCP_ENTRIES alone opened the window (`probe_no_room_t`) and the run
    passed with `refused for the probe 1`."""
    rec = _rec("invalidate", object="tcp", layer="nic0")
    await _prober(FakeSaysFull(lies=2)).inject_probed(rec, {})
    assert rec["injected"], rec
    assert "probe_no_room_t" not in rec, rec
    r = _report([rec], [], {"refusals": [_reopen(rec["t0"] - 0.001)]})
    assert not r["ok"], r["faults"]
    assert "offload refused at connect" in " ".join(r["failures"]), r["failures"]


class FakeSaysFullAtConnect(FakeSaysFull):
    """FakeSaysFull whose connections are not offloaded at connect: the probe's first offer is
    its `tcp.offload`, answered OFFLOAD_TCP_ENTRIES while the NIC has room."""

    async def tcp_connect(self, host: str, port: int, target: str | None = None) -> int:
        cid = await super().tcp_connect(host, port, target)
        self.state[cid] = "host"
        return cid


async def test_a_no_room_error_with_room_on_the_nic_is_not_excused() -> None:
    """The probe's own offload answered OFFLOAD_TCP_ENTRIES at every offer while stack.info said
    nic0 carried 5 of 100: the daemon refused a connection it had room for. Before, the status
    alone excused it, and the run passed with the invalidate `not judged`."""
    rec = _rec("invalidate", object="tcp", layer="nic0")
    await _prober(FakeSaysFullAtConnect(lies=1000)).inject_probed(rec, {})
    r = _report([rec], [], {})
    assert not r["ok"], (rec, r["not_judged"])
    assert "ValueError" in rec.get("error", "") and "nic0 carries 5 of 100" in rec["error"], rec


@pytest.mark.parametrize(
    "status",
    ["NDIS_STATUS_OFFLOAD_PATH_ENTRIES", "NDIS_STATUS_OFFLOAD_NEIGHBOR_ENTRIES"],
)
async def test_a_no_room_error_stack_info_does_not_count_is_taken_as_said(status: str) -> None:
    """stack.info's `tcp` counts no path or neighbor entries: those answers stay excused (as
    the refusal path takes them), and so does OFFLOAD_TCP_ENTRIES on a full NIC."""

    class FakeNoEntries(FakeSaysFullAtConnect):
        async def tcp_offload(self, cid: int) -> Rec:
            raise NdisStatusError(NdisStatusError.code, f"NDIS_STATUS: {status} (0xC0231005)")

    rec = _rec("invalidate", object="tcp", layer="nic0")
    await _prober(FakeNoEntries(lies=0)).inject_probed(rec, {})
    r = _report([rec], [], {})
    assert r["ok"] and status in rec["not_judged"], (rec, r["failures"])
    # full: OFFLOAD_TCP_ENTRIES excused as before, answered or said by tcp.info
    quiet = FakeQuietRefusal({"status": TCP_ENTRIES, "layer": "nic0", "reason": "full"})
    quiet.workers = 100
    for daemon in (FakeFullNic(capacity=5, workers=5), quiet):
        rec = _rec("invalidate", object="tcp", layer="nic0")
        await _prober(daemon).inject_probed(rec, {})
        r = _report([rec], [], {})
        most = daemon.capacity
        assert r["ok"] and f"nic0 carries {most} of {most}" in rec["not_judged"], rec
