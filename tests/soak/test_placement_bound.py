"""The stretches a worker keeps on a NIC (`placements`) are bounded: a closed one is kept only
if a NIC outage's injection fell inside it (`on < t0 <= off`, what outcomes
`_each_left_its_nic` selects), once the coordinator's notice of every injection it could
span has come (PLACEMENT_GRACE_S after it closed, or at the stop). The outage check sees the
same connections as it did with every stretch kept (spec §5.5: UPLOAD_ALL asks for each)."""

from __future__ import annotations

import copy
from dataclasses import replace

from chimney_client.soak.conn import Conn
from chimney_client.soak.state import PLACEMENT_GRACE_S, WorkerState
from tests.soak.test_outage_accounts import _outage_with_placements, _placed, _state
from tests.soak.test_verdict import NIC0, Rec, _report

G = PLACEMENT_GRACE_S


def _stretch(st: WorkerState, cid: int, on: float, off: float, why: str = "closing") -> Conn:
    """`cid` offloaded on nic0 at `on`, leaving it (`why`) at `off`, as `move` would tell."""
    conn = Conn(cid, 1, 0, 0, on)
    conn.path = list(NIC0)
    st.placement(conn, "offloaded", None, on)
    conn.state, conn.since = "offloaded", on
    state, cause = (why.split(":")[0], why.split(":")[1]) if ":" in why else (why, None)
    st.placement(conn, state, cause, off)
    conn.state, conn.since = state, off
    return conn


def _kept(st: WorkerState) -> list[tuple[int, float, float]]:
    return [(p["conn"], p["on"], p["off"]) for p in st.obs["placements"]]


def test_stretches_no_outage_fell_in_are_dropped_after_the_grace() -> None:
    st = _state()
    _stretch(st, 1, 10.0, 20.0)
    _stretch(st, 2, 15.0, 25.0)
    st.prune_placements(20.0 + G / 2)
    assert _kept(st) == [(1, 10.0, 20.0), (2, 15.0, 25.0)], "judged before its notice could come"
    st.prune_placements(25.0 + G + 0.1)
    assert _kept(st) == []


def test_an_injection_while_a_stretch_is_open_keeps_it() -> None:
    st = _state()
    conn = Conn(7, 1, 0, 0, 10.0)
    conn.path, conn.state = list(NIC0), "offloaded"  # offloaded at connect
    st.told_outage(30.0)  # while it is on nic0
    st.placement(conn, "closing", None, 40.0)
    st.prune_placements(40.0 + 10 * G)
    assert _kept(st) == [(7, 10.0, 40.0)]


def test_a_notice_arriving_after_the_stretch_closed_still_keeps_it() -> None:
    """The coordinator's notice is a message: it comes after the stretch it needs closed."""
    st = _state()
    _stretch(st, 1, 10.0, 30.2, "host:target_failure")  # uploaded by the outage at 30
    _stretch(st, 2, 12.0, 29.0)  # closed before it
    st.prune_placements(30.2 + G / 2)  # the notice is not here yet
    st.told_outage(30.0)  # now it is, late
    st.prune_placements(30.2 + 10 * G)
    assert _kept(st) == [(1, 10.0, 30.2)]
    assert "placements_pruned" not in st.errors


def test_the_boundaries_are_those_of_the_judgement() -> None:
    """`on < t0 <= off`: one offloaded at the injection's instant was not on the NIC before
    it; one leaving at that instant was."""
    st = _state()
    st.told_outage(50.0)
    _stretch(st, 1, 50.0, 60.0)
    _stretch(st, 2, 40.0, 50.0)
    _stretch(st, 3, 40.0, 49.9)
    st.prune_placements(60.0 + 10 * G)
    assert _kept(st) == [(2, 40.0, 50.0)]


def test_a_notice_later_than_the_grace_is_an_error() -> None:
    """A stretch the outage needed may be gone: the run says so instead of passing on a
    weaker check."""
    st = _state()
    _stretch(st, 1, 10.0, 30.2)
    st.prune_placements(30.2 + G + 0.1)
    assert _kept(st) == []
    st.told_outage(30.0)
    assert st.errors["placements_pruned"]["count"] == 1


def test_at_the_stop_every_stretch_is_judged_at_once() -> None:
    """Every injection's notice was put in the inbox before the stop: nothing is kept for
    the grace then, and the final message carries only the stretches an outage needs."""
    st = _state()
    st.told_outage(30.0)
    _stretch(st, 1, 10.0, 35.0)
    _stretch(st, 2, 31.0, 36.0)
    st.outages_all_told = True
    st.prune_placements(36.0)
    assert _kept(st) == [(1, 10.0, 35.0)]


def test_a_run_without_nic_outages_keeps_none() -> None:
    st = _state()
    st.cfg = replace(st.cfg, nic_outages=False)
    _stretch(st, 1, 10.0, 20.0)
    assert st.obs["placements"] == [] and st.on_since == {}


def test_the_outage_check_is_as_strict_on_what_a_worker_kept() -> None:
    """The stretches of `_outage_with_placements` (nic0 fails at t=100), plus conn 5 left on
    nic0 past the outage, as a worker records them with the notice 0.3 s late and pruning
    all along: the report is the same as with every stretch kept, conn 5 still a problem."""
    layer, conn, obs = _outage_with_placements()
    obs["placements"].append(_placed(5, 20.0, 110.0, "closing"))
    full = _report(copy.deepcopy(layer), copy.deepcopy(conn), copy.deepcopy(obs))
    st = _state()
    told = False
    recs = sorted(obs["placements"], key=lambda p: float(p["off"]))
    for p in recs:
        if not told and float(p["off"]) >= 100.3:
            st.told_outage(100.0)
            told = True
        c = _stretch(st, p["conn"], p["on"], p["off"], p["why"])
        c.path[-1:] = [p["nic"]]
        st.obs["placements"][-1]["nic"] = p["nic"]
        st.prune_placements(float(p["off"]))
    st.prune_placements(200.0 + G)
    kept: list[Rec] = st.obs["placements"]
    assert sorted(p["conn"] for p in kept) == [1, 2, 3, 4, 5, 9]  # 8 left at 50: not needed
    obs["placements"] = kept
    pruned = _report(layer, conn, obs)
    assert pruned["failures"] == full["failures"]
    assert any("conn 5: on nic0 when it went out" in f for f in pruned["failures"])
    assert pruned["faults"] == full["faults"]
