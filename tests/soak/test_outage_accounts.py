"""A NIC outage answers for every connection on its NIC when it went out: each is uploaded by
it, or ended first (our close, a reset), or was on its way up for a reason of its own; none
may stay on the failed NIC (spec §5.5). The soak knows which connections were where from its
own records (`placements`, kept by the workers from the daemon's events), not only the
daemon's count before (`offloaded_before`), which names no connection."""

from __future__ import annotations

from typing import Any

from chimney_client.soak.conn import Conn
from chimney_client.soak.parsing import PayloadDist
from chimney_client.soak.state import WorkerConfig, WorkerState
from tests.soak.test_verdict import NIC0, Rec, _clean, _report


def _placed(conn: int, on: float, off: float, why: str, nic: str = "nic0") -> Rec:
    return {"conn": conn, "nic": nic, "on": on, "off": off, "why": why}


def _outage_with_placements() -> tuple[list[Rec], list[Rec], dict[str, list[Rec]]]:
    """nic0 fails from t=100 to 103. On it then: conns 1 and 2 (uploaded by UPLOAD_ALL), 3
    (closed by our churn at 100.5, before its upload), 4 (reset at 100.4); conn 8 was on nic0
    and left before the outage (closed at 50); conn 9 was on nic1 all along."""
    layer, conn, obs = _clean()
    layer[0]["offloaded_before"] = 4
    obs["placements"] = [
        _placed(1, 10.0, 100.2, "host:target_failure"),
        _placed(2, 12.0, 100.2, "host:target_failure"),
        _placed(3, 14.0, 100.5, "closing"),
        _placed(4, 15.0, 100.4, "aborted"),
        _placed(8, 5.0, 50.0, "closing"),
        _placed(9, 5.0, 120.0, "closing", nic="nic1"),
    ]
    return layer, conn, obs


def test_an_outage_accounts_for_each_connection_on_its_nic() -> None:
    r = _report(*_outage_with_placements())
    assert r["ok"], r["failures"]
    [f] = [f for f in r["faults"] if f["kind"] == "target_failure"]
    assert f["connections_uploaded"] == 2
    assert (f["on_nic_before"], f["closed_first"], f["reset_first"]) == (4, 1, 1)
    assert "left_otherwise" not in f


def test_a_connection_left_on_the_failed_nic_fails_the_outage() -> None:
    """Conn 5 was on nic0 when it failed and stayed there past the outage (closed at 110):
    the daemon left it offloaded on a failed NIC. Before, the outage passed on its count of
    uploads alone, which no check held against the connections on its NIC."""
    layer, conn, obs = _outage_with_placements()
    obs["placements"].append(_placed(5, 20.0, 110.0, "closing"))
    r = _report(layer, conn, obs)
    assert not r["ok"]
    assert any(
        "conn 5: on nic0 when it went out, not uploaded by the outage" in f for f in r["failures"]
    ), r["failures"]


def test_a_connection_closed_only_after_the_outage_did_not_leave_first() -> None:
    """A close after the window closed does not excuse the connection: it was still on the
    failed NIC all along."""
    layer, conn, obs = _outage_with_placements()
    obs["placements"][2]["off"] = 130.0
    r = _report(layer, conn, obs)
    assert any("conn 3: on nic0 when it went out" in f for f in r["failures"]), r["failures"]


def test_a_connection_on_its_way_up_for_another_reason_left_otherwise() -> None:
    """Our planned upload of conn 6 completed during the outage: its upload was ours."""
    layer, conn, obs = _outage_with_placements()
    obs["placements"].append(_placed(6, 20.0, 100.3, "host:planned_upload"))
    r = _report(layer, conn, obs)
    assert r["ok"], r["failures"]
    [f] = [f for f in r["faults"] if f["kind"] == "target_failure"]
    assert (f["on_nic_before"], f["left_otherwise"]) == (5, 1)


def _state() -> WorkerState:
    cfg = WorkerConfig(
        index=0,
        rpc="127.0.0.1:1",
        token=None,
        peers=(),
        peer_controls=(),
        slots=(0,),
        rate=1.0,
        payload=PayloadDist("fixed", (1,)),
        think_ms=50.0,
        upload_share=0.0,
        churn=0.0,
        close="graceful",
        conns_per_rpc=1,
        ops_per_rpc=1,
        seed=1,
    )
    out: Any = None
    return WorkerState(cfg, out, out)


def test_a_worker_keeps_where_each_connection_was_and_why_it_left() -> None:
    """Offloaded at connect on nic0, uploaded by its NIC's failure, offloaded again by the
    host on nic2, then closed: two stretches, each with its NIC and its end."""
    st = _state()
    conn = Conn(7, 1, 0, 0, 10.0)
    conn.path, conn.state = list(NIC0), "offloaded"  # as tcp.connect's answer leaves it
    st.apply_event(conn, "TcpIndicateRetrieve", {"reason": "NDIS_STATUS_UPLOAD_ALL"})
    st.apply_event(conn, "uploaded", {})
    st.apply_event(conn, "offloaded", {"path": ["tcpip", "im0", "nic2"]})
    st.move(conn, "closing")
    first, second = st.obs["placements"]
    assert (first["conn"], first["nic"], first["on"], first["why"]) == (
        7,
        "nic0",
        10.0,
        "host:target_failure",
    )
    assert (second["nic"], second["why"]) == ("nic2", "closing")
    assert second["on"] >= first["off"] and second["off"] >= second["on"]
