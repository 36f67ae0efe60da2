"""chimney-soak's pure parts: size, duration, payload and fault-schedule parsers, report building."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import socket
import time
from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimney_client.soak import (
    FAULT_KINDS,
    FaultSpec,
    PayloadDist,
    build_parser,
    gauges_left,
    layer_faults,
    merge_counters,
    parse_duration,
    parse_faults,
    parse_payload,
    parse_size,
    percentiles,
    phases,
    schedule_faults,
)
from chimney_client.soak.faults import take_due
from chimney_client.soak.limits import STAGGER_S
from chimney_client.soak.parsing import (
    MAX_DURATION_S,
    parse_count,
    parse_number,
    parse_positive_duration,
)
from chimney_client.soak.plan import make_plan
from chimney_client.soak.procs import listener_pid, parent_pid


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


@pytest.mark.parametrize("text", ["", "k", "-1", "0", "4x", "1..2k", "9" * 400 + "k"])
def test_parse_size_rejects(text: str) -> None:
    """A ValueError, which the command line turns into a usage error: 400 digits, whose float
    is inf, raised an OverflowError (a traceback) when made an int."""
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("20", 20.0), ("20s", 20.0), ("500ms", 0.5), ("1.5m", 90.0), ("2min", 120.0)],
)
def test_parse_duration(text: str, value: float) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["soon", "-1", "nan", "inf", "9" * 400, "100000min", "31d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_duration_bounds() -> None:
    assert parse_duration("0") == 0.0  # a fault's @0s: at the hold's start
    assert parse_duration(f"{30 * 24 * 60}min") == MAX_DURATION_S
    assert parse_positive_duration("500ms") == 0.5
    with pytest.raises(ValueError, match="must be more than 0"):
        parse_positive_duration("0ms")


@pytest.mark.parametrize(
    ("text", "low", "high", "above_low", "says"),
    [
        ("x", 0.0, 1.0, False, "not a number: 'x'"),
        ("nan", 0.0, 1.0, False, "must be a finite number"),
        ("-inf", 0.0, 1.0, False, "must be a finite number"),
        ("0", 0.0, 1.0, True, "must be more than 0, got '0'"),
        ("-0.5", 0.0, 1.0, False, "must be at least 0, got '-0.5'"),
        ("1.5", 0.0, 1.0, False, "must be at most 1, got '1.5'"),
        ("2", 0.0, 1.5, False, "must be at most 1.5, got '2'"),
    ],
)
def test_parse_number_rejects(
    text: str, low: float, high: float, above_low: bool, says: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_number(text, low, high, above_low=above_low)


def test_parse_number_and_count_take_their_range() -> None:
    assert parse_number("0", 0.0, 1.0) == 0.0 and parse_number("1", 0.0, 1.0) == 1.0
    assert parse_number("1e3", 0.0, 1e6, above_low=True) == 1000.0
    assert parse_count("0", 0, 3) == 0 and parse_count("3", 0, 3) == 3
    for text, says in (("1.5", "not a whole number"), ("-1", "at least 0"), ("4", "at most 3")):
        with pytest.raises(ValueError, match=says):
            parse_count(text, 0, 3)


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


@pytest.mark.parametrize("text", ["", "64k:1k", "1k:", "a,b", "8m", "1k:16m", "4k,1g"])
def test_payload_rejects(text: str) -> None:
    """(8 MiB and more: one tcp.send would pass the daemon's default message limit.)"""
    with pytest.raises(ValueError):
        parse_payload(text)


# -- fault schedules ------------------------------------------------------------------------------
def test_parse_faults_full_syntax_with_contract_names() -> None:
    specs = parse_faults(
        "peer_reset:5,stall_peer:2/ms=3000,fail_next:3/count=2,target_failure@20s/for=4s"
    )
    assert specs == [
        FaultSpec("peer_reset", 5),
        FaultSpec("stall_peer", 2, None, (("ms", "3000"),)),
        FaultSpec("fail_next", 3, None, (("count", "2"),)),
        FaultSpec("target_failure", 1, 20.0, (("for", "4s"),)),
    ]
    assert specs[1].param("ms") == "3000"
    assert specs[2].param("layer") == "nic0"  # a default
    assert specs[2].param("call") == "MiniportTcpOffloadSend"
    assert specs[2].param("status") == "NDIS_STATUS_REQUEST_ABORTED"
    assert specs[3].scope == "layer" and specs[0].scope == "conn"


def test_old_fault_names_are_aliases_of_the_contract_names() -> None:
    old = parse_faults("stall:2/ms=3000,fail_send:3/n=2,nic_failure@20s/for=4s")
    new = parse_faults("stall_peer:2/ms=3000,fail_next:3/count=2,target_failure@20s/for=4s")
    assert old == new
    help_text = build_parser().format_help()
    for alias, canonical in (("stall", "stall_peer"), ("fail_send", "fail_next")):
        assert f"{alias} = {canonical}" in help_text
    assert "nic_failure = target_failure" in help_text


def test_fail_next_presets_say_what_they_do_to_the_traffic() -> None:
    send, upload, refuse, im_upload = parse_faults(
        "fail_next,upload_send,refuse_offload,fail_next/layer=im0/status=NDIS_STATUS_REQUEST_UPLOAD"
    )
    assert send.effect == "send_failure"
    assert upload.effect == "send_upload" and upload.param("layer") == "im0"
    assert refuse.effect == "offload_refusal"
    assert im_upload.effect == "send_upload"
    assert parse_faults("peer_reset")[0].effect is None


def test_every_option_has_help() -> None:
    for action in build_parser()._actions:
        assert action.help, action.option_strings


def test_every_fault_kind_is_in_the_help() -> None:
    text = build_parser().format_help()
    for kind in FAULT_KINDS:
        assert f"    {kind} " in text, kind


def test_parse_faults_empty() -> None:
    assert parse_faults(None) == []
    assert parse_faults("  ") == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("explode:1", "unknown kind"),
        ("stall:0", "at least 1"),
        ("stall/ms", "KEY=VALUE"),
        ("stall_peer/colour=red", "takes no key"),
        ("stall/ms=-5", "positive integer"),
        ("nic_failure@soon", "duration"),
        ("peer_reset:x", "expected"),
        ("fail_next/call=MiniportTcpOffloadDisconnect", "judges fail_next only"),
        ("fail_next/status=BROKEN", "NDIS_STATUS_"),
        ("raise_next/call=MiniportQueryOffload", "judges raise_next only"),
        ("raise_next/skip=some", "number of calls"),
        ("raise_next/status=NDIS_STATUS_FAILURE", "takes no key"),
    ],
)
def test_parse_faults_rejects_naming_the_item(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_faults(text)


def test_schedule_spreads_counts_and_keeps_times() -> None:
    plan = schedule_faults(parse_faults("peer_reset:3,nic_failure@2s"), 20.0)
    assert [(round(p.t, 3), p.spec.kind) for p in plan] == [
        (2.0, "target_failure"),
        (5.0, "peer_reset"),
        (10.0, "peer_reset"),
        (15.0, "peer_reset"),
    ]
    assert [p.tag for p in plan] == [1, 2, 3, 4]


def test_schedule_keeps_spread_faults_apart() -> None:
    """Faults spread over the hold that would fall together are moved apart (two injected at
    once would hit one connection's next call); a time given with @ is kept."""
    plan = schedule_faults(parse_faults("raise_next,fail_next,retrieve@10s,peer_reset:3"), 20.0)
    times = sorted(p.t for p in plan)
    assert 10.0 in times and 5.0 in times and 15.0 in times
    assert all(b - a >= STAGGER_S for a, b in itertools.pairwise(times)), times
    assert len(plan) == 6


def _placed_by_scan(specs: list[FaultSpec], hold_s: float) -> list[float]:
    """The placement rule written plainly (each step scans every time placed so far): the
    reference `schedule_faults` must agree with exactly."""
    plan = [s.at for s in specs if s.at is not None for _ in range(s.count)]
    for spec in specs:
        for i in range(spec.count if spec.at is None else 0):
            t = hold_s * (i + 1) / (spec.count + 1)
            while any(abs(t - u) < STAGGER_S for u in plan) and t + STAGGER_S < hold_s:
                t += STAGGER_S
            plan.append(t)
    return sorted(plan)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["peer_reset", "fail_next", "raise_next", "retrieve"]),
            st.integers(1, 40),
            st.one_of(st.none(), st.integers(1, 59)),
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([5.0, 20.0, 60.0]),
)
def test_schedule_places_as_the_plain_scan_does(
    items: list[tuple[str, int, int | None]], hold_s: float
) -> None:
    text = ",".join(
        f"{kind}" + (f"@{at % (int(hold_s) - 1) + 1}s" if at is not None else f":{count}")
        for kind, count, at in items
    )
    specs = parse_faults(text)
    assert [p.t for p in schedule_faults(specs, hold_s)] == _placed_by_scan(specs, hold_s)


def test_schedule_places_a_thousand_packed_faults() -> None:
    """1,000 faults in a 60 s hold, all but a few within STAGGER_S of another: each placed,
    in order, inside the hold."""
    plan = schedule_faults(parse_faults("peer_reset:500,fail_next:500"), 60.0)
    assert len(plan) == 1000
    assert all(0 < p.t < 60.0 for p in plan)
    assert [p.t for p in plan] == sorted(p.t for p in plan)


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
    unanswered = _stats()
    unanswered["engine"].update(pending_requests=2, queued_send_bytes=10)
    assert gauges_left(unanswered) == {
        "engine.pending_requests": 2,
        "engine.queued_send_bytes": 10,
    }


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


# -- processes ------------------------------------------------------------------------------------
def test_listener_pid_finds_who_listens_on_a_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert listener_pid(sock.getsockname()[1]) == os.getpid()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: nobody to find
        assert listener_pid(sock.getsockname()[1]) is None


def test_the_daemon_pid_of_a_sharded_rpc_daemon_is_its_supervisors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the shards listen on a sharded daemon's port: the soak names their parent, the
    supervisor, as the daemon, not whichever shard procfs lists first."""
    me, parent = os.getpid(), os.getppid()
    assert parent_pid(me) == parent
    monkeypatch.setattr(phases, "listener_pid", lambda port: me)
    found = object.__new__(phases.Phases)
    found.daemon_pid, found.daemon, found.rpc_addr = None, None, "127.0.0.1:7411"
    found.shard_pids = {0: me, 1: me + 1}
    found.find_daemon_pid()
    assert found.daemon_pid == parent
    found.daemon_pid, found.shard_pids = None, {}  # one process: the listener is the daemon
    found.find_daemon_pid()
    assert found.daemon_pid == me


# -- plans ----------------------------------------------------------------------------------------
def test_a_plan_refuses_peer_reset_without_our_own_peers() -> None:
    args = build_parser().parse_args(["--peer", "127.0.0.1:9000", "--faults", "peer_reset"])
    with pytest.raises(ValueError, match="daemon_reset"):
        make_plan(args, 20_000)
    args = build_parser().parse_args(["--peer", "127.0.0.1:9000", "--faults", "daemon_reset"])
    assert make_plan(args, 20_000).faults[0].spec.kind == "daemon_reset"


def test_a_plan_capped_by_the_open_file_limit_says_so() -> None:
    plan = make_plan(build_parser().parse_args(["-n", "30000"]), 20_000)
    assert plan.connections == 19_800 and plan.requested == 30_000
    assert plan.fd_note is not None and "30000 connections asked, 19800 possible" in plan.fd_note


def test_a_late_injector_still_spaces_spread_faults_but_keeps_times_given() -> None:
    """The coordinator's loop waited 3 s on a busy daemon: the spread faults due meanwhile go
    in one per STAGGER_S, as they were scheduled, not at once; one given with @ goes in on
    time."""
    pending = deque(schedule_faults(parse_faults("raise_next:3,fail_next@12.2s"), 20.0))
    assert [round(p.t, 1) for p in pending] == [5.0, 10.0, 12.2, 15.0]
    assert take_due(pending, 4.9, 99.0, False) is None  # not yet
    assert take_due(pending, 13.0, 99.0, False).t == 5.0  # type: ignore[union-attr]
    assert take_due(pending, 13.0, 0.0, False) is None  # spread: after STAGGER_S
    late = take_due(pending, 13.0 + STAGGER_S, STAGGER_S, False)
    assert late is not None and late.t == 10.0
    given = take_due(pending, 13.0 + STAGGER_S, 0.0, False)  # given with @: on time
    assert given is not None and given.spec.kind == "fail_next"
    assert take_due(pending, 14.0, 99.0, False) is None and len(pending) == 1


def test_spread_layer_faults_wait_while_a_nic_outage_settles() -> None:
    """Armed while a NIC is out or its connections are offloaded again, layer faults would all
    go off on the first few connections back: spread ones wait; connection faults and times
    given with @ do not."""
    faults = "fail_next,peer_reset,raise_next@6s,target_failure@7s"
    pending = deque(schedule_faults(parse_faults(faults), 20.0))
    assert [(round(p.t, 1), p.spec.kind) for p in pending] == [
        (6.0, "raise_next"), (7.0, "target_failure"), (10.0, "fail_next"), (10.5, "peer_reset"),
    ]  # fmt: skip
    for kind in ("raise_next", "target_failure"):
        got = take_due(pending, 8.0, 99.0, True)
        assert got is not None and got.spec.kind == kind
    assert take_due(pending, 10.2, 99.0, True) is None  # the fail_next waits
    got = take_due(pending, 12.0, 99.0, True)  # the reset behind it does not
    assert got is not None and got.spec.kind == "peer_reset"
    assert take_due(pending, 12.5, STAGGER_S, True) is None
    got = take_due(pending, 12.5, STAGGER_S, False)
    assert got is not None and got.spec.kind == "fail_next" and not pending


def test_faults_the_hold_left_no_room_to_spread_go_in_as_scheduled() -> None:
    """Two spread faults the schedule had to put at one time (a short hold) go in together,
    as scheduled: spacing them later would push the second past the hold, where only the
    connections still owing an outcome run and it lands on one of them."""
    plan = schedule_faults(parse_faults("fail_next,raise_next,peer_reset:3"), 2.0)
    pending = deque(p for p in plan if p.t == 1.5)  # raise_next and two resets
    assert [p.spec.kind for p in pending] == ["raise_next", "peer_reset", "peer_reset"]
    first = take_due(pending, 1.9, 99.0, False, 1.0)
    assert first is not None
    for _ in range(2):
        again = take_due(pending, 1.9, 0.0, False, first.t)
        assert again is not None and again.spec.kind == "peer_reset"
    assert not pending
    # one scheduled later than the last is spaced as the schedule spaced it, up to STAGGER_S
    pending = deque(p for p in plan if p.spec.kind == "raise_next")
    assert take_due(pending, 1.9, 0.4, False, 1.0) is None  # 0.5 s apart in the schedule


class _Resuming:
    """A daemon after a teaming MUX's outage of nic0, as stack.info and stack.stats show it:
    nic0 carries nothing (its gauge stays 0) while the MUX re-offloads its connections onto
    nic1, 10 more at each poll, then no more."""

    def __init__(self) -> None:
        self.nic1 = [0, 10, 20, 30]
        self.polls = 0

    async def stack_info(self) -> dict[str, Any]:
        self.polls += 1
        tcp = self.nic1[min(self.polls, len(self.nic1)) - 1]
        nics = [{"name": "nic0", "tcp": 0}, {"name": "nic1", "tcp": tcp}]
        return {"layers": [{"kind": "target", **nic} for nic in nics]}

    async def stack_stats(self) -> dict[str, Any]:
        return {"layers": {"nic0": {"offloads_active": 0}, "nic1": {"offloads_active": 0}}}


async def test_a_late_fault_waits_for_the_re_offloads_onto_every_nic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a MUX's outage its connections come back on the other NICs: the wait before
    spread layer faults go in again follows the connections offloaded on every NIC, not the
    gauge of the one taken out (which stays low, and ended the wait at once)."""
    monkeypatch.setattr(layer_faults, "SETTLE_POLL_S", 0.001)
    monkeypatch.setattr(layer_faults, "SETTLE_QUIET_S", 0.05)
    daemon = _Resuming()
    faults = layer_faults.LayerFaults()
    faults.control = daemon  # type: ignore[assignment]
    faults.interrupted = asyncio.Event()
    rec: dict[str, Any] = {}
    await faults.settle(rec, "nic0", None)
    assert daemon.polls > len(daemon.nic1), "the wait ended before nic1 stopped rising"
    assert rec["settled_s"] >= 0.05


class _LateResume(_Resuming):
    """A target failure of nic0, cleared: for 100 polls nic0 carries 2 connections (new ones
    offloaded since), then the RESUME's re-offload brings back its 100 all at once (at 10,000
    connections that came 4.3 s after the clear)."""

    def __init__(self, back_after: int = 100) -> None:
        super().__init__()
        self.back_after = back_after

    async def stack_info(self) -> dict[str, Any]:
        self.polls += 1
        tcp = 2 if self.polls <= self.back_after else 100
        return {"layers": [{"kind": "target", "name": "nic0", "tcp": tcp}]}


async def test_a_late_fault_waits_for_a_late_resume_to_bring_the_connections_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Quiet alone is not settled: while the NIC carries far fewer connections than before the
    outage, the RESUME's re-offload is still to come. The wait ends once they are back (and
    quiet), or at SETTLE_MAX_S if they never come."""
    monkeypatch.setattr(layer_faults, "SETTLE_POLL_S", 0.001)
    monkeypatch.setattr(layer_faults, "SETTLE_QUIET_S", 0.02)
    faults = layer_faults.LayerFaults()
    faults.interrupted = asyncio.Event()
    daemon = _LateResume()
    faults.control = daemon  # type: ignore[assignment]
    rec: dict[str, Any] = {"nics_before": {"nic0": 100}, "offloaded_before": 103}
    await faults.settle(rec, "nic0", None)
    assert daemon.polls > daemon.back_after, "the wait ended before the connections came back"
    assert rec["t_back"] <= time.monotonic() - 0.02  # when they were back: the outage's end
    monkeypatch.setattr(layer_faults, "SETTLE_MAX_S", 0.1)
    never = _LateResume(back_after=10**9)
    faults.control = never  # type: ignore[assignment]
    rec = {"nics_before": {"nic0": 100}}
    await faults.settle(rec, "nic0", None)
    assert 0.1 <= rec["settled_s"] < 5 and "t_back" not in rec


def test_a_spread_outage_waits_for_the_one_before_to_settle() -> None:
    """Spread evenly, a NIC taken down, a rebalance and another NIC's failure all fall in the
    middle of the hold, a stagger apart: each moves connections the one before was still
    moving, and the soak could tell no outcome apart. The later ones wait while the one
    before settles; one given with @ does not."""
    faults = "nic_down/layer=nic1,rebalance,target_failure/layer=nic2,target_failure@11s"
    pending = deque(schedule_faults(parse_faults(faults), 20.0))
    assert [p.spec.kind for p in pending][:2] == ["nic_down", "rebalance"]
    got = take_due(pending, 10.0, 99.0, False)
    assert got is not None and got.spec.kind == "nic_down"
    assert take_due(pending, 10.8, 0.8, True) is None  # the rebalance waits
    got = take_due(pending, 11.0, 1.0, True)
    assert got is not None and got.t == 11.0  # given with @
    got = take_due(pending, 14.0, 99.0, False)  # settled
    assert got is not None and got.spec.kind == "rebalance"
    assert take_due(pending, 14.5, 99.0, True) is None  # the failure of nic2 waits for it


async def test_an_outage_keeps_spread_ones_waiting_until_its_window_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The judge gives an outage what is asked up until RESUME_GRACE_S after its NICs were
    back (outcomes.Window). A spread target failure that went in as a rebalance before it
    settled had its uploads judged as the rebalance's, and failed with none of its own: the
    outage is still settling, for the faults waiting behind it, until past that."""
    monkeypatch.setattr(layer_faults, "RESUME_GRACE_S", 0.05, raising=False)
    monkeypatch.setattr(layer_faults, "STAGGER_S", 0.01)
    faults = layer_faults.LayerFaults()
    faults.control = object()  # type: ignore[assignment]
    faults.interrupted = asyncio.Event()
    faults.layer_records = []
    faults.nics_settling = 0
    moved = asyncio.Event()

    async def rebalance(rec: dict[str, Any], layer: str, where: dict[str, int]) -> None:
        rec["injected"] = True
        moved.set()  # its connections offloaded again

    monkeypatch.setattr(faults, "rebalance", rebalance)
    (sf,) = schedule_faults(parse_faults("rebalance"), 10.0)
    task = asyncio.create_task(faults.inject(sf))
    await moved.wait()
    await asyncio.sleep(0.01)
    assert faults.nics_settling == 1, "the next outage would be judged with this one"
    await task
    assert faults.nics_settling == 0
