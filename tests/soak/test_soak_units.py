"""chimney-soak's pure parts: size, duration, payload and fault-schedule parsers, report building."""

from __future__ import annotations

import random

import pytest

from chimney_client.soak import (
    FaultSpec,
    PayloadDist,
    build_report,
    gauges_left,
    merge_counters,
    parse_duration,
    parse_faults,
    parse_payload,
    parse_size,
    percentiles,
    schedule_faults,
    summarize_faults,
)


# -- sizes and durations --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("512", 512),
        ("4k", 4096),
        ("4K", 4096),
        ("64KiB", 65536),
        ("1.5m", 1572864),
        ("1m", 1 << 20),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "k", "-1", "0", "4x", "1..2k"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("20", 20.0), ("20s", 20.0), ("500ms", 0.5), ("1.5m", 90.0), ("2min", 120.0)],
)
def test_parse_duration(text: str, value: float) -> None:
    assert parse_duration(text) == value


def test_parse_duration_rejects() -> None:
    with pytest.raises(ValueError):
        parse_duration("soon")


# -- payload distributions ------------------------------------------------------------------------
def test_payload_range_samples_stay_inside() -> None:
    dist = parse_payload("1k:64k")
    assert dist == PayloadDist("range", (1024, 65536))
    rng = random.Random(3)
    sizes = [dist.sample(rng) for _ in range(2000)]
    assert min(sizes) >= 1024 and max(sizes) <= 65536
    # log-uniform: about half the samples fall below the geometric mean (8k)
    below = sum(1 for s in sizes if s < 8192)
    assert 800 < below < 1200


def test_payload_list_and_fixed() -> None:
    dist = parse_payload("1k,4k,64k")
    assert dist == PayloadDist("choice", (1024, 4096, 65536))
    rng = random.Random(1)
    assert {dist.sample(rng) for _ in range(200)} == {1024, 4096, 65536}
    fixed = parse_payload("16k")
    assert fixed.kind == "fixed" and fixed.sample(rng) == 16384
    assert parse_payload("4k:4k") == PayloadDist("fixed", (4096,))
    assert dist.max_size == 65536


@pytest.mark.parametrize("text", ["", "64k:1k", "1k:", "a,b"])
def test_payload_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_payload(text)


# -- fault schedules ------------------------------------------------------------------------------
def test_parse_faults_full_syntax() -> None:
    specs = parse_faults("peer_reset:5,stall:2/ms=3000,fail_send:3,nic_failure@20s/for=4s")
    assert specs == [
        FaultSpec("peer_reset", 5),
        FaultSpec("stall", 2, None, (("ms", "3000"),)),
        FaultSpec("fail_send", 3),
        FaultSpec("nic_failure", 1, 20.0, (("for", "4s"),)),
    ]
    assert specs[1].param("ms") == "3000"
    assert specs[2].param("layer") == "nic0"  # a default
    assert specs[2].param("status") == "NDIS_STATUS_REQUEST_ABORTED"
    assert specs[3].scope == "layer" and specs[0].scope == "conn"


def test_parse_faults_empty() -> None:
    assert parse_faults(None) == []
    assert parse_faults("  ") == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("explode:1", "unknown kind"),
        ("stall:0", "at least 1"),
        ("stall/ms", "KEY=VALUE"),
        ("stall/colour=red", "takes no key"),
        ("stall/ms=-5", "positive integer"),
        ("nic_failure@soon", "duration"),
        ("peer_reset:x", "expected"),
    ],
)
def test_parse_faults_rejects_naming_the_item(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_faults(text)


def test_schedule_spreads_counts_and_keeps_times() -> None:
    plan = schedule_faults(parse_faults("peer_reset:3,nic_failure@2s"), 20.0)
    assert [(round(p.t, 3), p.spec.kind) for p in plan] == [
        (2.0, "nic_failure"),
        (5.0, "peer_reset"),
        (10.0, "peer_reset"),
        (15.0, "peer_reset"),
    ]
    assert [p.tag for p in plan] == [1, 2, 3, 4]


def test_schedule_refuses_a_fault_after_the_hold() -> None:
    with pytest.raises(ValueError, match="not inside"):
        schedule_faults(parse_faults("nic_failure@30s"), 20.0)


# -- report building ------------------------------------------------------------------------------
def test_percentiles_nearest_rank() -> None:
    assert percentiles([]) == {"p50": 0.0, "p99": 0.0}
    data = [float(x) for x in range(1, 101)]
    assert percentiles(data) == {"p50": 50.0, "p99": 99.0}
    assert percentiles([7.0]) == {"p50": 7.0, "p99": 7.0}


def _stats(**gauges: int) -> dict:
    layer = {"offloads_active": 0, "handles": 0, "outstanding_nbls": 0, "bytes_sent": 9}
    return {
        "layers": {"tcpip": dict(layer), "im0": dict(layer), "nic0": {**layer, **gauges}},
        "connections": 0,
        "engine": {"wires": 0, "ack_waiting": 0, "inbox": {"tcpip": 0}, "invariant_violations": 0},
    }


def test_gauges_left() -> None:
    assert gauges_left(_stats()) == {}
    assert gauges_left(_stats(handles=2)) == {"nic0": {"handles": 2}}
    leaked = _stats()
    leaked["connections"] = 3
    assert gauges_left(leaked) == {"connections": 3}
    assert gauges_left(None) == {"stats": "unavailable"}


def test_tasks_above_their_idle_value_are_left_over() -> None:
    idle, after = _stats(), _stats()
    idle["tasks"], after["tasks"] = 9, 9
    assert gauges_left(after, idle) == {}
    after["tasks"] = 12  # three tasks outlived the soak
    assert gauges_left(after, idle) == {"tasks": {"now": 12, "idle": 9}}
    assert gauges_left(after) == {}  # no idle value to compare with: not judged


def test_merge_counters_sums_workers() -> None:
    total = merge_counters([{"ops": 2, "bytes_sent": 10}, {"ops": 3, "integrity_errors": 1}])
    assert total["ops"] == 5 and total["bytes_sent"] == 10 and total["integrity_errors"] == 1
    assert total["errors"] == 0


def _report(**over: object) -> dict:
    counters = merge_counters([{"ops": 100, "bytes_sent": 5000, "bytes_verified": 5000}])
    kw: dict = {
        "settings": {},
        "counters": counters,
        "latencies_ms": [1.0, 2.0, 3.0],
        "integrity_details": [],
        "error_details": {},
        "faults": [],
        "stats_before": _stats(),
        "stats_after": _stats(),
        "timing": {"active_s": 10.0},
        "rss_kb": {"before": 1000, "after": 1050, "peak": 2000},
        "daemon": {"crashed": False, "exit_status": 0},
        "connections": {"held": 10, "requested": 10},
    }
    kw.update(over)
    return build_report(**kw)


def test_report_passes_when_clean() -> None:
    r = _report()
    assert r["ok"] and r["failures"] == []
    assert r["connections"] == 10 and r["ops_per_s"] == 10.0
    assert r["latency_ms"]["p50"] == 2.0 and r["latency_ms"]["p99"] == 3.0
    assert r["drained"] and r["left_over"] == {}
    assert r["rss_kb"]["within_10pct"] is True and r["rss_kb"]["after_over_before"] == 1.05
    for key in ("bytes_sent", "bytes_verified", "integrity_errors", "errors", "stats_before"):
        assert key in r


def test_report_fails_on_integrity_leaks_and_crash() -> None:
    counters = merge_counters([{"ops": 1, "integrity_errors": 2}])
    r = _report(
        counters=counters,
        stats_after=_stats(outstanding_nbls=1),
        daemon={"crashed": True, "crash": "exit status -11", "exit_status": -11},
    )
    assert not r["ok"]
    text = " | ".join(r["failures"])
    assert "2 integrity error(s)" in text
    assert "outstanding_nbls" in text
    assert "daemon crashed" in text and "exit status -11" in text


def test_report_rss_growth_is_reported_not_fatal() -> None:
    r = _report(rss_kb={"before": 1000, "after": 2000, "peak": 3000})
    assert r["rss_kb"]["within_10pct"] is False
    assert r["ok"]


def test_fault_summary_says_what_each_fault_did() -> None:
    conn_records = [
        {"kind": "peer_reset", "injected": True, "observed": True, "reopened": True, "conn": 4},
        {"kind": "stall", "injected": True, "integrity_errors": 0, "verified_after": 99, "conn": 5},
        {"kind": "retrieve", "injected": False, "error": "no live connection to aim at"},
    ]
    layer_records = [{"kind": "nic_failure", "injected": True, "cleared": True}]
    counters = merge_counters([{"nic_uploads": 40}])
    out = {f["kind"]: f for f in summarize_faults(layer_records, conn_records, counters)}
    assert out["peer_reset"]["ok"] and out["peer_reset"]["abort_observed"] == 1
    assert out["stall"]["ok"] and out["stall"]["bytes_verified_after"] == 99
    assert out["nic_failure"]["ok"] and out["nic_failure"]["connections_uploaded"] == 40
    assert not out["retrieve"]["ok"]
    assert list(out) == ["peer_reset", "stall", "retrieve", "nic_failure"]
    r = _report(faults=list(out.values()))
    assert not r["ok"] and any("retrieve" in f for f in r["failures"])


def test_reset_not_observed_fails_the_fault() -> None:
    recs = [{"kind": "peer_reset", "injected": True, "observed": False, "reopened": True}]
    (entry,) = summarize_faults([], recs, merge_counters([]))
    assert not entry["ok"]


def test_faults_the_soak_itself_cut_short_are_superseded_not_failed() -> None:
    recs = [
        # reset seen, but the soak stopped before the slot reopened
        {"kind": "peer_reset", "injected": True, "observed": True, "superseded": True},
        # retrieve asked, but churn closed the connection before the upload it asked for
        {"kind": "retrieve", "injected": True, "superseded": True},
        # a retrieve neither uploaded nor cut short still fails
        {"kind": "retrieve", "injected": True},
    ]
    out = {f["kind"]: f for f in summarize_faults([], recs, merge_counters([]))}
    assert out["peer_reset"]["ok"] and out["peer_reset"]["superseded"] == 1
    assert out["retrieve"]["superseded"] == 1 and not out["retrieve"]["ok"]
    # a reset that was never observed fails even when superseded
    recs[0]["observed"] = False
    (entry, _) = summarize_faults([], recs[:2], merge_counters([]))
    assert not entry["ok"]
