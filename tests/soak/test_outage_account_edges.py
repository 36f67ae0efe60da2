"""The outage's per-connection account (test_outage_accounts.py) where the first tests leave
it unchecked: a connection uploaded for a reason of its own only after the window stayed on
the failed NIC; an outage put into one shard (`/shard=K`) is held to that shard's connections
only, which the workers know by the shard of the RPC client carrying each (spec §5.5;
docs/faults.md `target_failure`)."""

from __future__ import annotations

from typing import Any

from chimney_client.soak.conn import Conn
from chimney_client.soak.state import Rpc
from tests.soak.test_outage_accounts import _outage_with_placements, _placed, _state
from tests.soak.test_verdict import NIC0, _report


def test_a_connection_uploaded_for_another_reason_only_after_the_outage_fails_it() -> None:
    """Our planned upload of conn 6 came only after the window: until then it stayed on the
    failed NIC, and its own upload excuses nothing (as a close after the window does not)."""
    layer, conn, obs = _outage_with_placements()
    obs["placements"].append(_placed(6, 20.0, 130.0, "host:planned_upload"))
    r = _report(layer, conn, obs)
    assert any("conn 6: on nic0 when it went out" in f for f in r["failures"]), r["failures"]


def test_an_outage_in_one_shard_answers_for_that_shards_connections_only() -> None:
    """nic0 fails in shard 0 only (`/shard=0`): conn 5 of shard 1 stays on its shard's nic0,
    which never failed; conn 6 of shard 0 staying there fails the outage."""
    layer, conn, obs = _outage_with_placements()
    outage = next(r for r in layer if r["kind"] == "target_failure")
    outage["params"] = {**outage.get("params", {}), "shard": "0"}
    for p in obs["placements"]:
        p["shard"] = 0
    obs["placements"].append({**_placed(5, 20.0, 110.0, "closing"), "shard": 1})
    r = _report(layer, conn, obs)
    assert r["ok"], r["failures"]
    [f] = [f for f in r["faults"] if f["kind"] == "target_failure"]
    assert f["on_nic_before"] == 4
    obs["placements"].append({**_placed(6, 20.0, 110.0, "closing"), "shard": 0})
    for u in obs["upload_all"]:
        u.pop("explained_by", None)  # judged afresh
    r = _report(layer, conn, obs)
    assert any("conn 6: on nic0 when it went out" in f for f in r["failures"]), r["failures"]
    assert not any("conn 5:" in f for f in r["failures"]), r["failures"]


def test_a_worker_keeps_the_shard_of_each_stretch() -> None:
    """On a daemon of shards each stretch says its connection's shard (that of the RPC client
    carrying it): an outage put into one shard is held to that shard's connections."""
    st = _state()
    rpc: Any = Rpc.__new__(Rpc)
    rpc.shard = 1
    conn = Conn(7, 1, 0, 0, 10.0)
    st.rpc_by_cid[7] = rpc
    conn.path, conn.state = list(NIC0), "offloaded"
    st.move(conn, "closing")
    [stretch] = st.obs["placements"]
    assert (stretch["nic"], stretch["shard"]) == ("nic0", 1)
