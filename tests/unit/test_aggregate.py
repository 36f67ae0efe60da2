"""What a daemon of several shards answers, from the shards' parts (observe.aggregate)."""

from __future__ import annotations

from typing import Any

from chimneyd.observe.aggregate import (
    MIXED,
    FaultView,
    fault_table,
    fold,
    may_touch,
    merge_info,
    merge_stats,
    shard_faults,
)
from chimneyd.observe.metrics import sharded_text


def stats(conns: int, offloads: int, calls: int, pid: int) -> dict[str, Any]:
    return {
        "layers": {
            "nic0": {
                "offloads_active": offloads,
                "handles": offloads,
                "outstanding_nbls": 0,
                "calls": {"MiniportTcpOffloadSend": calls},
            }
        },
        "connections": conns,
        "engine": {"inbox": {"nic0": 0}, "invariant_violations": None, "layer_errors": 0},
        "rpc": {"clients": 1, "in_flight": 0},
        "process": {"pid": pid, "rss_kb": 40_000},
    }


def test_fold_sums_numbers_keeps_what_agrees_and_marks_what_does_not() -> None:
    assert fold([1, 2, None], lambda _: True) == 3
    assert fold([None, None], lambda _: True) is None
    assert fold(["running", "running"], lambda _: True) == "running"
    assert fold(["running", "failed"], lambda _: True) == MIXED
    assert fold([{"a": 1, "b": "x"}, {"a": 2, "c": 5}], lambda _: True) == {
        "a": 3,
        "b": "x",
        "c": 5,
    }
    # a number not summed (a setting) is kept when equal, mixed when not
    assert fold([16384, 16384], lambda k: False) == 16384
    assert fold([1, 2], lambda k: False) == MIXED


def test_stats_are_summed_in_the_usual_keys_and_each_shard_is_kept() -> None:
    merged = merge_stats({0: stats(2, 6, 10, 100), 1: stats(1, 3, 5, 101), 2: None})
    assert merged["connections"] == 3
    assert merged["layers"]["nic0"]["offloads_active"] == 9
    assert merged["layers"]["nic0"]["calls"] == {"MiniportTcpOffloadSend": 15}
    assert merged["rpc"] == {"clients": 2, "in_flight": 0}
    assert merged["engine"]["invariant_violations"] is None  # off in every shard
    assert "process" not in merged  # per shard only
    by_shard = {s["shard"]: s for s in merged["shards"]}
    assert by_shard[2] == {"shard": 2, "state": "down"}
    assert by_shard[1]["state"] == "running" and by_shard[1]["connections"] == 1
    assert by_shard[0]["process"]["pid"] == 100
    # the same keys, in the same order, as one shard's answer
    assert list(merged)[:-1] == [k for k in stats(0, 0, 0, 0) if k != "process"]


def test_info_folds_each_layer_and_sums_only_its_gauges() -> None:
    def info(state: str, tcp: int) -> dict[str, Any]:
        return {
            "version": "0.1.0",
            "contract": 1,
            "layers": [
                {
                    "name": "nic0",
                    "kind": "target",
                    "state": state,
                    "tcp": tcp,
                    "max_connections": 16384,
                }
            ],
            "process": {"pid": 10 + tcp},
        }

    merged = merge_info({0: info("running", 4), 1: info("failed", 6)}, home=1)
    nic = merged["layers"][0]
    assert nic["tcp"] == 10
    assert nic["max_connections"] == 16384  # a setting, the same in every shard
    assert nic["state"] == MIXED
    assert merged["shard"] == 1
    assert [(s["shard"], s["pid"], s["layers"][0]["state"]) for s in merged["shards"]] == [
        (0, 14, "running"),
        (1, 16, "failed"),
    ]
    assert "process" not in merged


def faults_part(
    me: int, entries: list[dict[str, Any]], homes: dict[int, int], orphans: set[int]
) -> dict[str, Any]:
    return {"faults": shard_faults(entries, me, homes, lambda fid: fid in orphans)}


def test_one_fault_in_several_shards_is_one_row_and_its_maker_is_known_at_home() -> None:
    layer = {"id": 7, "kind": "target_failure", "layer": "nic0", "active": True}
    conn = {"id": 8, "kind": "peer_reset", "conn": 3, "active": False}
    parts = {
        0: faults_part(0, [layer, conn], {}, orphans=set()),
        1: faults_part(1, [layer], {7: 0}, orphans={7}),  # shard 1 cannot know: not its fault
    }
    table = fault_table(parts)
    assert table[7].shards == [0, 1] and table[7].home == 0
    assert table[7].orphan is False  # as its home says
    assert table[7].as_map() == {
        "id": 7,
        "kind": "target_failure",
        "layer": "nic0",
        "shards": [0, 1],
        "active_shards": [0, 1],
    }
    assert table[8].active is False
    # its home down (or restarted without it): the maker is gone
    gone = fault_table({0: None, 1: parts[1]})
    assert gone[7].orphan is True and gone[7].shards == [1]


def test_what_a_raise_next_hit_in_each_shard_is_one_list_saying_where() -> None:
    """fault.list `used`: a raise_next put into two shards lists every raise of both, each
    with its shard; the plain listing shows none of it."""
    hit = {"layer": "nic0", "handler": "MiniportTcpOffloadSend", "conns_total": 1}
    spec = {"id": 9, "kind": "raise_next", "layer": "nic0", "call": "MiniportTcpOffloadSend"}
    parts = {
        0: faults_part(
            0, [{**spec, "active": False, "raised": [{**hit, "conns": [4]}]}], {}, set()
        ),
        1: faults_part(1, [{**spec, "active": True, "raised": []}], {9: 0}, set()),
    }
    view = fault_table(parts)[9]
    assert view.as_map() == {**spec, "shards": [0, 1], "active_shards": [1]}
    assert view.as_map(used=True) == {
        **spec,
        "shards": [0, 1],
        "active_shards": [1],  # its count is each shard's: run out in shard 0 only
        "active": True,  # still armed in shard 1
        "raised": [{**hit, "conns": [4], "shard": 0}],
    }


def test_what_a_fail_next_failed_in_each_shard_is_listed_with_its_shard_and_drops() -> None:
    """The same for a fail_next's `failed`, with what each shard could not keep summed."""
    hit = {"layer": "nic0", "call": "MiniportInitiateOffload", "conns_total": 1}
    spec = {"id": 3, "kind": "fail_next", "layer": "nic0", "call": "MiniportInitiateOffload"}
    parts = {
        0: faults_part(
            0, [{**spec, "active": False, "failed": [{**hit, "conns": [2]}]}], {}, set()
        ),
        1: faults_part(
            1,
            [
                {
                    **spec,
                    "active": False,
                    "failed": [{**hit, "conns": [5]}],
                    "failed_dropped": 4,
                }
            ],
            {3: 0},
            set(),
        ),
    }
    view = fault_table(parts)[3]
    assert view.as_map() == {**spec, "shards": [0, 1], "active_shards": []}
    assert view.as_map(used=True) == {
        **spec,
        "shards": [0, 1],
        "active_shards": [],
        "active": False,
        "failed": [{**hit, "conns": [2], "shard": 0}, {**hit, "conns": [5], "shard": 1}],
        "failed_dropped": 4,
    }


def test_who_may_touch_a_fault() -> None:
    view = FaultView(
        7, {"kind": "target_failure"}, home=0, shards=[0, 1], active=True, orphan=False
    )
    assert may_touch(view, me=1, admin=True, mine=lambda _: False)
    assert not may_touch(view, me=1, admin=False, mine=lambda _: True)  # made by shard 0's client
    assert may_touch(view, me=0, admin=False, mine=lambda _: True)
    assert not may_touch(view, me=0, admin=False, mine=lambda _: False)
    view.orphan = True
    assert may_touch(view, me=1, admin=False, mine=lambda _: False)


def test_metrics_sum_the_shards_and_give_each_its_own_series() -> None:
    text = sharded_text(
        {
            0: {"stats": stats(2, 6, 10, 100), "histograms": {}},
            1: {"stats": stats(1, 3, 5, 101), "histograms": {}},
            2: None,
        }
    )
    assert "chimney_connections 3.0" in text
    assert 'chimney_offloads_active{layer="nic0"} 9.0' in text
    assert 'chimney_shard_connections{shard="0"} 2.0' in text
    assert 'chimney_shard_up{shard="2"} 0.0' in text
    assert 'chimney_shard_offloads_active{layer="nic0",shard="1"} 3.0' in text


def test_metrics_add_up_the_shards_histograms() -> None:
    counts = [0] * 26
    counts[3] = 2
    raw = {"chimney_send_completion_seconds": {"": [*counts, 0.5]}}
    text = sharded_text(
        {
            0: {"stats": stats(0, 0, 0, 1), "histograms": raw},
            1: {"stats": stats(0, 0, 0, 2), "histograms": raw},
        }
    )
    assert "chimney_send_completion_seconds_count 4.0" in text
    assert "chimney_send_completion_seconds_sum 1.0" in text
