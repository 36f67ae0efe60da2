"""A NIC outage excuses a rebalance from its count check only in the shards where both acted:
each shard's MUX and NICs are its own (docs/faults.md `rebalance`: "each shard's MUX is judged
on its own NICs"), so an outage in shard 0 changes nothing shard 1's MUX planned on."""

from __future__ import annotations

from typing import Any

from tests.soak.test_verdict import Rec, _layer_records, _rebalance, _report

TEAM = ["tcpip", "team0"]


def _crossed(
    rebalance_shard: str | None, outage_shard: str | None
) -> tuple[list[Rec], list[Rec], dict[str, list[Rec]]]:
    """team0 rebalances at t=100 on a daemon of two shards while nic2 is taken out at t=100.05
    (the same @TIME). Shard 0's MUX moved its two connections (when it got the rebalance too);
    shard 1's, 4 apart, moved nothing. `*_shard`: the `/shard=K` of each fault (None: every
    shard)."""
    layer, conn, obs = _rebalance()
    reb = layer[0]
    if rebalance_shard is not None:
        reb["params"] = {"layer": "team0", "shard": rebalance_shard}
        # one shard's MUX: stack.info's part of that shard, no per-shard list
        reb["mux_before"], reb["mux_after"] = {"nic0": 6, "nic1": 2}, {"nic0": 6, "nic1": 2}
        obs["unrequested"].clear()  # shard 0's moves: that shard got no rebalance
    else:
        reb.update(
            mux_before={"nic0": 9, "nic1": 3},
            mux_after={"nic0": 8, "nic1": 4},
            mux_shards_before=[{"nic0": 3, "nic1": 1}, {"nic0": 6, "nic1": 2}],
            mux_shards_after=[{"nic0": 2, "nic1": 2}, {"nic0": 6, "nic1": 2}],
        )
    for u in obs["unrequested"]:
        u["shard"] = 0
    params: dict[str, Any] = {"layer": "nic2", "for": "3s"}
    if outage_shard is not None:
        params["shard"] = outage_shard
    layer.append(
        {
            **_layer_records()[0],
            "tag": 2,
            "kind": "nic_down",
            "params": params,
            "fault_id": 2,
            "t0": 100.05,
            "t1": 100.1,
            "offloaded_before": 0,
            "offloaded_at_end": 0,
        }
    )
    return layer, conn, obs


def _rebalance_entry(r: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = next(f for f in r["faults"] if f["kind"] == "rebalance")
    return entry


def test_an_outage_in_another_shard_does_not_excuse_a_rebalance() -> None:
    """Rebalance in shard 1 only, NIC outage in shard 0 only: shard 1's MUX left its NICs 4
    apart and moved nothing. Before, the outage excused it (crossed_by_an_outage)."""
    r = _report(*_crossed("1", "0"))
    assert any("team0: moved nothing while its NICs were 4 apart" in f for f in r["failures"]), r[
        "failures"
    ]
    assert "crossed_by_an_outage" not in _rebalance_entry(r)


def test_an_outage_in_one_shard_excuses_that_shards_mux_only() -> None:
    """Rebalance in every shard, outage in shard 0: shard 0's counts are the outage's too, but
    shard 1's MUX, which moved none of its connections, still answers for its 4 apart."""
    r = _report(*_crossed(None, "0"))
    assert any(
        "team0 in shard 1: moved nothing while its NICs were 4 apart" in f for f in r["failures"]
    ), r["failures"]
    f = _rebalance_entry(r)
    assert f["crossed_by_an_outage"] == 1 and f["crossed_shards"] == "0"


def test_an_outage_in_the_rebalances_shard_or_in_every_shard_excuses_it() -> None:
    for rebalance_shard, outage_shard in (("1", "1"), ("1", None), (None, None)):
        r = _report(*_crossed(rebalance_shard, outage_shard))
        assert r["ok"], (rebalance_shard, outage_shard, r["failures"])
        f = _rebalance_entry(r)
        assert f["crossed_by_an_outage"] == 1 and "crossed_shards" not in f


def test_a_rebalance_on_shards_with_no_outage_judges_each_shards_moves_as_before() -> None:
    """Without an outage the check is as it was: any move passes the `moved nothing` check
    (the moves' records are of all shards together), the counts after are per shard."""
    layer, conn, obs = _crossed(None, "0")
    layer.pop()
    r = _report(layer, conn, obs)
    assert any("team0 in shard 1: its NICs still 4 apart" in f for f in r["failures"]), r[
        "failures"
    ]
    assert not any("moved nothing" in f for f in r["failures"])
