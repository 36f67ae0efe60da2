"""What a daemon of several shards answers, from the shards' parts (observe.aggregate)."""

from __future__ import annotations

import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from chimneyd.observe.aggregate import (
    COUNTER_PATHS,
    MIXED,
    CounterCarry,
    FaultView,
    changed,
    counts,
    fault_table,
    fold,
    maxed,
    may_touch,
    merge_info,
    merge_stats,
    plus,
    shard_faults,
)
from chimneyd.observe.metrics import sharded_text
from tests.docs.test_metrics_doc import METRICS_MD


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


def sends(n: int, seconds: float) -> dict[str, Any]:
    """A shard's histograms: `n` sends in the 8 µs bucket, `seconds` in all."""
    counts = [0] * 26
    counts[3] = n
    return {"chimney_send_completion_seconds": {"": [*counts, seconds]}}


class Supervised:
    """Reads of a daemon's shards as the supervisor answers them (`Supervisor._counted`):
    each shard's process (its `gen`) and part, None while it is down; a process that is not
    the one of the read before has started since, and its predecessor ended."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.carry = CounterCarry()
        self.gens: dict[int, int] = {}

    def process(self, shard: int, gen: int | None) -> None:
        if self.gens.get(shard) == gen:
            return
        if shard in self.gens:
            self.carry.ended(shard, self.gens.pop(shard))
        if gen is not None:
            self.carry.started(shard, gen)
            self.gens[shard] = gen

    def read(self, parts: dict[int, tuple[int, Any] | None]) -> tuple[dict[int, Any], Any]:
        out: dict[int, Any] = {}
        carried: dict[str, Any] = {}
        for k, p in sorted(parts.items()):
            self.process(k, None if p is None else p[0])
            if p is not None:
                self.carry.seen(k, p[0], counts(self.what, p[1]))
            out[k] = None if p is None else p[1]
            carried = plus(carried, self.carry.carried(k, counting=p is not None))
        return out, carried


def test_summed_histograms_hold_while_a_shard_is_restarted_and_carry_on_after() -> None:
    """A histogram's buckets, `_count` and `_sum` are counters: a shard's restart is not the
    daemon's, so they never go down (docs/metrics.md, Shards), as the `_total` counters."""
    reads = [
        {0: (100, sends(4, 0.4)), 1: (101, sends(10, 1.0))},
        {0: (100, sends(5, 0.5)), 1: None},  # shard 1 being restarted
        {0: (100, sends(6, 0.6)), 1: (102, sends(1, 0.1))},  # back, from 0
        {0: (100, sends(7, 0.7)), 1: (103, sends(2, 0.2))},  # restarted between reads
        {0: (100, sends(8, 0.8)), 1: (103, sends(3, 0.3))},  # the same process
    ]
    daemon = Supervised("metrics")
    texts = [
        sharded_text(
            *daemon.read(
                {
                    k: p and (p[0], {"stats": counted(0, 0, 0, p[0]), "histograms": p[1]})
                    for k, p in r.items()
                }
            )
        )
        for r in reads
    ]
    name = "chimney_send_completion_seconds"
    assert [value(t, name + "_count") for t in texts] == [14, 15, 17, 20, 22]
    assert [value(t, name + "_bucket", le="8e-06") for t in texts] == [14, 15, 17, 20, 22]
    assert [round(value(t, name + "_sum"), 6) for t in texts] == [1.4, 1.5, 1.7, 2.0, 2.2]
    # nothing carried: the shards' own figures, exactly
    fresh = {
        k: {"stats": counted(0, 0, 0, 200 + k), "histograms": sends(k + 1, 0.5)} for k in (0, 1)
    }
    assert value(sharded_text(fresh), name + "_count") == 3


def counted(sent: int, calls: int, conns: int, pid: int) -> dict[str, Any]:
    part = stats(conns, conns, calls, pid)
    part["layers"]["nic0"]["bytes_sent"] = sent
    part["engine"]["messages"] = {"nic0": calls}
    return part


def value(text: str, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(name)


def test_summed_counters_hold_while_a_shard_is_restarted_and_carry_on_after() -> None:
    names = ("chimney_bytes_sent_total", "chimney_calls_total", "chimney_layer_messages_total")
    reads = [
        {0: (100, counted(1000, 10, 2, 100)), 1: (101, counted(5000, 50, 3, 101))},
        {0: (100, counted(1100, 11, 2, 100)), 1: None},  # shard 1 being restarted
        {0: (100, counted(1200, 12, 2, 100)), 1: (102, counted(7, 1, 1, 102))},  # back, from 0
        {0: (100, counted(1300, 13, 2, 100)), 1: (103, counted(9, 2, 1, 103))},  # again
    ]
    daemon = Supervised("metrics")
    texts = [
        sharded_text(*daemon.read({k: p and (p[0], {"stats": p[1]}) for k, p in r.items()}))
        for r in reads
    ]
    for name in names:
        seen = [value(t, name) for t in texts]
        assert seen == sorted(seen), (name, seen)
    assert [value(t, "chimney_bytes_sent_total") for t in texts] == [6000, 6100, 6207, 6316]
    # gauges are not carried: a shard being restarted holds no connection
    assert [value(t, "chimney_connections") for t in texts] == [5, 2, 3, 3]


def test_stack_stats_counters_carry_a_restart_and_each_shard_shows_its_own() -> None:
    daemon = Supervised("stats")
    merge_stats(*daemon.read({0: (100, counted(10, 1, 1, 100)), 1: (101, counted(20, 2, 1, 101))}))
    down = merge_stats(*daemon.read({0: (100, counted(10, 1, 1, 100)), 1: None}))
    assert down["layers"]["nic0"]["bytes_sent"] == 30
    assert down["layers"]["nic0"]["calls"] == {"MiniportTcpOffloadSend": 3}
    assert down["layers"]["nic0"]["offloads_active"] == 1  # shard 0's gauge alone
    assert down["connections"] == 1
    back = merge_stats(
        *daemon.read({0: (100, counted(10, 1, 1, 100)), 1: (102, counted(5, 1, 4, 102))})
    )
    assert back["layers"]["nic0"]["bytes_sent"] == 35
    assert back["engine"]["messages"] == {"nic0": 4}
    assert back["connections"] == 5
    # the per-shard breakdown is the shard's process as it is, counting from its start
    assert back["shards"][1]["layers"]["nic0"]["bytes_sent"] == 5
    # without what the supervisor carries: the running shards' figures alone
    assert merge_stats({0: counted(10, 1, 1, 100), 1: None})["connections"] == 1


def test_what_a_shard_reported_after_the_last_read_outlives_its_process() -> None:
    """docs/metrics.md "Shards": the supervisor keeps a shard's counts as last seen — in a
    read, or in a report of the counters that changed — and what an ended process had
    reached is its shard's for good, counted once whatever reported it twice."""
    daemon = Supervised("stats")
    merge_stats(*daemon.read({0: (0, counted(10, 1, 0, 10)), 1: (1, counted(20, 2, 0, 11))}))
    report = counts("stats", counted(500, 3, 0, 11))
    daemon.carry.seen(1, 1, changed(report, counts("stats", counted(20, 2, 0, 11))))
    daemon.carry.seen(1, 1, report)  # the same again (a read and a report): no matter
    daemon.carry.seen(1, 1, counts("stats", counted(20, 2, 0, 11)))  # an older one, late
    daemon.carry.ended(1, 1)
    daemon.carry.seen(1, 1, counts("stats", counted(900, 9, 0, 11)))  # ended: not any more
    gone = merge_stats(*daemon.read({0: (0, counted(10, 1, 0, 10)), 1: None}))
    assert gone["layers"]["nic0"]["bytes_sent"] == 510
    back = merge_stats(*daemon.read({0: (0, counted(10, 1, 0, 10)), 1: (2, counted(0, 0, 0, 12))}))
    assert back["layers"]["nic0"]["bytes_sent"] == 510
    assert back["engine"]["messages"] == {"nic0": 4}


def test_a_report_is_what_changed_and_brings_the_counts_back_whole() -> None:
    was = counts("metrics", {"stats": counted(10, 1, 0, 1), "histograms": sends(2, 0.2)})
    now = counts("metrics", {"stats": counted(30, 1, 0, 1), "histograms": sends(2, 0.2)})
    diff = changed(now, was)
    assert diff == {"layers": {"nic0": {"bytes_sent": 30}}}
    assert maxed(was, diff) == now
    assert changed(now, now) == {}
    assert changed(now, {}) == now
    assert "process" not in now and "connections" not in now  # counters only


def test_every_documented_counter_is_carried() -> None:
    # the stack.stats table's counters (the Prometheus table names metrics, not keys)
    rows = re.findall(r"^\| `([a-z][^`]*)` \| counters? \|", METRICS_MD.read_text(), re.M)
    keys = {r for r in rows if not r.startswith("chimney_")}
    # and those named in the prose: "(counter, `log.write_errors`)"
    keys |= set(re.findall(r"\(counter, `([a-z_.]+)`\)", METRICS_MD.read_text()))
    # a layer's name is `<layer>` there; its calls are one row (`calls`, a map of counters)
    carried = {
        ".".join(path).removesuffix(".calls.*") + (".calls" if "calls" in path else "")
        for path in COUNTER_PATHS
    }
    assert keys == {c.replace("*", "<layer>") for c in carried}
