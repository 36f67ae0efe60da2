"""The fault kinds the soak injects from its coordinator and checks with probe connections of
its own (`delay`, `invalidate`, `host_event`, `nic_up`; soak/probe_faults.py): scheduled as
docs/faults.md's soak table says, and judged — a daemon that accepts the fault and does
nothing must fail the soak (tests/soak/mutant_probed.py), the same soak of an unbroken daemon
pass."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chimney_client.soak.faults import FAULT_HELP, parse_faults
from chimney_client.soak.outcomes import judge
from tests.soak.support import soak_env

pytestmark = pytest.mark.soak

MUTANT = Path(__file__).with_name("mutant_probed.py")
TEAMING = Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml"
READY = re.compile(r"chimneyd listening on (\S+)")


# -- schedule ------------------------------------------------------------------------------------
def test_each_probed_kind_is_schedulable_with_its_keys() -> None:
    specs = parse_faults(
        "delay@5s/layer=im0/for=5s/ms=300,invalidate/object=path,"
        "host_event@2s/event=power_down/for=2s,nic_up/layer=nic2"
    )
    assert [s.kind for s in specs] == ["delay", "invalidate", "host_event", "nic_up"]
    assert specs[0].param("ms") == "300" and specs[0].param("call") == "MiniportTcpOffloadSend"
    assert specs[1].param("object") == "path" and specs[1].param("layer") == "nic0"
    assert specs[2].param("event") == "power_down"
    for kind in ("delay", "invalidate", "host_event", "nic_up"):
        assert f"    {kind} " in FAULT_HELP, FAULT_HELP


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("delay/call=MiniportQueryOffload", "the soak judges delay only on"),
        ("invalidate/object=socket", "object is one of tcp, path, neighbor"),
        ("host_event/event=reboot", "event is one of power_down"),
        ("delay/ms=0", "ms must be a positive integer"),
        ("nic_up/for=0", "for must be more than 0"),
    ],
)
def test_a_probed_kind_the_soak_cannot_judge_is_refused_before_the_run(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_faults(text)


# -- judgement on records (what the coordinator and the workers saw) -----------------------------
def _delay_rec(**over: Any) -> dict[str, Any]:
    rec = {
        "tag": 1,
        "kind": "delay",
        "params": {"layer": "im0", "call": "MiniportTcpOffloadSend", "ms": "200", "for": "3s"},
        "injected": True,
        "t0": 10.0,
        "t1": 10.01,
        "t_clear0": 13.0,
        "t_clear1": 13.01,
        "cleared": True,
        "probe_held_s": 0.2015,
        "calls_while_armed": 40,
        "listed_while_armed": True,
        "delayed_listed": None,
        "probe_before_ok": True,
        "probe_ok": True,
        "probe_after_ok": True,
    }
    return {**rec, **over}


def _entry(layer_records: list[dict[str, Any]], obs: dict[str, Any] | None = None) -> Any:
    entries, host = judge(layer_records, [], obs or {})
    (e,) = entries
    return e, host


def test_a_delay_that_held_its_probe_and_saw_calls_passes() -> None:
    e, _ = _entry([_delay_rec()])
    assert e["ok"], e["problems"]
    assert e["calls_held"] == 40 and e["daemon_says_delayed"] == "not said by fault.list"


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"probe_held_s": 0.004}, "took 0.004 s"),  # the daemon ignored the delay
        ({"calls_while_armed": 0}, "it delayed nothing"),  # the traffic used the layer not
        ({"delayed_listed": 0}, "the daemon says it delayed 0 calls"),
        ({"listed_while_armed": False}, "did not list the delay"),
        ({"probe_ok": False}, "not echoed intact"),
    ],
)
def test_a_delay_that_did_not_act_fails(over: dict[str, Any], why: str) -> None:
    e, _ = _entry([_delay_rec(**over)])
    assert not e["ok"] and any(why in p for p in e["problems"]), e["problems"]


def _host_event_rec(**over: Any) -> dict[str, Any]:
    rec = {
        "tag": 1,
        "kind": "host_event",
        "params": {"layer": "nic0", "event": "media_disconnect", "for": "3s", "shard": ""},
        "injected": True,
        "t0": 10.0,
        "t1": 10.01,
        "t_clear0": 13.0,
        "t_clear1": 13.01,
        "cleared": True,
        "offloaded_before": 2,
        "offloaded_at_end": 0,
        "probe_state_during": "host",
        "probe_refused": "INVALID_STATE: media_disconnect on nic0",
        "probe_during_ok": True,
        "probe_after_ok": True,
        "probe_offloaded_after": True,
        "listed_while_armed": True,
    }
    return {**rec, **over}


def _upload(conn: int, t: float, reason: str | None, **over: Any) -> dict[str, Any]:
    return {
        "conn": conn,
        "t": t,
        "reason": reason,
        "reoffloaded_t": t + 3.5,
        "done": True,
        "verified_after": 100,
        # what the daemon's `uploaded` said and where the connection was (a host_event's own)
        "host_reason": "media_disconnect" if reason is None else "terminate",
        "came_from": ["tcpip", "nic0"],
        **over,
    }


def test_a_host_event_explains_the_uploads_and_refusals_it_made() -> None:
    obs = {
        "unrequested": [_upload(1, 10.2, None), _upload(2, 10.3, None)],
        "refusals": [
            {"conn": 1, "at": "reoffload", "t_first": 10.5, "t_last": 12.0, "offloaded_t": 13.5}
        ],
    }
    e, host = _entry([_host_event_rec()], obs)
    assert e["ok"], e["problems"]
    assert e["connections_uploaded"] == 2 and e["reoffloaded"] == 2
    assert host["unexplained"] == 0, host


@pytest.mark.parametrize(
    ("over", "obs", "why"),
    [
        ({"offloaded_at_end": 2}, None, "still offloaded on it"),
        ({"probe_refused": None}, None, "was not refused while the event held"),
        ({}, {"unrequested": []}, "2 offloaded, none uploaded"),
        ({}, {"unrequested": [_upload(1, 10.2, None, reoffloaded_t=None)]}, "not offloaded again"),
        ({}, {"unrequested": [_upload(1, 10.2, None, done=False)]}, "no byte verified"),
    ],
)
def test_a_host_event_that_did_not_act_fails(
    over: dict[str, Any], obs: dict[str, Any] | None, why: str
) -> None:
    obs = obs if obs is not None else {"unrequested": [_upload(1, 10.2, None)]}
    e, _ = _entry([_host_event_rec(**over)], obs)
    assert not e["ok"] and any(why in p for p in e["problems"]), e["problems"]


def _invalidate_rec(**over: Any) -> dict[str, Any]:
    rec = {
        "tag": 1,
        "kind": "invalidate",
        "params": {"object": "neighbor", "layer": "nic0"},
        "injected": True,
        "t0": 10.0,
        "t1": 10.01,
        "t_clear0": 11.0,
        "t_clear1": 11.0,
        "cleared": True,
        "probe_state_before": "offloaded",
        "probe_state_after": "host",
        "invalidate_calls": 1,
        "probe_reoffloaded": True,
        "probe_before_ok": True,
        "probe_after_ok": True,
        "probe_reoffloaded_ok": True,
    }
    return {**rec, **over}


def test_an_invalidate_explains_the_invalid_state_uploads_of_connections_sharing_it() -> None:
    obs = {"unrequested": [_upload(5, 10.1, "InvalidState"), _upload(6, 10.2, "InvalidState")]}
    e, host = _entry([_invalidate_rec()], obs)
    assert e["ok"], e["problems"]
    assert e["connections_uploaded"] == 2 and host["unexplained"] == 0, (e, host)
    # one not offloaded again is the invalidate's problem, not an unexplained upload
    obs = {"unrequested": [_upload(5, 10.1, "InvalidState", reoffloaded_t=None)]}
    e, host = _entry([_invalidate_rec()], obs)
    assert any("not offloaded again after invalidate" in p for p in e["problems"]), e


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"invalidate_calls": 0}, "no NdisInvalidateOffload"),
        ({"probe_state_after": "offloaded"}, "stayed offloaded"),
        ({"probe_reoffloaded_ok": False}, "not echoed intact"),
    ],
)
def test_an_invalidate_that_did_not_act_fails(over: dict[str, Any], why: str) -> None:
    e, _ = _entry([_invalidate_rec(**over)])
    assert not e["ok"] and any(why in p for p in e["problems"]), e["problems"]


def test_an_invalidate_of_a_shared_object_that_asked_none_of_the_others_up_fails() -> None:
    """Spec §3.5: every connection depending on an invalidated path or neighbor is asked up;
    with others on the probe's NIC sharing it, none asked up is a daemon that invalidated the
    probe's connection alone. A TCP object is the probe's own."""
    e, _ = _entry([_invalidate_rec(sharing_before=4)])
    assert not e["ok"] and any("none of the 4 other" in p for p in e["problems"]), e
    tcp = _invalidate_rec(sharing_before=4, params={"object": "tcp", "layer": "nic0"})
    e, _ = _entry([tcp])
    assert e["ok"], e["problems"]


def _nic_up_rec(**over: Any) -> dict[str, Any]:
    rec = {
        "tag": 1,
        "kind": "nic_up",
        "params": {"layer": "nic2", "for": "3s", "shard": ""},
        "injected": True,
        "t0": 10.0,
        "t1": 10.01,
        "t_clear0": 13.0,
        "t_clear1": 13.01,
        "cleared": True,
        "offloaded_before": 0,
        "offloaded_at_end": 0,
        "in_service_before_up": False,
        "in_service_after_up": True,
        "down_still_listed": True,
        "probe_paths": [{"conn": 9, "path": ["tcpip", "team0", "nic2"], "ok": True}],
    }
    return {**rec, **over}


def test_a_nic_up_that_put_the_nic_back_passes() -> None:
    e, _ = _entry([_nic_up_rec()])
    assert e["ok"], e["problems"]
    assert e["new_connections_placed_on"] == "nic2"


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"in_service_after_up": False}, "not back in service after nic_up"),
        ({"down_still_listed": False}, "nic_up cleared the nic_down fault"),
        (
            {"probe_paths": [{"conn": 9, "path": ["tcpip", "team0", "nic0"], "ok": True}]},
            "no new connection placed on it",
        ),
        ({"in_service_before_up": None}, "no MUX above it"),
    ],
)
def test_a_nic_up_that_did_not_act_fails(over: dict[str, Any], why: str) -> None:
    e, _ = _entry([_nic_up_rec(**over)])
    assert not e["ok"] and any(why in p for p in e["problems"]), e["problems"]


# -- real soaks: an unbroken daemon passes, one that ignores the fault fails ---------------------
@pytest.fixture
def mutant(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(mutation: str, *daemon_args: str) -> tuple[subprocess.Popen[bytes], str]:
        out = tmp_path / f"{mutation}.out"
        argv = [sys.executable, str(MUTANT), mutation, "--listen", "127.0.0.1:0", "--invariants"]
        with open(out, "wb") as sink, open(tmp_path / f"{mutation}.err", "wb") as err:
            proc = subprocess.Popen(
                [*argv, *daemon_args],
                stdout=sink,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONMALLOC": "malloc"},
            )
        started.append(proc)
        deadline = time.monotonic() + 30
        while (m := READY.search(out.read_text())) is None:
            assert proc.poll() is None, (tmp_path / f"{mutation}.err").read_text()[-2000:]
            assert time.monotonic() < deadline, "the mutant daemon never said it listens"
            time.sleep(0.05)
        return proc, m.group(1)

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _soak(
    daemon: tuple[Any, str], tmp_path: Path, faults: str, duration: float = 5.0
) -> tuple[int, dict[str, Any]]:
    proc, address = daemon
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "chimney_client.soak", "--rpc", address]
    argv += ["--daemon-pid", str(proc.pid), "-n", "30", "--duration", f"{duration:g}"]
    argv += ["--quiet", "--json", str(out), "--faults", faults]
    # memory is not what these runs judge; an ignored fault shows as missing 10 s after the hold
    # as well as 30 s after it (the unbroken daemon's run takes the same options)
    argv += ["--no-rss", "--settle", "10"]
    soak = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=soak_env(tmp_path)
    )
    try:
        _, stderr = soak.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        soak.send_signal(signal.SIGINT)
        _, stderr = soak.communicate(timeout=20)
        raise AssertionError(f"the soak did not finish in 90 s\n{stderr[-3000:]}") from None
    assert out.exists(), stderr[-3000:]
    return soak.returncode, json.loads(out.read_text())


#: The probed kinds of each stack, scheduled in one soak one after the other: each one's
#: fault is cleared (and its probe done) before the next is injected 2.5 s later, so none
#: goes off in another's outage or delay, and each is judged on its own record. One soak of
#: the unbroken daemon passes them all; the same soak of a daemon ignoring one of them fails
#: for that one.
#: (daemon options, schedule, hold in seconds)
STACKS: dict[str, tuple[tuple[str, ...], str, float]] = {
    "default": ((), "delay@1s/for=1.5s/ms=300,invalidate@3.5s", 6.0),
    # on a team: the workers' connections go on offloaded on the other NICs
    "team": (
        ("--config", str(TEAMING)),
        "host_event@1s/for=1.5s/layer=nic1,nic_up@3.5s/for=1s/layer=nic2",
        6.0,
    ),
}

#: (kind, its stack, what the soak of a daemon ignoring it must say)
PROBED = [
    ("delay", "default", "a probe call made while delayed 300 ms took"),
    ("invalidate", "default", "no NdisInvalidateOffload"),
    ("host_event", "team", "still offloaded on it"),
    ("nic_up", "team", "nic2: not back in service after nic_up"),
]


def _stack_soak(daemon: tuple[Any, str], tmp_path: Path, stack: str) -> tuple[int, dict[str, Any]]:
    _, faults, duration = STACKS[stack]
    return _soak(daemon, tmp_path, faults, duration)


def _by_kind(report: dict[str, Any], stack: str) -> dict[str, dict[str, Any]]:
    """The report's fault entries by kind: each kind of the stack's schedule, once."""
    kinds = {f["kind"]: f for f in report["faults"]}
    assert len(kinds) == len(report["faults"]), report["faults"]
    assert set(kinds) == {k for k, s, _ in PROBED if s == stack}, report["faults"]
    return kinds


@pytest.mark.timeout(120)
def test_a_host_event_on_the_only_nic_passes_on_an_unbroken_daemon(
    mutant: Any, tmp_path: Path
) -> None:
    """Every connection is uploaded and its re-offloads refused until the clear."""
    code, report = _soak(mutant("none"), tmp_path, "host_event@1s/for=1.5s")
    assert code == 0 and report["ok"], (report["failures"], report["faults"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stack", list(STACKS))
def test_the_soak_of_an_unbroken_daemon_passes(mutant: Any, tmp_path: Path, stack: str) -> None:
    code, report = _stack_soak(mutant("none", *STACKS[stack][0]), tmp_path, stack)
    assert code == 0 and report["ok"], (report["failures"], report["faults"])
    for fault in _by_kind(report, stack).values():
        assert fault["ok"] and fault["injected"] == 1, fault
    if stack == "default":
        # what test_an_invalidate_of_a_neighbor_that_moves_only_its_own_connection_fails relies
        # on: on an unbroken daemon the workers' connections on the probe's NIC share its
        # neighbor, and are asked up with it
        fault = _by_kind(report, stack)["invalidate"]
        assert fault["connections_uploaded"] > 0 and fault["reoffloaded"] > 0, fault


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("kind", "stack", "why"), PROBED)
def test_a_daemon_that_ignores_the_fault_fails_the_soak(
    mutant: Any, tmp_path: Path, kind: str, stack: str, why: str
) -> None:
    code, report = _stack_soak(mutant(f"{kind}_noop", *STACKS[stack][0]), tmp_path, stack)
    assert code == 1 and not report["ok"], report["failures"]
    kinds = _by_kind(report, stack)
    fault = kinds.pop(kind)
    assert fault["injected"] == 1 and not fault["ok"], fault
    assert any(why in p for p in fault["problems"]), fault["problems"]
    # the other kind of the soak, which the daemon does not ignore, still passes: the failure
    # is the ignored kind's own
    assert all(f["ok"] and f["injected"] == 1 for f in kinds.values()), kinds


@pytest.mark.timeout(120)
def test_an_invalidate_of_a_neighbor_that_moves_only_its_own_connection_fails(
    mutant: Any, tmp_path: Path
) -> None:
    """The host invalidates the probe's TCP object only: NdisInvalidateOffload is called and
    the probe uploaded, but the workers' connections sharing its neighbor stay offloaded on
    the stale object (spec §3.5: each affected connection is asked up, InvalidState). The
    soak of the unbroken daemon on the same schedule (test_the_soak_of_an_unbroken_daemon_
    passes[default]) shows they are asked up there."""
    code, report = _stack_soak(mutant("invalidate_tcp_only"), tmp_path, "default")
    fault = _by_kind(report, "default")["invalidate"]
    assert code == 1 and not report["ok"], fault
    assert fault["injected"] == 1 and not fault["ok"], fault
    assert any("sharing it was asked up" in p for p in fault["problems"]), fault["problems"]
