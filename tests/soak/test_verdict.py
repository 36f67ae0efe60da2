"""The verdict can fail: a clean run of every fault kind passes, and each mutation of it (one
thing broken: an offload refused with no fault, a fault without its outcome, bytes lost before a
reset, memory kept, a run capped by the open-file limit, ...) turns the verdict red and says why.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from chimney_client.soak import build_parser, build_report, judge, merge_counters, state_times

Rec = dict[str, Any]

NIC0 = ["tcpip", "im0", "nic0"]


def _layer_records() -> list[Rec]:
    """A target failure from t=100 to t=103 and three fail_next presets, all used up."""
    return [
        {
            "tag": 1,
            "kind": "target_failure",
            "effect": None,
            "params": {"layer": "nic0", "for": "3s"},
            "injected": True,
            "t0": 100.0,
            "t1": 100.1,
            "t_clear0": 103.0,
            "t_clear1": 103.1,
            "cleared": True,
            "offloaded_before": 2,
            "offloaded_at_end": 0,
            "fault_id": 1,
        },
        _fail_next(2, "fail_next", "send_failure", "NDIS_STATUS_REQUEST_ABORTED", 10.0),
        _fail_next(3, "upload_send", "send_upload", "NDIS_STATUS_UPLOAD_IN_PROGRESS", 20.0),
        _fail_next(4, "refuse_offload", "offload_refusal", "NDIS_STATUS_FAILURE", 30.0),
    ]


def _fail_next(tag: int, kind: str, effect: str, status: str, t0: float) -> Rec:
    return {
        "tag": tag,
        "kind": kind,
        "effect": effect,
        "params": {"layer": "nic0", "call": "x", "status": status, "count": "1"},
        "injected": True,
        "t0": t0,
        "t1": t0 + 0.01,
        "fault_id": tag,
        "consumed": True,
    }


def _conn_records() -> list[Rec]:
    return [
        {
            "kind": "peer_reset",
            "injected": True,
            "conn": 11,
            "abort_seen": True,
            "new_conn": 12,
            "delivered": 5000,
            "held_at_reset": 900,  # read by the daemon, not by us, when the reset was ordered
            "sent_at_close": 6000,
            "verified_after": 4096,
            "done": True,
        },
        {
            "kind": "daemon_reset",
            "injected": True,
            "conn": 13,
            "abort_seen": True,
            "delivered": 2048,  # tcp.info bytes_received after the abort
            "held_at_reset": 1024,
            "new_conn": 14,
            "verified_after": 100,
            "done": True,
        },
        # injected at t=40 for 1.5 s; the round trip begun right after came back at its end
        {
            "kind": "stall_peer",
            "injected": True,
            "conn": 15,
            "stall_end": 41.5,
            "trip_t0": 40.01,
            "trip_t1": 41.502,
            "verified_after": 9,
            "done": True,
        },
        {
            "kind": "retrieve",
            "injected": True,
            "conn": 16,
            "event_seen": True,
            "mandatory": True,
            "uploaded": True,
            "reoffloaded_t": 51.0,
            "verified_after": 10,
            "done": True,
        },
    ]


def _obs() -> dict[str, list[Rec]]:
    upload = {"t": 100.2, "reoffloaded_t": 103.5, "path": NIC0, "verified_after": 7, "done": True}
    return {
        "upload_all": [{"conn": 1, **upload}, {"conn": 2, **upload}],
        "unrequested": [
            {"conn": 3, "t": 21.0, "sending": True, "reoffloaded_t": 21.2, "done": True},
            # the NIC that failed conn 4's send asked for its upload (spec §4.1)
            {"conn": 4, "t": 11.1, "reason": "UploadRequested", "sending": False, "done": True},
        ],
        "send_failures": [
            {
                "conn": 4,
                "t": 11.0,
                "status": "NDIS_STATUS_REQUEST_ABORTED",
                "resent": True,
                "done": True,
                "verified_after": 99,
            }
        ],
        "refusals": [
            # refused while nic0 was down: the target failure explains it
            {
                "conn": 5,
                "at": "reoffload",
                "t_first": 101.0,
                "t_last": 102.5,
                "attempts": 3,
                "offloaded_t": 103.6,
                "done": True,
            },
            # the one refuse_offload fault
            {
                "conn": 6,
                "at": "connect",
                "t_first": 31.0,
                "t_last": 31.0,
                "attempts": 1,
                "offloaded_t": 31.6,
                "done": True,
            },
        ],
        "host_at_close": [],
        "disagreements": [],
    }


def _report(
    layer: list[Rec], conn: list[Rec], obs: dict[str, list[Rec]], **over: Any
) -> dict[str, Any]:
    faults, host = judge(layer, conn, obs)
    kw: dict[str, Any] = {
        "settings": {},
        "counters": merge_counters([{"ops": 100, "bytes_sent": 5000, "bytes_verified": 5000}]),
        "latencies_ms": [1.0, 2.0, 3.0],
        "integrity_details": [],
        "error_details": {},
        "faults": faults,
        "host_mode": host,
        "states": state_times({"offloaded": 90.0, "host": 9.0, "uploading": 1.0}, {}),
        "stats_before": _stats(CHECKED_BEFORE),
        "stats_after": _stats(),
        "timing": {"active_s": 10.0},
        "rss_kb": {"before": 1000, "after": 1050, "peak": 2000},
        "daemon": {"crashed": False, "exit_status": 0, "spawned": True},
        "connections": {"held": 10, "requested": 10, "with_traffic": 10},
    }
    kw.update(over)
    return build_report(**kw)


#: NBL completions the daemon's checker had checked before and after a run (a run's traffic
#: goes through it: it checked some)
CHECKED_BEFORE, CHECKED_AFTER = 100, 500


def _stats(checked: int | None = CHECKED_AFTER, **gauges: int) -> Rec:
    layer = {"offloads_active": 0, "handles": 0, "outstanding_nbls": 0}
    return {
        "layers": {"tcpip": dict(layer), "nic0": {**layer, **gauges}},
        "connections": 0,
        "engine": {"invariant_violations": 0, "invariant_checked_nbls": checked},
    }


def _clean() -> tuple[list[Rec], list[Rec], dict[str, list[Rec]]]:
    return _layer_records(), _conn_records(), _obs()


def test_a_clean_run_of_every_fault_passes() -> None:
    r = _report(*_clean())
    assert r["failures"] == [] and r["ok"]
    kinds = {f["kind"]: f for f in r["faults"]}
    assert set(kinds) == {
        "peer_reset", "daemon_reset", "stall_peer", "retrieve", "target_failure",
        "fail_next", "upload_send", "refuse_offload",
    }  # fmt: skip
    assert kinds["target_failure"]["reoffloaded"] == 2
    assert kinds["fail_next"]["observed"] == kinds["fail_next"]["expected"] == 1
    assert kinds["fail_next"]["uploaded"] == 1
    assert kinds["peer_reset"]["echoed_before_rst"] == 5000
    assert kinds["peer_reset"]["cut_off_by_rst"] == 1000
    assert kinds["stall_peer"]["held"] == 1
    assert kinds["daemon_reset"]["read_before_rst"] == 2048
    # each reset landed with bytes held at the daemon: the loss check above had a case
    assert kinds["peer_reset"]["resets_with_bytes_held"] == 1
    assert kinds["peer_reset"]["bytes_held_at_reset"] == 900
    assert kinds["daemon_reset"]["resets_with_bytes_held"] == 1
    assert r["host_mode"]["explained"] == {
        "target_failure": 1,
        "refuse_offload": 1,
        "raise_next": 0,
    }
    assert r["host_mode"]["unexplained"] == 0


Mutation = Callable[[list[Rec], list[Rec], dict[str, list[Rec]]], None]


def _conn(conn: list[Rec], kind: str) -> Rec:
    return next(r for r in conn if r["kind"] == kind)


def _layer(layer: list[Rec], kind: str) -> Rec:
    return next(r for r in layer if r["kind"] == kind)


MUTATIONS: dict[str, tuple[Mutation, str]] = {
    # -- connections not offloaded, with no fault to explain it --------------------------------
    "refused at connect": (
        lambda lay, con, obs: obs["refusals"].append(
            {"conn": 7, "at": "connect", "t_first": 50.0, "t_last": 50.0, "attempts": 1}
        ),
        "conn 7: offload refused at connect",
    ),
    "re-offload refused": (
        lambda lay, con, obs: obs["refusals"].append(
            {
                "conn": 8,
                "at": "reoffload",
                "t_first": 200.0,
                "t_last": 201.0,
                "attempts": 2,
                "status": "NDIS_STATUS_FAILURE",
            }
        ),
        "conn 8: offload refused at reoffload (NDIS_STATUS_FAILURE)",
    ),
    "closed in host mode": (
        lambda lay, con, obs: obs["host_at_close"].append(
            {"conn": 9, "t": 200.0, "cause": "connect"}
        ),
        "conn 9: closed in host mode",
    ),
    "refused during the outage and never offloaded again": (
        lambda lay, con, obs: obs["refusals"][0].update(offloaded_t=None),
        "never offloaded again",
    ),
    "uploaded unasked": (
        lambda lay, con, obs: obs["unrequested"].append({"conn": 10, "t": 200.0, "sending": False}),
        "conn 10: uploaded unasked",
    ),
    "UPLOAD_ALL with no target failure": (
        lambda lay, con, obs: obs["upload_all"].append({"conn": 17, "t": 300.0}),
        "uploaded by UPLOAD_ALL with no target failure",
    ),
    "state differs from tcp.info": (
        lambda lay, con, obs: obs["disagreements"].append(
            {"conn": 18, "soak": "offloaded", "daemon": "host"}
        ),
        "soak says offloaded, tcp.info host",
    ),
    # -- connection faults without their outcome ----------------------------------------------
    "retrieve never raised": (
        lambda lay, con, obs: _conn(con, "retrieve").update(event_seen=False),
        "no TcpIndicateRetrieve",
    ),
    "retrieve not uploaded": (
        lambda lay, con, obs: _conn(con, "retrieve").update(uploaded=False, done=False),
        "a mandatory retrieve was not uploaded",
    ),
    "retrieve not offloaded again": (
        lambda lay, con, obs: _conn(con, "retrieve").update(reoffloaded_t=None, done=False),
        "not offloaded again after the retrieve",
    ),
    "retrieve without data after": (
        lambda lay, con, obs: _conn(con, "retrieve").update(done=False, verified_after=0),
        "no byte verified after the retrieve",
    ),
    "stall without data after": (
        lambda lay, con, obs: _conn(con, "stall_peer").update(done=False, verified_after=0),
        "no byte verified after the stall ended",
    ),
    "stall that held nothing": (
        lambda lay, con, obs: _conn(con, "stall_peer").update(trip_t1=40.02),
        "conn 15: a round trip begun during the stall came back 1480 ms before its end",
    ),
    "stall no round trip crossed": (
        lambda lay, con, obs: _conn(con, "stall_peer").update(trip_t0=None, trip_t1=None),
        "no round trip began during the stall",
    ),
    "stall whose round trip never came back": (
        lambda lay, con, obs: _conn(con, "stall_peer").update(trip_t1=None),
        "the round trip begun during the stall never came back",
    ),
    "peer reset without abort": (
        lambda lay, con, obs: _conn(con, "peer_reset").update(abort_seen=False),
        "no TcpIndicateAbort",
    ),
    "peer reset hides loss before it": (
        lambda lay, con, obs: _conn(con, "peer_reset").update(lost_before_reset=300),
        "300 byte(s) echoed before the RST never came back",
    ),
    "daemon reset hides loss before it": (
        lambda lay, con, obs: _conn(con, "daemon_reset").update(lost_before_reset=7),
        "conn 13: 7 byte(s) the daemon had read before its own RST never came back",
    ),
    "daemon reset with no count of what the daemon had read": (
        lambda lay, con, obs: _conn(con, "daemon_reset").update(delivered=None),
        "tcp.info did not say what the daemon had read",
    ),
    "peer reset with nothing held at the daemon": (
        lambda lay, con, obs: _conn(con, "peer_reset").update(held_at_reset=0),
        "conn 11: no byte held at the daemon when the reset was ordered",
    ),
    "daemon reset that does not say what was held": (
        lambda lay, con, obs: _conn(con, "daemon_reset").pop("held_at_reset"),
        "conn 13: no byte held at the daemon when the reset was ordered",
    ),
    "reset slot never carried data again": (
        lambda lay, con, obs: _conn(con, "daemon_reset").update(done=False),
        "the reopened slot carried no verified data",
    ),
    # -- layer faults without their outcome ---------------------------------------------------
    "target failure never cleared": (
        lambda lay, con, obs: _layer(lay, "target_failure").update(
            cleared=False, clear_error="NOT_FOUND"
        ),
        "fault.clear failed",
    ),
    "connections left on the failed NIC": (
        lambda lay, con, obs: _layer(lay, "target_failure").update(offloaded_at_end=3),
        "3 connection(s) still offloaded on it",
    ),
    "no connection uploaded by the failure": (
        lambda lay, con, obs: obs["upload_all"].clear(),
        "none uploaded (UPLOAD_ALL)",
    ),
    "not offloaded again after the failure": (
        lambda lay, con, obs: obs["upload_all"][0].update(reoffloaded_t=None, done=False),
        "conn 1: not offloaded again after nic0 recovered",
    ),
    "offloaded on the NIC while it was failed": (
        lambda lay, con, obs: obs["upload_all"][1].update(reoffloaded_t=101.0),
        "conn 2: offloaded on nic0 while it was failed",
    ),
    "failed send never seen": (
        lambda lay, con, obs: obs["send_failures"].clear(),
        "1 send failure(s) caused, 0 seen",
    ),
    "failed send never resent": (
        lambda lay, con, obs: obs["send_failures"][0].update(resent=False, done=False),
        "the failed bytes were never resent",
    ),
    "more failed sends than the fault caused": (
        lambda lay, con, obs: obs["send_failures"].append(
            {
                "conn": 19,
                "t": 12.0,
                "status": "NDIS_STATUS_REQUEST_ABORTED",
                "resent": True,
                "done": True,
            }
        ),
        "conn 19: a send failed with NDIS_STATUS_REQUEST_ABORTED",
    ),
    "no data after the upload a failed send caused": (
        lambda lay, con, obs: obs["unrequested"][1].update(done=False),
        "conn 4: no byte verified after its upload",
    ),
    "the NIC asked another connection up": (
        lambda lay, con, obs: obs["unrequested"][1].update(conn=21),
        "conn 21: uploaded unasked (UploadRequested)",
    ),
    "fail_next never used up": (
        lambda lay, con, obs: _layer(lay, "fail_next").update(consumed=False),
        "fault 2 never used up: set for 1 x in nic0 (nic0 did not get that many such calls",
    ),
    "fail_next used in part": (
        lambda lay, con, obs: _layer(lay, "refuse_offload").update(
            consumed=False,
            failed=[{"layer": "nic0", "call": "x"}],
            params={"layer": "nic0", "call": "MiniportInitiateOffload", "count": "2", "skip": 3},
        ),
        "fault 4 never used up: 1 of the 2 MiniportInitiateOffload it was set for in nic0 failed"
        " (nic0 did not get that many such calls past the 3 it lets through",
    ),
    "IM upload with no upload": (
        lambda lay, con, obs: obs["unrequested"].clear(),
        "1 send upload(s) caused, 0 seen",
    ),
    "refused offload never seen": (
        lambda lay, con, obs: obs["refusals"].pop(1),
        "1 offload refusal(s) caused, 0 seen",
    ),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_each_mutation_turns_the_verdict_red(name: str) -> None:
    mutate, why = MUTATIONS[name]
    layer, conn, obs = copy.deepcopy(_clean())
    mutate(layer, conn, obs)
    r = _report(layer, conn, obs)
    assert not r["ok"], name
    assert any(why in f for f in r["failures"]), (why, r["failures"])


def _failed_said(layer: list[Rec], **conns: int) -> None:
    """The daemon's fault.list `used` for the fail_next presets: each failed one call, of the
    connection given by kind (fail_next, upload_send, refuse_offload)."""
    for r in layer:
        if r["kind"] in conns:
            hit = {"layer": "nic0", "call": "x", "conns": [conns[r["kind"]]], "conns_total": 1}
            r["failed"], r["failed_dropped"] = [hit], 0


SAID = {"fail_next": 4, "upload_send": 3, "refuse_offload": 6}  # the clean run's connections


def test_fail_next_outcomes_are_on_the_connections_the_daemon_says_it_failed() -> None:
    layer, conn, obs = copy.deepcopy(_clean())
    _failed_said(layer, **SAID)
    r = _report(layer, conn, obs)
    assert r["failures"] == [] and r["ok"]
    kinds = {f["kind"]: f for f in r["faults"]}
    for kind in SAID:
        assert kinds[kind]["observed"] == kinds[kind]["expected"] == 1, kind
        assert kinds[kind]["connections_failed"] == 1, kind
    assert "connections_failed" not in _report(*_clean())["faults"][0]


@pytest.mark.parametrize("kind", list(SAID))
def test_a_fail_next_outcome_on_another_connection_than_the_daemon_says_is_red(
    kind: str,
) -> None:
    """The outcome the soak saw is on a connection the fault did not fail a call of: not
    its outcome (matched by time and status alone it would pass, `_clean`)."""
    layer, conn, obs = copy.deepcopy(_clean())
    _failed_said(layer, **{**SAID, kind: 9})
    r = _report(layer, conn, obs)
    assert not r["ok"]
    effect = {"fail_next": "send failure", "upload_send": "send upload"}
    caused = f"1 {effect.get(kind, 'offload refusal')}(s) caused, 0 seen"
    assert any(caused in f for f in r["failures"]), r["failures"]
    said = "conn 9: the daemon says a call of it failed, no outcome"
    assert any(said in f for f in r["failures"]), r["failures"]


@pytest.mark.parametrize("t_back", [103.4, None])
def test_a_refusal_merged_into_a_faults_episode_needs_its_own_cause(t_back: float | None) -> None:
    """A connection opened just after the target failure was cleared is refused at connect
    (the host, under load, has not heard RESUME yet), then its re-offload is refused by the
    refuse_offload: one episode of two refusals, where the daemon says the fault failed one.
    The other is the outage's when its window covers the connect: up to when the NICs
    carried their connections again (`t_back`, 103.4 + 1 s), not only 1 s after the clear
    (103.1 + 1 s); else no fault's, and the run fails."""
    layer, conn, obs = copy.deepcopy(_clean())
    _failed_said(layer, **SAID)
    if t_back is not None:
        next(r for r in layer if r["kind"] == "target_failure")["t_back"] = t_back
    next(r for r in layer if r["kind"] == "refuse_offload").update(t0=104.0, t1=104.01)
    next(ep for ep in obs["refusals"] if ep["conn"] == 6).update(
        t_first_sent=104.3, t_first=104.5, t_last=105.0, t_last_sent=104.8, attempts=2
    )
    r = _report(layer, conn, obs)
    refuse = next(f for f in r["faults"] if f["kind"] == "refuse_offload")
    assert refuse["observed"] == refuse["expected"] == 1
    if t_back is not None:
        assert r["ok"], r["failures"]
        assert refuse["refusals_of_an_outage"] == 1
    else:
        beyond = "conn 6: 1 refusal(s) more than the daemon says a fault failed"
        assert any(beyond in f for f in r["failures"]), r["failures"]


def test_where_the_daemon_cut_its_list_short_fail_next_is_matched_by_time() -> None:
    layer, conn, obs = copy.deepcopy(_clean())
    _failed_said(layer, **{**SAID, "fail_next": 9})
    next(r for r in layer if r["kind"] == "fail_next")["failed_dropped"] = 3
    r = _report(layer, conn, obs)
    assert r["failures"] == [] and r["ok"]


def test_a_fail_next_in_every_shard_fails_its_count_in_each() -> None:
    """A daemon of two shards: a fail_next with no /shard= goes into both, and fails its
    count of sends in each. Two send failures (each with its upload) are its outcomes; one
    alone is a miss."""
    layer, conn, obs = copy.deepcopy(_clean())
    next(r for r in layer if r["kind"] == "fail_next")["shards"] = 2
    failure, upload = obs["send_failures"][0], obs["unrequested"][1]
    obs["send_failures"].append({**failure, "conn": 8, "t": 12.0})
    obs["unrequested"].append({**upload, "conn": 8, "t": 12.1})
    missed = copy.deepcopy((layer, conn, obs))  # the judge marks what it explained
    r = _report(layer, conn, obs)
    assert r["failures"] == [] and r["ok"], r["failures"]
    kinds = {f["kind"]: f for f in r["faults"]}
    assert kinds["fail_next"]["observed"] == kinds["fail_next"]["expected"] == 2
    missed[2]["send_failures"].pop()
    r = _report(*missed)
    assert any("2 send failure(s) caused, 1 seen" in f for f in r["failures"]), r["failures"]


def test_one_fault_kind_with_two_effects_reports_the_counts_of_both() -> None:
    """Two fail_next in one schedule, one failing sends (REQUEST_ABORTED) and one with
    UPLOAD_IN_PROGRESS (an upload): each effect is judged on its own, and the report gives the
    fault's total and each effect's counts. Before, the last effect's overwrote the first's
    (expected 1, observed 1, verified after 0 shown for two faults)."""
    from chimney_client.soak.report import fault_brief

    layer, conn, obs = _clean()
    _layer(layer, "upload_send")["kind"] = "fail_next"
    obs["unrequested"][0]["verified_after"] = 5
    r = _report(layer, conn, obs)
    assert r["ok"], r["failures"]
    [f] = [f for f in r["faults"] if f["kind"] == "fail_next"]
    assert (f["injected"], f["expected"], f["observed"]) == (2, 2, 2)
    assert f["verified_after"] == 99 + 5
    assert f["by_effect"] == "send failure 1 of 1; send upload 1 of 1"
    assert "expected 2, observed 2" in fault_brief(f)
    # a miss in the first group still shows, in its own counts and in the total
    layer, conn, obs = _clean()
    _layer(layer, "upload_send")["kind"] = "fail_next"
    obs["send_failures"].clear()
    r = _report(layer, conn, obs)
    [f] = [f for f in r["faults"] if f["kind"] == "fail_next"]
    assert (f["expected"], f["observed"]) == (2, 1)
    assert f["by_effect"] == "send failure 0 of 1; send upload 1 of 1"
    assert any("1 send failure(s) caused, 0 seen" in p for p in f["problems"]), f["problems"]


def test_a_retrieve_a_target_failure_overtook_is_explained_by_it() -> None:
    """The target failure asked the connection up (UPLOAD_ALL) before the retrieve reached
    the NIC, which asks nothing twice (spec §5.2): no event of the retrieve's own, and no
    failure for it; data verified after it is still owed."""
    layer, conn, obs = _clean()
    _conn(conn, "retrieve").update(event_seen=False, overtaken=True, uploaded=False)
    r = _report(layer, conn, obs)
    assert r["ok"], r["failures"]
    [retrieve] = [f for f in r["faults"] if f["kind"] == "retrieve"]
    assert retrieve["overtaken_by_target_failure"] == 1
    _conn(conn, "retrieve").update(done=False, verified_after=0)
    r = _report(layer, conn, obs)
    assert any("no byte verified after the retrieve" in f for f in r["failures"])


def test_a_hardware_failure_retrieve_is_judged_as_any_mandatory_retrieve() -> None:
    """`retrieve /reason=HardwareFailure` only has the NIC raise the request (docs/faults.md
    `retrieve`: on a healthy connection it only uploads it); the abort of spec §3.7 step 3
    belongs to a state call that found the hardware corrupt, not to the request. So the
    connection is uploaded, offloaded again and carries verified data, with no
    `TcpIndicateAbort` owed; one not uploaded is still a failure."""
    layer, conn, obs = _clean()
    _conn(conn, "retrieve").update(reason="HardwareFailure", abort_seen=False)
    r = _report(layer, conn, obs)
    assert r["ok"], r["failures"]
    [retrieve] = [f for f in r["faults"] if f["kind"] == "retrieve"]
    assert retrieve["uploaded"] == retrieve["reoffloaded"] == 1
    _conn(conn, "retrieve").update(uploaded=False)
    r = _report(layer, conn, obs)
    assert any("a mandatory retrieve was not uploaded" in f for f in r["failures"]), r["failures"]


def test_a_refusal_during_a_target_failure_is_explained_by_it() -> None:
    layer, conn, obs = _clean()
    obs["refusals"].append(
        {"conn": 20, "at": "connect", "t_first": 101.0, "t_last": 101.0, "attempts": 1,
         "offloaded_t": 104.0, "done": True}
    )  # fmt: skip
    r = _report(layer, conn, obs)
    assert r["ok"], r["failures"]
    assert r["host_mode"]["explained"]["target_failure"] == 2


def test_a_refusal_answered_late_is_judged_by_when_its_request_went_out() -> None:
    """Under load a refused connect can be answered seconds after the daemon decided: sent
    while nic0 was down (until 103.1 + the grace), answered at 106.0, the failure explains it;
    the same answer for a request sent at 105.0 is unexplained."""
    refusal = {"conn": 21, "at": "connect", "t_first": 106.0, "t_last": 106.0, "attempts": 1,
               "offloaded_t": 106.5, "done": True}  # fmt: skip
    layer, conn, obs = _clean()
    obs["refusals"].append({**refusal, "t_last_sent": 102.9})
    r = _report(layer, conn, obs)
    assert r["ok"], r["failures"]
    assert r["host_mode"]["explained"]["target_failure"] == 2
    layer, conn, obs = _clean()
    obs["refusals"].append({**refusal, "t_last_sent": 105.0})
    r = _report(layer, conn, obs)
    assert not r["ok"]
    assert any("conn 21: offload refused at connect" in f for f in r["failures"]), r["failures"]


def test_a_refused_offload_right_after_a_target_failure_is_told_apart_by_status() -> None:
    """Just after the NIC recovers, a refusal may be the failure's (OFFLOAD_PAUSE) or the
    refuse_offload fault's (its own status): each is counted where its status says."""
    layer, conn, obs = _clean()
    obs["refusals"][1].update(t_first=103.5, t_last=103.5, status="NDIS_STATUS_FAILURE")
    _layer(layer, "refuse_offload")["t0"] = 103.2
    obs["refusals"][0].update(status="NDIS_STATUS_OFFLOAD_PAUSE")
    r = _report(layer, conn, obs)
    assert r["ok"], r["failures"]
    assert r["host_mode"]["explained"] == {
        "target_failure": 1,
        "refuse_offload": 1,
        "raise_next": 0,
    }


def test_rss_growth_fails_unless_allowed() -> None:
    grown = {"before": 1000, "after": 1200, "peak": 3000}
    r = _report(*_clean(), rss_kb=grown)
    assert not r["ok"] and any("RSS" in f and "x1.2" in f for f in r["failures"])
    r = _report(*_clean(), rss_kb=grown, allow_rss_growth=True)
    assert r["ok"] and r["rss_kb"]["within_10pct"] is False and not r["rss_kb"]["judged"]
    r = _report(*_clean(), rss_kb={"before": None, "after": None, "peak": None})
    assert r["ok"] and r["rss_kb"]["within_10pct"] is None  # not measured: nothing to judge


def test_a_run_capped_by_the_open_file_limit_fails_unless_allowed() -> None:
    capped = {
        "held": 19800,
        "requested": 30000,
        "with_traffic": 19800,
        "capped_by_fd_limit": "open-file limit caps this run: 30000 connections asked, 19800",
    }
    r = _report(*_clean(), connections=capped)
    assert not r["ok"] and any("open-file limit caps" in f for f in r["failures"])
    assert _report(*_clean(), connections=capped, allow_fd_cap=True)["ok"]
    refused = {"held": 9, "requested": 10, "with_traffic": 9, "limit_refusals": 1}
    r = _report(*_clean(), connections=refused)
    assert any("refused by the daemon's LIMIT" in f for f in r["failures"])


def test_interrupted_runs_fail_and_say_so() -> None:
    r = _report(*_clean(), interrupted=True)
    assert r["interrupted"] and not r["ok"]
    assert r["failures"][0].startswith("interrupted")


def test_a_run_stopped_early_fails_and_says_why() -> None:
    r = _report(*_clean(), stopped_early="the daemon reports 1 new layer errors")
    assert not r["ok"] and "stopped early: the daemon reports 1 new layer errors" in r["failures"]


def test_integrity_leaks_crash_and_idle_connections_fail() -> None:
    counters = merge_counters(
        [{"ops": 1, "integrity_errors": 2, "unverified_on_close": 7, "aborts_while_closing": 1}]
    )
    r = _report(
        *_clean(),
        counters=counters,
        stats_after=_stats(outstanding_nbls=1),
        daemon={"crashed": True, "crash": "exit status -11", "exit_status": -11},
        connections={"held": 10, "requested": 10, "with_traffic": 9},
    )
    text = " | ".join(r["failures"])
    for why in (
        "2 integrity error(s)",
        "outstanding_nbls",
        "daemon crashed",
        "7 byte(s) sent but never echoed back",
        "only 9 of 10 connections carried traffic",
        "1 connection(s) aborted during their close",
    ):
        assert why in text, why


def test_state_times_are_shares_of_connection_seconds() -> None:
    st = state_times({"offloaded": 75.0, "host": 20.0, "uploading": 5.0}, {"planned_upload": 20})
    assert st["share"] == {"offloaded": 0.75, "host": 0.2, "uploading": 0.05}
    assert st["host_by_cause"] == {"planned_upload": 20}


TEAM_NIC1 = ["tcpip", "team0", "nic1"]


def _mux_outage() -> tuple[list[Rec], list[Rec], dict[str, list[Rec]]]:
    """nic1 under a MUX is taken out from t=100 to t=103; the MUX asked its two connections up
    at once (UploadRequested), and the host uploaded them after the NIC was back (a MUX with
    thousands to move); a connect was refused until the last of them was up."""
    layer = [
        {
            **_layer_records()[0],
            "kind": "nic_down",
            "params": {"layer": "nic1", "for": "3s"},
            "nics_before": {"nic0": 2, "nic1": 2},
            "nics_at_end": {"nic0": 4, "nic1": 0},
        }
    ]
    late = {"reason": "UploadRequested", "came_from": TEAM_NIC1, "sending": False, "done": True}
    obs = {
        "upload_all": [],
        "unrequested": [
            {"conn": 1, "t": 104.5, "asked": 100.2, "reoffloaded_t": 105.0, **late},
            {"conn": 2, "t": 106.0, "asked": 100.2, "reoffloaded_t": 106.2, **late},
        ],
        "send_failures": [],
        "refusals": [
            {
                "conn": 7,
                "at": "connect",
                "t_first": 105.5,
                "t_last": 105.5,
                "attempts": 1,
                "offloaded_t": 106.5,
                "done": True,
            }
        ],
        "host_at_close": [],
        "disagreements": [],
    }
    for u in obs["unrequested"]:
        u["verified_after"] = 10
    return layer, [], obs


def test_a_mux_outage_explains_its_retrieves_and_the_pause_until_the_last_upload() -> None:
    r = _report(*_mux_outage())
    assert r["ok"], r["failures"]
    (f,) = r["faults"]
    assert f["kind"] == "nic_down" and f["connections_uploaded"] == 2 == f["reoffloaded"]
    assert f["nics_before"] == [{"nic0": 2, "nic1": 2}] and f["nics_at_end"][0]["nic1"] == 0
    assert r["host_mode"]["explained"]["target_failure"] == 1  # the refusal at 105.5
    # offloaded again at 105.0 and 106.2: after the fault went in (100.1), the clear (103.1)
    assert (f["reoffloaded_after_fault_s"], f["reoffloaded_after_clear_s"]) == (
        "4.90-6.10",
        "1.90-3.10",
    )


def test_outages_of_one_nic_in_two_shards_each_claim_their_shards_connections() -> None:
    """nic1 taken out in shard 0 only (t=100 to 103) and failed in shard 1 only from t=101,
    while shard 0's outage still runs: each shard's MUX asks up its own connections on nic1.
    Each outage is judged on the connections of its shard; before, the first claimed both
    shards' and the second was failed for "none uploaded"."""
    layer, _, obs = _mux_outage()
    layer[0]["params"] = {"layer": "nic1", "for": "3s", "shard": "0"}
    layer[0]["offloaded_before"] = 1
    failure = {
        **layer[0],
        "tag": 9,
        "fault_id": 9,
        "kind": "target_failure",
        "params": {"layer": "nic1", "for": "3s", "shard": "1"},
        "t0": 101.0,
        "t1": 101.1,
    }
    layer.append(failure)
    obs["unrequested"][0]["shard"] = 0
    obs["unrequested"][1].update(shard=1, asked=101.2)
    r = _report(layer, [], obs)
    assert r["ok"], r["failures"]
    kinds = {f["kind"]: f for f in r["faults"]}
    assert kinds["nic_down"]["connections_uploaded"] == 1 == kinds["nic_down"]["reoffloaded"]
    assert kinds["target_failure"]["connections_uploaded"] == 1
    # a daemon of one process says no shard: the first outage still takes what it covers
    for u in obs["unrequested"]:
        u.pop("shard")
        u.pop("explained_by", None)
    r = _report(layer, [], obs)
    assert any("none uploaded" in f for f in r["failures"]), r["failures"]


def test_an_outage_says_how_soon_its_connections_came_back() -> None:
    """Re-offloaded at 103.5 (after the clear at 103.0, returned 103.1) and one at 101.2,
    onto another NIC while nic0 was out: times after the fault for both, after the clear for one;
    a second outage of the same kind adds its own span."""
    layer, conn, obs = _clean()
    obs["upload_all"][1].update(reoffloaded_t=101.2, path=["tcpip", "team0", "nic1"])
    again = {**layer[0], "tag": 9, "fault_id": 9, "t0": 200.0, "t1": 200.1}
    again.update(t_clear0=203.0, t_clear1=203.1)
    layer.append(again)
    late = {"t": 200.2, "reoffloaded_t": 204.0, "path": NIC0, "verified_after": 7, "done": True}
    obs["upload_all"].append({"conn": 20, **late})
    r = _report(layer, conn, obs)
    assert r["ok"], r["failures"]
    [f] = [f for f in r["faults"] if f["kind"] == "target_failure"]
    assert f["reoffloaded_after_fault_s"] == "1.10-3.40; 3.90-3.90"
    assert f["reoffloaded_after_clear_s"] == "0.40-0.40; 0.90-0.90"


def _two_nics_out() -> tuple[list[Rec], list[Rec], dict[str, list[Rec]]]:
    """nic0 fails from t=100 to 103 (its two connections uploaded, UPLOAD_ALL) and nic1 from
    t=101, while nic0's window is still open, with its own two connections: each record says
    which NIC its connection was uploaded from (`came_from`), as `path` becomes the NIC it is
    offloaded on again."""
    layer, conn, obs = _clean()
    for u in obs["upload_all"]:
        u["came_from"] = NIC0
    nic1 = ["tcpip", "im0", "nic1"]
    layer.append(
        {
            **layer[0],
            "tag": 9,
            "fault_id": 9,
            "params": {"layer": "nic1", "for": "3s"},
            "t0": 101.0,
            "t1": 101.1,
            "t_clear0": 104.0,
            "t_clear1": 104.1,
        }
    )
    up = {"t": 101.2, "asked": 101.15, "reoffloaded_t": 104.5, "path": NIC0, "came_from": nic1}
    for cid in (21, 22):
        obs["upload_all"].append({"conn": cid, **up, "verified_after": 7, "done": True})
    return layer, conn, obs


def test_each_outage_counts_the_uploads_of_its_own_nic_once() -> None:
    """Before, an outage counted every UPLOAD_ALL in its window, another NIC's too, and two
    outages whose windows overlapped both counted them: 6 uploads claimed for 4."""
    r = _report(*_two_nics_out())
    assert r["ok"], r["failures"]
    [f] = [f for f in r["faults"] if f["kind"] == "target_failure"]
    assert f["connections_uploaded"] == 4 == f["reoffloaded"]


def test_an_outage_whose_nic_uploaded_nothing_is_not_passed_by_another_nics_uploads() -> None:
    """nic0's connections were not uploaded (the daemon lost them: none left on it either);
    nic1's uploads in nic0's window do not make up for them. Before, this passed."""
    layer, conn, obs = _two_nics_out()
    obs["upload_all"] = [u for u in obs["upload_all"] if u["came_from"] != NIC0]
    r = _report(layer, conn, obs)
    assert any("nic0: 2 offloaded, none uploaded" in f for f in r["failures"]), r["failures"]


def test_an_upload_all_from_a_nic_that_did_not_fail_is_unexplained() -> None:
    """Only nic0 failed: nic1's connections uploaded by UPLOAD_ALL in its window are not its
    (before, any outage's window explained them)."""
    layer, conn, obs = _two_nics_out()
    layer.pop()
    r = _report(layer, conn, obs)
    assert r["host_mode"]["unexplained"] == 2
    assert "conn 21: uploaded by UPLOAD_ALL with no target failure" in str(r["failures"])


@pytest.mark.parametrize(
    ("change", "why"),
    [
        # a connection on another NIC asked up: not this outage's doing
        (
            lambda obs: obs["unrequested"][0].update(came_from=["tcpip", "team0", "nic0"]),
            "uploaded unasked",
        ),
        # asked up long before the NIC went out
        (lambda obs: obs["unrequested"][1].update(asked=50.0), "uploaded unasked"),
        # a refusal after the last upload plus the grace: unexplained
        (
            lambda obs: obs["refusals"][0].update(t_first=108.0, t_last=108.0),
            "offload refused at connect",
        ),
    ],
)
def test_a_mux_outage_explains_nothing_else(change: Callable[[Any], None], why: str) -> None:
    layer, conn, obs = _mux_outage()
    change(obs)
    r = _report(layer, conn, obs)
    assert not r["ok"]
    assert any(why in f for f in r["failures"]), r["failures"]


def _with_violations(n: int | None) -> Rec:
    stats = _stats(None if n is None else CHECKED_AFTER)  # a daemon without the checker: neither
    stats["engine"]["invariant_violations"] = n
    return stats


def test_an_invariant_violation_in_the_daemon_fails_the_soak() -> None:
    r = _report(*_clean(), stats_after=_with_violations(3))
    assert not r["ok"]
    assert "3 invariant violation(s) in the daemon" in r["failures"]


def test_a_spawned_daemon_without_the_checker_fails_the_soak() -> None:
    r = _report(*_clean(), stats_after=_with_violations(None))
    assert r["failures"] == ["the spawned daemon reports no invariant checker"]


def test_the_help_says_what_the_verdict_does_with_the_invariant_count() -> None:
    """`--help`'s invariants paragraph is what the verdict does: a spawned daemon's violation
    fails the run, and so does its reporting no count."""
    text = " ".join(build_parser().format_help().split())
    para = text[text.index("invariants: the spawned daemon") : text.index("Ctrl-C:")]
    assert not _report(*_clean(), stats_after=_with_violations(1))["ok"]
    assert "any violation it counts beyond the bugs raise_next planted fails the run" in para
    assert not _report(*_clean(), stats_after=_with_violations(None))["ok"]
    assert "and so does its reporting no count at all" in para


def test_a_checker_that_checked_nothing_over_the_run_fails_the_soak() -> None:
    """A checker on but detached from NDIS finds no violation either: what it checked between
    the stats before and after the run tells it from one that heard the traffic."""
    r = _report(*_clean())
    assert r["ok"], r["failures"]
    assert r["invariant_checked_nbls"] == CHECKED_AFTER - CHECKED_BEFORE
    heard_nothing = [
        "the daemon's invariant checker checked no NBL completion over 5000 byte(s) echoed: it "
        "heard none of the run, so its 0 violations say nothing"
    ]
    for before in (CHECKED_AFTER, None):  # no count before the run: all of it is the run's
        after = CHECKED_AFTER if before is not None else 0
        r = _report(*_clean(), stats_before=_stats(before), stats_after=_stats(after))
        assert r["invariant_checked_nbls"] == 0
        assert r["failures"] == heard_nothing
    # the same of a --rpc daemon that says how much it checked
    daemon = {"crashed": False, "exit_status": None, "spawned": False}
    r = _report(*_clean(), stats_before=_stats(7), stats_after=_stats(7), daemon=daemon)
    assert r["failures"] == heard_nothing
    # a run that echoed nothing gave the checker nothing to hear
    counters = merge_counters([{"ops": 0, "bytes_sent": 0, "bytes_verified": 0}])
    r = _report(*_clean(), stats_before=_stats(7), stats_after=_stats(7), counters=counters)
    assert not any("checked no NBL" in f for f in r["failures"]), r["failures"]


def test_a_spawned_daemon_must_say_how_much_its_checker_checked() -> None:
    r = _report(*_clean(), stats_after=_stats(None))
    assert r["failures"] == [
        "the spawned daemon does not say how much its invariant checker checked"
    ]
    # a --rpc daemon of a version that does not count is judged by its violations alone
    daemon = {"crashed": False, "exit_status": None, "spawned": False}
    r = _report(*_clean(), stats_after=_stats(None), daemon=daemon)
    assert r["ok"], r["failures"]


def test_an_rpc_daemon_without_the_checker_is_reported_not_checked() -> None:
    daemon = {"crashed": False, "exit_status": None, "spawned": False}
    r = _report(*_clean(), stats_after=_with_violations(None), daemon=daemon)
    assert r["ok"], r["failures"]
    assert r["invariant_violations"] is None
    r = _report(*_clean(), stats_after=_with_violations(1), daemon=daemon)
    assert r["failures"] == ["1 invariant violation(s) in the daemon"]


def test_the_table_says_whether_invariants_were_checked() -> None:
    from rich.console import Console

    from chimney_client.soak.render import render_report

    daemon = {"crashed": False, "exit_status": None, "spawned": False, "address": "x", "pid": 1}
    for violations, shown in (
        (None, "not checked"),
        (0, "0 violation(s) of spec §9 (checker on); 400 NBL completion(s) checked during the run"),
    ):
        r = _report(*_clean(), stats_after=_with_violations(violations), daemon=daemon)
        r["connections_detail"].update(opened_total=10)
        console = Console(record=True, width=200)
        render_report(r, console)
        assert shown in console.export_text()


def test_the_table_says_whose_re_offloads_the_mix_counts() -> None:
    """The mix counts the re-offloads the soak asked for (tcp.offload); a fault row's
    `reoffloaded` counts every connection offloaded again, the host's own re-offloads
    included: the labels keep the two numbers apart."""
    from rich.console import Console

    from chimney_client.soak.render import render_report

    daemon = {"crashed": False, "exit_status": None, "spawned": False, "address": "x", "pid": 1}
    r = _report(*_clean(), daemon=daemon)
    r["connections_detail"].update(opened_total=10)
    console = Console(record=True, width=300)
    render_report(r, console)
    text = console.export_text()
    assert "re-offloads the soak asked for after faults 0" in text
    assert "also counts those the host made itself" in text


def test_the_table_names_the_violations_raise_next_planted() -> None:
    """A passing run with planted bugs shows their violations as planted; a count beyond them
    shows how many were not."""
    from rich.console import Console

    from chimney_client.soak.render import render_report

    for violations, shown in (
        (2, "2 violation(s) of spec §9 (checker on): the bugs raise_next planted"),
        (3, "3 violation(s) of spec §9 (checker on), 2 of them planted by raise_next"),
        (1, "1 violation(s) of spec §9 (checker on), fewer than the 2 bugs raise_next planted"),
    ):
        daemon = {"crashed": False, "exit_status": 0, "spawned": True, "address": "x", "pid": 1}
        r = _report(*_bugs(), stats_after=_counted(violations, 2), daemon=daemon)
        r["connections_detail"].update(opened_total=10)
        console = Console(record=True, width=200)
        render_report(r, console)
        assert shown in console.export_text()


def test_a_connection_reset_between_its_upload_and_its_reoffload_is_explained() -> None:
    """A NIC failure uploads every connection; a reset fault then aborts one before the NIC is
    back (the soak's resets and its outage can overlap): that connection is over and reopened,
    so it is not offloaded again, and that is no failure of the outage."""
    lay, con, obs = _clean()
    _conn(con, "daemon_reset")["conn"] = 1  # the reset reached conn 1 while it was uploaded
    obs["upload_all"][0].update(reoffloaded_t=None, done=False)
    r = _report(lay, con, obs)
    assert r["failures"] == [], r["failures"]
    outage = next(f for f in r["faults"] if f["kind"] == "target_failure")
    assert outage["reset_before_reoffload"] == 1 and outage["reoffloaded"] == 1


@pytest.mark.parametrize("how", ["another connection", "no abort seen"])
def test_a_connection_not_reoffloaded_is_still_a_failure_unless_its_reset_was_seen(
    how: str,
) -> None:
    lay, con, obs = _clean()
    reset = _conn(con, "daemon_reset")
    if how == "no abort seen":
        reset.update(conn=1, abort_seen=False)
    obs["upload_all"][0].update(reoffloaded_t=None, done=False)
    r = _report(lay, con, obs)
    assert any("conn 1: not offloaded again" in f for f in r["failures"]), r["failures"]


# -- raise_next: bugs planted in a layer ----------------------------------------------------------
_SEND_BUG = {
    "layer": "nic0",
    "call": "MiniportTcpOffloadSend",
    "error": "PlantedBug",
    "message": "INTERNAL: nic0 failed in MiniportTcpOffloadSend (PlantedBug); see the daemon's log",
    "holed": True,
    "new_conn": 31,
    "verified_after": 500,
    "done": True,
}


def _raise_next(tag: int, layer: str, call: str, t0: float) -> Rec:
    return {
        "tag": tag,
        "kind": "raise_next",
        "effect": None,
        "params": {"layer": layer, "call": call, "count": "1", "skip": "0"},
        "injected": True,
        "t0": t0,
        "t1": t0 + 0.01,
        "fault_id": tag,
        "consumed": True,
    }


def _bugs() -> tuple[list[Rec], list[Rec], dict[str, list[Rec]]]:
    """The clean run plus two bugs planted and used up: one in nic0's send handler (conn 30:
    its send and its read answered at once, the upload nic0 asked for, the slot reopened as
    conn 31 with data), one in im0's receive handler (conn 32: read again, data after)."""
    layer, conn, obs = _clean()
    layer += [
        _raise_next(5, "nic0", "MiniportTcpOffloadSend", 60.0),
        _raise_next(6, "im0", "MiniportTcpOffloadReceive", 70.0),
    ]
    obs["bug_answers"] = [
        {"conn": 30, "t": 60.2, "request": "send", **_SEND_BUG},
        {"conn": 30, "t": 60.201, "request": "recv", **_SEND_BUG},
        {
            "conn": 32,
            "t": 70.5,
            "request": "recv",
            "layer": "im0",
            "call": "MiniportTcpOffloadReceive",
            "error": "PlantedBug",
            "message": "INTERNAL: im0 failed in MiniportTcpOffloadReceive (PlantedBug)",
            "holed": False,
            "verified_after": 64,
            "done": True,
        },
    ]
    obs["unrequested"].append({"conn": 30, "t": 60.3, "reason": "UploadRequested", "done": False})
    return layer, conn, obs


def _counted(violations: int | None, layer_errors: int) -> Rec:
    stats = _with_violations(violations)
    stats["engine"]["layer_errors"] = layer_errors
    return stats


def test_planted_bugs_pass_when_each_shows_and_the_daemon_counted_exactly_them() -> None:
    r = _report(*_bugs(), stats_after=_counted(2, 2))
    assert r["ok"], r["failures"]
    bug = next(f for f in r["faults"] if f["kind"] == "raise_next")
    assert (bug["planted"], bug["connections_hit"], bug["internal_answers"]) == (2, 2, 3)
    assert bug["verified_after"] == 564


def _masked() -> tuple[list[Rec], list[Rec], dict[str, list[Rec]]]:
    """The run with two bugs, where the fail_next's send failure fell on conn 30 (the daemon
    says so) just before the send's bug on it: the bug's INTERNAL answered that send (spec
    §6.3), and no send failure reached the client."""
    layer, conn, obs = _bugs()
    _failed_said(layer, fail_next=30, upload_send=3, refuse_offload=6)
    obs["send_failures"].clear()
    obs["unrequested"] = [u for u in obs["unrequested"] if u["conn"] != 4]
    return layer, conn, obs


def test_a_send_failure_a_bug_answered_for_is_the_fail_next_outcome() -> None:
    r = _report(*_masked(), stats_after=_counted(2, 2))
    assert r["ok"], r["failures"]
    f = next(f for f in r["faults"] if f["kind"] == "fail_next")
    assert f["observed"] == f["expected"] == 1 and f["masked_by_a_bug"] == 1
    # a bug's INTERNAL on a read only does not mask the failed send
    layer, conn, obs = _masked()
    obs["bug_answers"] = [a for a in obs["bug_answers"] if a["request"] != "send"]
    r = _report(layer, conn, obs, stats_after=_counted(2, 2))
    assert any("1 send failure(s) caused, 0 seen" in x for x in r["failures"]), r["failures"]


def _answer(obs: dict[str, list[Rec]], i: int = 0) -> Rec:
    return obs["bug_answers"][i]


BUG_MUTATIONS: dict[str, tuple[Callable[[Any, Any, Any], Any], tuple[int | None, int], str]] = {
    "INTERNAL with no bug planted": (
        lambda lay, con, obs: [lay.remove(r) for r in list(lay) if r["kind"] == "raise_next"],
        (0, 0),
        "conn 30: send answered INTERNAL",
    ),
    "a real bug, not a planted one": (
        lambda lay, con, obs: _answer(obs, 2).update(error="KeyError"),
        (2, 2),
        "conn 32: recv answered INTERNAL",
    ),
    "INTERNAL before the bug was planted": (
        lambda lay, con, obs: _answer(obs, 2).update(t=69.0),
        (2, 2),
        "conn 32: recv answered INTERNAL",
    ),
    "INTERNAL naming another layer": (
        lambda lay, con, obs: _answer(obs, 2).update(layer="im1"),
        (2, 2),
        "conn 32: recv answered INTERNAL",
    ),
    "more connections hit than bugs": (
        lambda lay, con, obs: obs["bug_answers"].append({**_answer(obs), "conn": 40, "t": 61.0}),
        (2, 2),
        "nic0 MiniportTcpOffloadSend: 1 call(s) made to raise by 1 fault(s), 2 connection hit(s)",
    ),
    "no data on the slot after a send's bug": (
        lambda lay, con, obs: [a.update(done=False) for a in obs["bug_answers"][:2]],
        (2, 2),
        "conn 30: no byte verified on its reopened slot after its INTERNAL",
    ),
    "no data on the connection after a receive's bug": (
        lambda lay, con, obs: _answer(obs, 2).update(done=False),
        (2, 2),
        "conn 32: no byte verified on it after its INTERNAL",
    ),
    "a bug never used up": (
        lambda lay, con, obs: lay[-1].update(consumed=False),
        (1, 1),
        "fault 6 never used up: set for 1 MiniportTcpOffloadReceive in im0 (im0 did not get",
    ),
    "the checker missed a planted bug": (
        lambda lay, con, obs: None,
        (1, 2),
        "2 bug(s) planted, the checker counted 1 violation(s)",
    ),
    "a layer error beyond the planted bugs": (
        lambda lay, con, obs: None,
        (2, 3),
        "1 layer error(s) in the daemon beyond the 2 bug(s) raise_next planted",
    ),
    "a bug counted as no layer error": (
        lambda lay, con, obs: None,
        (2, 1),
        "2 bug(s) planted, the daemon counted 1 layer error(s)",
    ),
    "an upload asked on a connection no bug hit": (
        lambda lay, con, obs: obs["unrequested"][-1].update(conn=33),
        (2, 2),
        "conn 33: uploaded unasked (UploadRequested)",
    ),
}


@pytest.mark.parametrize("name", list(BUG_MUTATIONS))
def test_each_bug_mutation_turns_the_verdict_red(name: str) -> None:
    mutate, (violations, layer_errors), why = BUG_MUTATIONS[name]
    layer, conn, obs = copy.deepcopy(_bugs())
    mutate(layer, conn, obs)
    r = _report(layer, conn, obs, stats_after=_counted(violations, layer_errors))
    assert not r["ok"], name
    assert any(why in f for f in r["failures"]), (why, r["failures"])


def test_a_connection_a_bug_closed_owes_no_data_after_its_reoffload() -> None:
    """A target failure uploaded the connection a send's bug had hit, the host offloaded it
    again, and its slot closed on the bug before any data: the reopened slot's data is the
    bug's outcome. Any other connection still owes data after its re-offload."""
    late = {"t": 100.2, "reoffloaded_t": 103.5, "path": NIC0, "verified_after": 0, "done": False}
    for who, passes in ((30, True), (33, False)):
        layer, conn, obs = _bugs()
        obs["upload_all"].append({"conn": who, **late})
        r = _report(layer, conn, obs, stats_after=_counted(2, 2))
        assert r["ok"] is passes, r["failures"]
        outage = next(f for f in r["faults"] if f["kind"] == "target_failure")
        if passes:
            assert outage["closed_by_a_bug"] == 1
        else:
            assert "conn 33: no byte verified after its re-offload" in outage["problems"]


def test_a_bug_planted_in_every_shard_counts_once_per_shard() -> None:
    """On a daemon of two shards, a raise_next with no /shard= goes into both: each count is
    a bug in each shard, and the daemon's sums must count them all."""
    for counted, passes in ((3, True), (2, False)):
        layer, conn, obs = _bugs()
        layer[-2]["shards"] = 2  # the send's bug in nic0, in both shards
        r = _report(layer, conn, obs, stats_after=_counted(counted, counted))
        assert r["ok"] is passes, r["failures"]
        bug = next(f for f in r["faults"] if f["kind"] == "raise_next")
        assert bug["planted"] == 3


# -- raise_next in the state calls: initiate, terminate, disconnect -------------------------------
def _bug_answer(conn: int, t: float, request: str, layer: str, call: str, **more: Any) -> Rec:
    message = f"INTERNAL: {layer} failed in {call} (PlantedBug); see the daemon's log"
    return {"conn": conn, "t": t, "request": request, "layer": layer, "call": call,
            "error": "PlantedBug", "message": message, **more}  # fmt: skip


def _state_bugs() -> tuple[list[Rec], list[Rec], dict[str, list[Rec]], Rec]:
    """The run with the send's and receive's bugs, plus five in state calls, each with its
    outcome: nic0's initiate inside tcp.connect (conn 50 refused at connect, offloaded again
    with data); im0's initiate on a re-offload (conn 51 answered INTERNAL, offloaded again
    with data); nic0's terminate twice: a planned upload (conn 52 answered INTERNAL and reset,
    its slot reopened with data) and an abortive close (conn 54 reset, nothing asked waiting);
    nic0's graceful disconnect at a close (conn 55 answered INTERNAL). Returns the counters
    the worker kept for the two resets too."""
    layer, conn, obs = _bugs()
    layer += [
        _raise_next(7, "nic0", "MiniportInitiateOffload", 80.0),
        _raise_next(8, "im0", "MiniportInitiateOffload", 81.0),
        _raise_next(9, "nic0", "MiniportTerminateOffload", 84.0),
        _raise_next(10, "nic0", "MiniportTerminateOffload", 86.0),
        _raise_next(11, "nic0", "MiniportTcpOffloadDisconnect", 88.0),
    ]
    obs["refusals"].append(
        {"conn": 50, "at": "connect", "status": None, "t_first": 80.3, "t_last": 80.3,
         "attempts": 1, "offloaded_t": 80.9, "verified_after": 10, "done": True}
    )  # fmt: skip
    after = {"verified_after": 20, "done": True}
    obs["bug_answers"] += [
        _bug_answer(51, 81.4, "reoffload", "im0", "MiniportInitiateOffload",
                    needs_reoffload=True, reoffloaded_t=81.9, **after),
        _bug_answer(52, 84.5, "upload", "nic0", "MiniportTerminateOffload",
                    holed=True, new_conn=53, **after),
        _bug_answer(55, 88.3, "disconnect", "nic0", "MiniportTcpOffloadDisconnect",
                    holed=True, verified_after=0, done=False),
    ]  # fmt: skip
    obs["aborts"] = [
        {"conn": 52, "t": 84.49, "closing": True, "unexpected": True, "new_conn": 53, **after},
        {"conn": 54, "t": 86.7, "closing": True, "verified_after": 0, "done": False},
    ]
    return layer, conn, obs, {"aborts_while_closing": 2, "unexpected_aborts": 1}


def _state_report(
    layer: list[Rec], conn: list[Rec], obs: dict[str, list[Rec]], counters: Rec
) -> dict[str, Any]:
    planted = 2 + sum(1 for r in layer if r["kind"] == "raise_next" and r["tag"] > 6)
    return _report(
        layer,
        conn,
        obs,
        counters=merge_counters(
            [{"ops": 100, "bytes_sent": 5000, "bytes_verified": 5000}, counters]
        ),
        stats_after=_counted(planted, planted),
    )


def test_bugs_in_state_calls_pass_when_each_shows_its_outcome() -> None:
    r = _state_report(*_state_bugs())
    assert r["ok"], r["failures"]
    bug = next(f for f in r["faults"] if f["kind"] == "raise_next")
    assert (bug["planted"], bug["connections_hit"], bug["internal_answers"]) == (7, 7, 6)
    assert bug["refused_at_connect"] == 1 and r["host_mode"]["explained"]["raise_next"] == 1
    assert bug["resets_while_closing"] == 2 and bug["resets_on_live"] == 1
    assert bug["hits_while_closing"] == 2  # the abortive close's reset, the disconnect's answer


STATE_BUG_MUTATIONS: dict[str, tuple[Callable[[Any, Any, Any, Any], Any], str]] = {
    "a reset during a close that no bug explains": (
        lambda lay, con, obs, c: (
            obs["aborts"].append({"conn": 60, "t": 90.0, "closing": True}),
            c.update(aborts_while_closing=3),
        ),
        "1 connection(s) aborted during their close",
    ),
    "a reset before the terminate's bug was planted": (
        lambda lay, con, obs, c: obs["aborts"][1].update(t=83.0),
        "1 connection(s) aborted during their close",
    ),
    "a reset of a live connection with no call left to raise": (
        lambda lay, con, obs, c: (
            obs["aborts"].append({"conn": 61, "t": 87.0, "unexpected": True, "done": True}),
            c.update(unexpected_aborts=2),
        ),
        "1 connection(s) aborted with no fault",
    ),
    "no data on the slot an upload's reset reopened": (
        lambda lay, con, obs, c: [
            a.update(done=False) for a in [*obs["bug_answers"], *obs["aborts"]] if a["conn"] == 52
        ],
        "conn 52: no byte verified on its reopened slot after its INTERNAL",
    ),
    "an initiate's bug never followed by an offload and data": (
        lambda lay, con, obs, c: obs["bug_answers"][-3].update(done=False),
        "conn 51: no byte verified on it after its INTERNAL",
    ),
    "a refusal at connect never followed by an offload and data": (
        lambda lay, con, obs, c: obs["refusals"][-1].update(done=False),
        "conn 50: no byte verified on it after its offload refused at connect",
    ),
    "a refusal at connect beyond the initiates made to raise": (
        lambda lay, con, obs, c: obs["refusals"].append({**obs["refusals"][-1], "conn": 56}),
        "conn 56: offload refused at connect (no status)",
    ),
    "a refusal at connect before the initiate's bug": (
        lambda lay, con, obs, c: obs["refusals"][-1].update(t_first=79.0),
        "conn 50: offload refused at connect (no status)",
    ),
}


# -- what the daemon says each bug served (fault.list `used`) -------------------------------------
_SERVED = {5: [30], 6: [32], 7: [50], 8: [51], 9: [52], 10: [54, 57, 58], 11: [55]}


def _served_state_bugs() -> tuple[list[Rec], list[Rec], dict[str, list[Rec]], Rec]:
    """`_state_bugs`, with what the daemon listed each bug serving: the second terminate's
    call carried three connections being closed at once (57 and 58 reset too), more than the
    one call the fault made raise; the rest one connection each."""
    layer, conn, obs, counters = _state_bugs()
    for r in layer:
        if r["kind"] == "raise_next":
            conns = _SERVED[r["tag"]]
            raised = {"layer": r["params"]["layer"], "handler": r["params"]["call"]}
            r["raised"] = [{**raised, "conns": conns, "conns_total": len(conns)}]
    obs["aborts"] += [{"conn": c, "t": 86.7, "closing": True, "done": False} for c in (57, 58)]
    return layer, conn, obs, {**counters, "aborts_while_closing": 4}


def test_a_bug_hits_every_connection_its_call_served_and_no_other() -> None:
    r = _state_report(*_served_state_bugs())
    assert r["ok"], r["failures"]
    bug = next(f for f in r["faults"] if f["kind"] == "raise_next")
    assert bug["connections_served"] == 9 and bug["connections_hit"] == 9
    assert bug["resets_while_closing"] == 4


def test_a_connection_bugs_of_two_calls_served_counts_once() -> None:
    """Connection 30, served by the send's bug and, as the daemon lists it, by the
    disconnect's too: nine connections served, not ten (the report summed per layer and
    call)."""
    layer, conn, obs, counters = _served_state_bugs()
    disconnect = next(r for r in layer if r["tag"] == 11)
    disconnect["raised"][0].update(conns=[55, 30], conns_total=2)
    r = _state_report(layer, conn, obs, counters)
    assert r["ok"], r["failures"]
    bug = next(f for f in r["faults"] if f["kind"] == "raise_next")
    assert bug["connections_served"] == 9


@pytest.mark.parametrize("said", [True, False])
def test_a_refuse_offload_and_an_initiates_bug_each_keep_their_refusal(said: bool) -> None:
    """A refuse_offload injected just after nic0's initiate bug (tag 7, which refused conn
    50 at connect at 80.3) refuses conn 6 at 80.5. Where the daemon says which connection the
    fail_next failed, each refusal is its own fault's; matched by time alone, the
    refuse_offload took conn 50's, the earlier, and conn 6's was left unexplained."""
    layer, conn, obs, counters = _served_state_bugs()
    refuse = next(r for r in layer if r["kind"] == "refuse_offload")
    refuse.update(t0=80.1, t1=80.11)
    next(ep for ep in obs["refusals"] if ep["conn"] == 6).update(
        t_first=80.5, t_last=80.5, offloaded_t=81.0
    )
    if said:
        _failed_said(layer, refuse_offload=6)
    r = _state_report(layer, conn, obs, counters)
    assert r["ok"] is said, r["failures"]
    if said:
        kinds = {f["kind"]: f for f in r["faults"]}
        assert kinds["refuse_offload"]["observed"] == 1
        assert kinds["raise_next"]["refused_at_connect"] == 1


SERVED_MUTATIONS: dict[str, tuple[Callable[[Any, Any, Any, Any], Any], str]] = {
    "INTERNAL on a connection the bug did not serve": (
        lambda lay, con, obs, c: obs["bug_answers"][-2].update(conn=70, new_conn=71),
        "conn 70: upload answered INTERNAL naming nic0 MiniportTerminateOffload, though",
    ),
    "a reset of a connection no terminate served": (
        lambda lay, con, obs, c: obs["aborts"][-1].update(conn=72),
        "1 connection(s) aborted during their close",
    ),
    "a refusal at connect of a connection no initiate served": (
        lambda lay, con, obs, c: obs["refusals"][-1].update(conn=73),
        "conn 73: offload refused at connect (no status)",
    ),
}


@pytest.mark.parametrize(
    ("name", "served"),
    [(name, False) for name in STATE_BUG_MUTATIONS] + [(name, True) for name in SERVED_MUTATIONS],
)
def test_each_state_bug_mutation_turns_the_verdict_red(name: str, served: bool) -> None:
    """Without what the daemon says each bug served (the count bound), and with it."""
    mutate, why = (SERVED_MUTATIONS if served else STATE_BUG_MUTATIONS)[name]
    layer, conn, obs, counters = copy.deepcopy(_served_state_bugs() if served else _state_bugs())
    mutate(layer, conn, obs, counters)
    r = _state_report(layer, conn, obs, counters)
    assert not r["ok"], name
    assert any(why in f for f in r["failures"]), (why, r["failures"])


def test_where_the_daemon_did_not_say_it_all_the_count_bounds_the_hits() -> None:
    """A list the daemon cut short (or a daemon from before it): the calls made to raise bound
    the connections hit, as without the list: the three resets of one terminate are too many."""
    layer, conn, obs, counters = _served_state_bugs()
    next(r for r in layer if r["tag"] == 10)["raised"][0]["conns_total"] = 20_000
    r = _state_report(layer, conn, obs, counters)
    why = "2 connection(s) aborted during their close (among them conn 57, 58)"
    assert not r["ok"] and why in r["failures"], r["failures"]


def test_an_upload_all_a_terminates_bug_failed_resets_the_nics_connections() -> None:
    """A terminate's bug met the UPLOAD_ALL of a target failure: the connections on the NIC
    were reset instead of uploaded (spec §6.3, §3.7), each reopened with data. Both faults
    show their outcome; without the bug the same run fails on both counts."""
    for planted in (True, False):
        layer, conn, obs = _clean()
        obs["upload_all"] = []
        obs["aborts"] = [
            {"conn": c, "t": 100.2, "unexpected": True, "new_conn": c + 10, "done": True}
            for c in (1, 2)
        ]
        if planted:
            layer.append(_raise_next(5, "nic0", "MiniportTerminateOffload", 99.5))
            raised = {"layer": "nic0", "handler": "MiniportTerminateOffload"}
            layer[-1]["raised"] = [{**raised, "conns": [1, 2], "conns_total": 2}]
        r = _report(
            layer,
            conn,
            obs,
            counters=merge_counters([{"ops": 100, "unexpected_aborts": 2}]),
            stats_after=_counted(int(planted), int(planted)),
        )
        outage = next(f for f in r["faults"] if f["kind"] == "target_failure")
        if planted:
            assert r["ok"], r["failures"]
            assert outage["reset_by_a_bug"] == 2
        else:
            why = "2 connection(s) aborted with no fault (among them conn 1, 2)"
            assert not r["ok"] and why in r["failures"], r["failures"]
            assert "nic0: 2 offloaded, none uploaded (UPLOAD_ALL)" in outage["problems"]


@pytest.mark.parametrize("kind", ["retrieve", "stall_peer"])
@pytest.mark.parametrize(("who", "passes"), [(30, True), (33, False)])
def test_a_connection_fault_whose_slot_a_bug_closed_owes_its_data_on_the_reopened_slot(
    kind: str, who: int, passes: bool
) -> None:
    """The planted send bug landed on the connection a retrieve had just uploaded (or a stall
    had just held): its send and read answered INTERNAL, the slot closed before the
    re-offload (before any data after the stall), and the data is owed by the bug's reopened
    slot, which carried it. On a connection no bug closed, the missing outcome still fails."""
    layer, conn, obs = _bugs()
    rec = _conn(conn, kind)
    rec.update(conn=who, done=False, verified_after=0, lost=True)
    if kind == "retrieve":
        rec.update(reoffloaded_t=None)
    r = _report(layer, conn, obs, stats_after=_counted(2, 2))
    assert r["ok"] is passes, r["failures"]
    [fault] = [f for f in r["faults"] if f["kind"] == kind]
    if passes:
        assert fault["closed_by_a_bug"] == 1
    elif kind == "retrieve":
        assert f"conn {who}: not offloaded again after the retrieve" in fault["problems"]
    else:
        assert f"conn {who}: no byte verified after the stall ended" in fault["problems"]
        assert f"conn {who}: damaged after the stall" in fault["problems"]


def test_a_bug_never_excuses_a_damaged_byte_after_a_stall() -> None:
    layer, conn, obs = _bugs()
    _conn(conn, "stall_peer").update(conn=30, done=False, integrity_errors=1)
    r = _report(layer, conn, obs, stats_after=_counted(2, 2))
    assert not r["ok"]
    [stall] = [f for f in r["faults"] if f["kind"] == "stall_peer"]
    assert "conn 30: damaged after the stall" in stall["problems"]


TEAM_NIC0 = ["tcpip", "team0", "nic0"]


def _rebalance() -> tuple[list[Rec], list[Rec], dict[str, list[Rec]]]:
    """team0 rebalanced at t=100: nic2 had come back empty; the MUX asked two connections of
    nic0 and nic1 up (UploadRequested), the host offloaded them again (onto nic2), data after."""
    layer = [
        {
            "tag": 1,
            "kind": "rebalance",
            "effect": None,
            "params": {"layer": "team0"},
            "injected": True,
            "cleared": True,
            "t0": 100.0,
            "t1": 100.1,
            "t_clear0": 100.1,
            "t_clear1": 100.1,
            "t_back": 101.2,
            "fault_id": 1,
            "nics_before": {"nic0": 3, "nic1": 3, "nic2": 0},
            "nics_at_end": {"nic0": 2, "nic1": 2, "nic2": 2},
            "mux_before": {"nic0": 3, "nic1": 3, "nic2": 0},
            "mux_after": {"nic0": 2, "nic1": 2, "nic2": 2},
        }
    ]
    moved = {"reason": "UploadRequested", "came_from": TEAM_NIC0, "sending": False}
    obs = {
        "upload_all": [],
        "unrequested": [
            {"conn": c, "t": 100.5, "asked": 100.2, "reoffloaded_t": 101.0, **moved} for c in (1, 2)
        ],
        "send_failures": [],
        "refusals": [],
        "host_at_close": [],
        "disagreements": [],
    }
    for u in obs["unrequested"]:
        u.update(verified_after=10, done=True)
    return layer, [], obs


def test_a_rebalance_that_moved_connections_onto_the_idle_nic_passes() -> None:
    r = _report(*_rebalance())
    assert r["ok"], r["failures"]
    (f,) = r["faults"]
    assert f["kind"] == "rebalance" and f["connections_uploaded"] == 2 == f["reoffloaded"]
    assert f["mux_after"] == [{"nic0": 2, "nic1": 2, "nic2": 2}]
    assert f["reoffloaded_after_fault_s"] == "1.00-1.00"  # from the asking (t0)
    assert "reoffloaded_after_clear_s" not in f


def test_a_rebalance_whose_moves_beat_its_answer_passes() -> None:
    """The MUX moves and offloads again before fault.inject's answer is back (a daemon of
    shards answers after every shard has): nothing was failed, nothing is owed."""
    layer, conn, obs = _rebalance()
    for u in obs["unrequested"]:
        u.update(t=100.03, asked=100.02, reoffloaded_t=100.05)
    r = _report(layer, conn, obs)
    assert r["ok"], r["failures"]
    (f,) = r["faults"]
    assert f["reoffloaded_after_fault_s"] == "0.05-0.05"


def test_a_rebalance_on_shards_is_judged_shard_by_shard() -> None:
    """Two shards' MUXes, each left within one: passes though their sum is two apart."""
    layer, conn, obs = _rebalance()
    layer[0].update(
        mux_before={"nic0": 3, "nic1": 3, "nic2": 0},
        mux_after={"nic0": 2, "nic1": 2, "nic2": 0},
        mux_shards_before=[{"nic0": 2, "nic1": 1, "nic2": 0}, {"nic0": 1, "nic1": 2, "nic2": 0}],
        mux_shards_after=[{"nic0": 1, "nic1": 1, "nic2": 0}, {"nic0": 1, "nic1": 1, "nic2": 0}],
    )
    r = _report(layer, conn, obs)
    assert r["ok"], r["failures"]
    (f,) = r["faults"]
    # the report shows each shard's counts beside the sums it judged nothing by
    assert f["mux_per_shard"] == (
        "in shard 0: nic0 2 nic1 1 nic2 0 -> nic0 1 nic1 1 nic2 0 | "
        "in shard 1: nic0 1 nic1 2 nic2 0 -> nic0 1 nic1 1 nic2 0"
    )


def _uneven_shard(lay: Any, obs: Any) -> None:
    lay[0].update(
        mux_shards_before=[{"nic0": 3, "nic1": 0}, {"nic0": 3, "nic1": 0}],
        mux_shards_after=[{"nic0": 2, "nic1": 1}, {"nic0": 3, "nic1": 0}],
    )


@pytest.mark.parametrize(
    ("change", "why"),
    [
        # one shard's MUX left its NICs as they were, though the sum looks even
        (_uneven_shard, "team0 in shard 1: its NICs still 3 apart after it (at most 1)"),
        # nothing asked up although nic2 was empty
        (lambda lay, obs: obs["unrequested"].clear(), "moved nothing while its NICs were 3 apart"),
        # the NICs no more even after it than before
        (
            lambda lay, obs: lay[0].update(mux_after={"nic0": 4, "nic1": 2, "nic2": 0}),
            "its NICs still 4 apart after it (at most 1)",
        ),
        # NICs already even, connections moved all the same
        (
            lambda lay, obs: lay[0].update(mux_before={"nic0": 2, "nic1": 2, "nic2": 2}),
            "moved 2 connection(s) of NICs already even",
        ),
        # a moved connection never offloaded again
        (
            lambda lay, obs: obs["unrequested"][0].update(reoffloaded_t=None, done=False),
            "conn 1: not offloaded again after its move",
        ),
        # the daemon did not say what the MUX carries
        (lambda lay, obs: lay[0].pop("mux_after"), "stack.info gave no connections per NIC"),
    ],
)
def test_a_rebalance_that_did_not_even_its_nics_fails(
    change: Callable[[Any, Any], None], why: str
) -> None:
    layer, conn, obs = _rebalance()
    change(layer, obs)
    r = _report(layer, conn, obs)
    assert not r["ok"]
    assert any(why in f for f in r["failures"]), r["failures"]


def test_a_nic_failure_during_a_rebalance_keeps_its_nics_connections() -> None:
    """nic0 fails (t=100.05) as team0 rebalances (t=100): the MUX planned on the NICs as it
    knew them, then asked nic0's three up for the failure, which its policy placed (nic2), and
    moved one of nic1's. The failure owns nic0's three; the rebalance its one, offloaded again
    with data after; the NICs left uneven by the failure's placement are not the rebalance's
    to answer for. Before, the rebalance, judged first, took all four and was failed for the
    counts after it, and the failure for "none uploaded"."""
    layer, conn, obs = _rebalance()
    layer[0]["mux_after"] = layer[0]["nics_at_end"] = {"nic1": 2, "nic2": 4}
    layer.append(
        {
            **_layer_records()[0],
            "tag": 2,
            "fault_id": 2,
            "t0": 100.05,
            "t1": 100.1,
            "offloaded_before": 3,
            "offloaded_at_end": 0,
        }
    )
    team_nic2 = ["tcpip", "team0", "nic2"]
    moved = {"reason": "UploadRequested", "sending": False, "verified_after": 10, "done": True}
    obs["unrequested"] = [
        {"conn": c, "t": 100.5, "asked": 100.2, "reoffloaded_t": 101.0, "came_from": TEAM_NIC0,
         "path": team_nic2, **moved}
        for c in (1, 2, 3)
    ] + [
        {"conn": 4, "t": 100.5, "asked": 100.3, "reoffloaded_t": 101.0,
         "came_from": ["tcpip", "team0", "nic1"], "path": team_nic2, **moved}
    ]  # fmt: skip
    r = _report(layer, conn, obs)
    assert r["ok"], r["failures"]
    kinds = {f["kind"]: f for f in r["faults"]}
    assert kinds["target_failure"]["connections_uploaded"] == 3
    assert kinds["rebalance"]["connections_uploaded"] == 1
    assert kinds["rebalance"]["crossed_by_an_outage"] == 1
    # the same counts with no outage in its time: the rebalance answers for them
    layer.pop()
    for u in obs["unrequested"]:
        u.pop("explained_by", None)
    r = _report(layer, conn, obs)
    assert any("still 2 apart after it" in f for f in r["failures"]), r["failures"]


def test_the_slowest_send_is_every_sends_maximum_not_the_samples() -> None:
    """The percentiles come from a bounded sample; the maximum, and where and when it was, from
    every send: a slow send the sample dropped still shows."""
    from chimney_client.soak import state

    ws = state.WorkerState.__new__(state.WorkerState)
    ws.latencies, ws.lat_seen, ws.slowest = [], 0, (0.0, 0.0, 0)
    ws.rng = random.Random(1)
    for i in range(state.LATENCY_SAMPLES):
        ws.latency(1.0, conn=i)
    before = time.monotonic()
    ws.latency(900.0, conn=77)
    for i in range(3 * state.LATENCY_SAMPLES):
        ws.latency(2.0, conn=i)
    assert len(ws.latencies) == state.LATENCY_SAMPLES
    ms, asked, conn = ws.slowest
    assert (ms, conn) == (900.0, 77)
    assert before - 0.9 - 0.05 <= asked <= before - 0.9 + 0.05  # when it was asked, not answered

    slowest = {"ms": 900.0, "conn": 77, "asked_into_hold_s": 30.25}
    r = _report(*_clean(), latencies_ms=[1.0, 2.0, 3.0], slowest_send=slowest)
    assert r["latency_ms"]["max"] == 900.0 and r["latency_ms"]["slowest"] == slowest

    from rich.console import Console

    from chimney_client.soak.render import render_report

    r["connections_detail"].update(opened_total=10)
    r["daemon"].update(address="x", pid=1)
    console = Console(record=True, width=300)
    render_report(r, console)
    assert "max 900.0 ms (conn 77, asked 30.25 s into the hold)" in console.export_text()


def _continued(obs: dict[str, list[Rec]], next_done: bool) -> None:
    """The refuse_offload fault's connection is refused by it (FAILURE), then again while the
    target is failed (OFFLOAD_PAUSE): two episodes, the first `continued` by the second, which
    the soak follows to its re-offload."""
    first = {"conn": 6, "at": "reoffload", "status": "NDIS_STATUS_FAILURE", "t_first": 99.6}
    first.update(t_last=99.6, attempts=1, continued=True, verified_after=0, done=False)
    paused = {"conn": 6, "at": "reoffload", "status": "NDIS_STATUS_OFFLOAD_PAUSE"}
    paused.update(t_first=100.5, t_last=102.5, attempts=2, offloaded_t=103.7)
    paused.update(verified_after=10 if next_done else 0, done=next_done)
    obs["refusals"][1:] = [first, paused]


def test_a_refusal_continued_for_another_reason_is_judged_by_the_next_episode() -> None:
    layer, conn, obs = _clean()
    _layer(layer, "refuse_offload").update(t0=99.5, t1=99.51)
    _continued(obs, next_done=True)
    r = _report(layer, conn, obs)
    assert r["failures"] == [] and r["ok"], r["failures"]
    refuse = next(f for f in r["faults"] if f["kind"] == "refuse_offload")
    assert refuse["verified_after"] == 10  # the episode after's
    _continued(obs, next_done=False)
    r = _report(layer, conn, obs)
    assert any("conn 6: no byte verified after it" in f for f in r["failures"]), r["failures"]
    # what the soak saw goes with it in the --json report: both episodes, in order
    refuse = next(f for f in r["faults"] if f["kind"] == "refuse_offload")
    (said,) = refuse["problem_records"]
    assert said["problem"] == "conn 6: no byte verified after it"
    statuses = [ep["status"] for ep in said["records"]]
    assert statuses == ["NDIS_STATUS_FAILURE", "NDIS_STATUS_OFFLOAD_PAUSE"]
    assert "problem_records" not in next(f for f in r["failures"] if "conn 6" in f)


def test_a_refusal_at_connect_by_a_fault_then_by_an_outage_is_the_faults() -> None:
    """The refuse_offload refuses a connection at connect (the soak hears no status), just
    before the NIC fails; its re-offloads are refused while the NIC is failed (OFFLOAD_PAUSE):
    one episode, whose status is the outage's. The daemon says the fault failed that
    connection's offload, so the episode is the fault's outcome, its later refusals the
    outage's. Without the daemon's word the outage explains the episode, and the fault's
    refusal is not seen."""
    layer, conn, obs = copy.deepcopy(_clean())
    _failed_said(layer, **SAID)
    next(r for r in layer if r["kind"] == "refuse_offload").update(t0=99.8, t1=99.81)
    next(ep for ep in obs["refusals"] if ep["conn"] == 6).update(
        at="connect", status="NDIS_STATUS_OFFLOAD_PAUSE", attempts=3, offloaded_t=103.7,
        t_first_sent=99.9, t_first=100.2, t_last=102.6, t_last_sent=102.5,
    )  # fmt: skip
    r = _report(*copy.deepcopy((layer, conn, obs)))
    refuse = next(f for f in r["faults"] if f["kind"] == "refuse_offload")
    assert r["ok"], r["failures"]
    assert refuse["observed"] == refuse["expected"] == 1
    assert refuse["refusals_of_an_outage"] == 2
    for f in layer:
        f.pop("failed", None)  # a daemon that does not say
    r = _report(layer, conn, obs)
    assert any("1 offload refusal(s) caused, 0 seen" in f for f in r["failures"]), r["failures"]


def test_a_faults_figures_read_with_their_units() -> None:
    """The report's row of a fault names its figures and gives their units: connections per
    NIC per outage, bytes in MB, spans in seconds (the JSON keeps its keys)."""
    from chimney_client.soak.report import fault_brief

    row = fault_brief(
        {
            "kind": "target_failure",
            "ok": True,
            "nics_before": [{"nic0": 50}],
            "nics_at_end": [{"nic0": 0}],
            "verified_after": 29_281_143,
            "reoffloaded_after_fault_s": "2.01-2.01",
            "reoffloaded_after_clear_s": "0.01-0.01",
        }
    )
    assert row == (
        "connections per NIC before nic0 50, per NIC at its end nic0 0, "
        "verified after 29.3 MB, offloaded again after the injection 2.01-2.01 s, "
        "after the clear 0.01-0.01 s"
    )


def test_a_rebalance_during_a_nic_outage_begun_before_it_still_answers_for_the_counts() -> None:
    """nic2 has been down since t=90 (cleared at t=110) when team0 rebalances at t=100: the
    MUX knew it out of service before the order and plans on nic0 and nic1 alone, which are 4
    apart; a rebalance that moves nothing there is a fault. Only an outage whose NIC left or
    came back while the rebalance ran changes what the MUX planned on (docs/faults.md
    `rebalance`: "both given the same @TIME"); one in place all along does not excuse it."""
    layer, conn, obs = _rebalance()
    layer[0]["mux_before"] = layer[0]["mux_after"] = {"nic0": 6, "nic1": 2}
    layer[0]["nics_before"] = layer[0]["nics_at_end"] = {"nic0": 6, "nic1": 2, "nic2": 0}
    obs["unrequested"] = []  # it asked nothing up
    layer.append(
        {
            **_layer_records()[0],
            "tag": 2,
            "kind": "nic_down",
            "params": {"layer": "nic2"},
            "fault_id": 2,
            "t0": 90.0,
            "t1": 90.1,
            "t_clear0": 110.0,
            "t_clear1": 110.1,
            "offloaded_before": 0,
            "offloaded_at_end": 0,
        }
    )
    r = _report(layer, conn, obs)
    assert any("moved nothing while its NICs were 4 apart" in f for f in r["failures"]), r[
        "failures"
    ]
    kinds = {f["kind"]: f for f in r["faults"]}
    assert "crossed_by_an_outage" not in kinds["rebalance"]


def test_a_rebalance_while_an_outages_connections_are_placed_again_is_crossed_by_it() -> None:
    """nic2 failed at t=90 and its connection was asked up at once, but offloaded again (where
    the MUX's policy placed it) only at t=100.5, while team0 rebalanced: the counts after the
    rebalance are not its own to answer for, as at the same @TIME."""
    layer, conn, obs = _rebalance()
    layer[0]["mux_before"] = layer[0]["mux_after"] = {"nic0": 6, "nic1": 2}
    obs["unrequested"] = [
        {"conn": 9, "t": 90.5, "asked": 90.2, "reoffloaded_t": 100.5, "reason": "UploadRequested",
         "came_from": ["tcpip", "team0", "nic2"], "path": TEAM_NIC0, "sending": False,
         "verified_after": 10, "done": True}
    ]  # fmt: skip
    layer.append(
        {
            **_layer_records()[0],
            "tag": 2,
            "kind": "nic_down",
            "params": {"layer": "nic2"},
            "fault_id": 2,
            "t0": 90.0,
            "t1": 90.1,
            "t_clear0": 110.0,
            "t_clear1": 110.1,
            "offloaded_before": 1,
            "offloaded_at_end": 0,
        }
    )
    r = _report(layer, conn, obs)
    assert r["ok"], r["failures"]
    kinds = {f["kind"]: f for f in r["faults"]}
    assert kinds["rebalance"]["crossed_by_an_outage"] == 1
    assert kinds["nic_down"]["connections_uploaded"] == 1
