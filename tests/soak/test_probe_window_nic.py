"""The window in which a probe of the soak's may have taken a worker's place on a full NIC
(soak/probe_faults.py `_refused_for_the_probe`) excused any worker's refusal for no room in
the probe's shard and time, whichever NIC refused it. Each worker's refusal episode now keeps
the layer tcp.info's `offload_refused` names (docs/rpc.md), and only a refusal by a layer on
the probe's way (its NIC, the host or a MUX above it) is the probe's: a NIC beside it has its
own room, which the probe took none of. A daemon that names no layer is judged as before."""

from __future__ import annotations

from typing import Any

import pytest

from chimney_client.errors import NdisStatusError
from chimney_client.soak.conn import Conn
from chimney_client.soak.state import Rpc
from chimney_client.soak.traffic import Traffic
from tests.soak.test_outage_accounts import _state
from tests.soak.test_probe_doubts import _prober, _rec
from tests.soak.test_probe_no_room import FULL, FakeFullNic, _short  # noqa: F401 (autouse)
from tests.soak.test_probe_takes_a_place import _reopen
from tests.soak.test_verdict import _report

pytestmark = pytest.mark.soak

Rec = dict[str, Any]


class FakeBesideAFullNic(FakeFullNic):
    """FakeFullNic's nic0 (the probe's) with nic1 beside it under the host, full too."""

    async def stack_info(self) -> Rec:
        host, nic0 = (await super().stack_info())["layers"]
        nic1 = {"name": "nic1", "kind": "target", "tcp": 8, "max_connections": 8}
        return {"layers": [{**host, "lower": ["nic0", "nic1"]}, nic0, nic1]}


async def _probed_on_a_full_nic() -> Rec:
    rec = _rec("invalidate", object="tcp", layer="nic0")
    await _prober(FakeBesideAFullNic(capacity=6, workers=6, frees_after=2)).inject_probed(rec, {})
    assert rec["injected"] and rec.get("probe_no_room_t"), rec
    return rec


async def test_a_refusal_by_a_nic_beside_the_probes_is_not_the_probes() -> None:
    """A worker's reopen refused by nic1 while the probe took nic0's place: nic1's room is its
    own. Before, the probe's window took it (`refused_for_the_probe` 1) and the run passed."""
    rec = await _probed_on_a_full_nic()
    assert rec["probe_way"] == ["nic0", "tcpip"], rec
    t = rec["t0"] - 0.001
    r = _report([rec], [], {"refusals": [{**_reopen(t), "refused_by": "nic1"}]})
    assert not r["ok"], r["faults"]
    assert "offload refused at connect" in " ".join(r["failures"]), r["failures"]


@pytest.mark.parametrize("by", ["nic0", "tcpip", None])
async def test_a_refusal_on_the_probes_way_or_unnamed_is_still_the_probes(by: str | None) -> None:
    rec = await _probed_on_a_full_nic()
    ep = _reopen(rec["t0"] - 0.001)
    if by is not None:
        ep["refused_by"] = by
    r = _report([rec], [], {"refusals": [ep]})
    assert r["ok"], r["failures"]
    assert r["faults"][0]["refused_for_the_probe"] == 1, r["faults"]


async def test_a_daemon_that_does_not_say_how_its_layers_stack_is_judged_as_before() -> None:
    """No `lower` in stack.info: no way known, any NIC's refusal in the window is excused."""

    class FakeFlat(FakeFullNic):
        async def stack_info(self) -> Rec:
            info = await super().stack_info()
            return {
                "layers": [{k: v for k, v in la.items() if k != "lower"} for la in info["layers"]]
            }

    rec = _rec("invalidate", object="tcp", layer="nic0")
    await _prober(FakeFlat(capacity=6, workers=6, frees_after=2)).inject_probed(rec, {})
    assert rec.get("probe_no_room_t") and "probe_way" not in rec, rec
    r = _report([rec], [], {"refusals": [{**_reopen(rec["t0"] - 0.001), "refused_by": "nic1"}]})
    assert r["ok"], r["failures"]


# -- the worker's side: which layer refused ------------------------------------------------------
def _traffic() -> Traffic:
    base = _state()
    return Traffic(base.cfg, base.out, base.out)


def test_a_refusal_at_connect_keeps_the_layer_tcp_info_names() -> None:
    st = _traffic()
    for cid, by in ((9, "nic1"), (10, None)):
        st.connect_state(Conn(cid, 1, 0, 0, 1.0), "host", False, 1.0, by)
    first, second = st.obs["refusals"]
    assert first["refused_by"] == "nic1" and "refused_by" not in second, st.obs["refusals"]


class _Client:
    """A tcp.offload refused for no room, and tcp.info naming the layer that refused it
    (`said`: None, a daemon without `offload_refused`)."""

    def __init__(self, said: Rec | None) -> None:
        self.said, self.infos = said, 0

    async def tcp_offload(self, cid: int) -> Rec:
        raise NdisStatusError(NdisStatusError.code, FULL.format(8))

    async def tcp_info(self, cid: int) -> Rec:
        self.infos += 1
        return {"state": "host", "offload_refused": self.said}


@pytest.mark.parametrize("said", [{"status": "x", "layer": "nic1", "reason": "full"}, None])
async def test_a_refused_reoffload_reads_the_layer_once_per_episode(said: Rec | None) -> None:
    tr = _traffic()
    client = _Client(said)
    rpc = Rpc(client=client, ops=1)  # type: ignore[arg-type]
    conn = Conn(9, 1, 0, 0, 1.0)
    tr.by_id[9], tr.rpc_by_cid[9] = conn, rpc
    for _ in range(3):  # refused three times: one episode, one read
        await tr.reoffload(rpc, conn)
    [ep] = tr.obs["refusals"]
    assert ep["attempts"] == 3 and client.infos == 1, (ep, client.infos)
    assert ep.get("refused_by") == (said or {}).get("layer"), ep
