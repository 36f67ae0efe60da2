"""A rebalance beside a host_event (docs/faults.md `rebalance`): the MUX plans nothing onto a
NIC the host withholds, so a NIC withheld all through the rebalance is not in the counts it
answers for; a host_event that began or was cleared while it ran changed the NICs the MUX
could use under it, and it is judged on its own moves only, as beside a NIC outage."""

from __future__ import annotations

from typing import Any

from tests.soak.test_verdict import Rec, _rebalance, _report


def _beside_an_event(t0: float, t_clear: float | None) -> tuple[list[Rec], list[Rec], Any]:
    """team0 rebalanced at t=100 (done at 101.2) and moved nothing: nic0 empty, nic1 and nic2
    500 each, as when every connection avoids nic0. A host_event on nic0 from `t0` until
    `t_clear` (None: never cleared)."""
    layer, conn, obs = _rebalance()
    reb = layer[0]
    reb["mux_before"] = {"nic0": 0, "nic1": 500, "nic2": 500}
    reb["mux_after"] = {"nic0": 0, "nic1": 500, "nic2": 500}
    obs["unrequested"].clear()
    event: dict[str, Any] = {
        "tag": 2,
        "kind": "host_event",
        "effect": None,
        "params": {"layer": "nic0", "event": "power_down", "for": "10s"},
        "injected": True,
        "cleared": t_clear is not None,
        "t0": t0,
        "t1": t0 + 0.01,
    }
    if t_clear is not None:
        event.update(t_clear0=t_clear, t_clear1=t_clear + 0.01)
    layer.append(event)
    return layer, conn, obs


def _rebalance_problems(r: dict[str, Any]) -> list[str]:
    """The rebalance's own problems (the fault's failure line lists them after its counts)."""
    return [
        part.strip()
        for f in r["failures"]
        if f.startswith("fault rebalance")
        for part in f.split(";")
        if part.strip().startswith("team0")
    ]


def test_without_the_event_the_nics_500_apart_fail_the_rebalance() -> None:
    layer, conn, obs = _beside_an_event(95.0, 110.0)
    del layer[1]
    problems = _rebalance_problems(_report(layer, conn, obs))
    assert any("moved nothing while its NICs were 500 apart" in f for f in problems), problems


def test_a_nic_withheld_all_through_is_not_in_the_counts() -> None:
    r = _report(*_beside_an_event(95.0, 110.0))
    assert _rebalance_problems(r) == [], r["failures"]
    entry = next(f for f in r["faults"] if f["kind"] == "rebalance")
    assert entry["withheld_by_a_host_event"] == "nic0"
    assert "crossed_by_an_outage" not in entry


def test_an_event_never_cleared_withholds_all_through() -> None:
    assert _rebalance_problems(_report(*_beside_an_event(95.0, None))) == []


def test_an_event_cleared_while_it_ran_crosses_it() -> None:
    r = _report(*_beside_an_event(95.0, 100.5))
    assert _rebalance_problems(r) == [], r["failures"]
    entry = next(f for f in r["faults"] if f["kind"] == "rebalance")
    assert entry["crossed_by_an_outage"] == 1
    assert "withheld_by_a_host_event" not in entry


def test_an_event_over_before_it_excuses_nothing() -> None:
    problems = _rebalance_problems(_report(*_beside_an_event(80.0, 90.0)))
    assert any("moved nothing while its NICs were 500 apart" in f for f in problems), problems


def test_an_event_in_another_shard_excuses_nothing() -> None:
    layer, conn, obs = _beside_an_event(95.0, 110.0)
    layer[0]["params"] = {"layer": "team0", "shard": "1"}
    layer[1]["params"] = {**layer[1]["params"], "shard": "0"}
    problems = _rebalance_problems(_report(layer, conn, obs))
    assert any("moved nothing while its NICs were 500 apart" in f for f in problems), problems
