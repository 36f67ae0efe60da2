"""Longer soaks through a spawned daemon (marked `soak`: run with `pytest -m soak tests/soak` or
`make soak`): every fault kind at once with churn and mixed closes over two worker processes; a daemon whose
NIC takes too few connections, which must fail the soak that claims N offloaded connections; and
teamed NICs failing in turn under a MUX."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.soak.support import soak_env

pytestmark = pytest.mark.soak

SMALL_NIC = """
[[layer]]
name = "tcpip"
kind = "host"
lower = ["im0"]
[[layer]]
name = "im0"
kind = "passthrough"
lower = ["nic0"]
[[layer]]
name = "nic0"
kind = "target"
max_connections = 20
"""


def _soak(tmp_path: Path, *args: str, timeout: float = 150) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "chimney_client.soak", "--spawn", "--quiet", "--json", str(out)]
    argv.append("--no-rss")  # these runs judge faults' outcomes, not memory
    proc = subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=soak_env(tmp_path),
    )
    assert out.exists(), proc.stderr[-3000:]
    return proc.returncode, json.loads(out.read_text())


def _faults_of_a_pass(code: int, report: dict[str, Any]) -> dict[str, Any]:
    """The report's fault entries by kind, once the soak is known to have passed."""
    detail = json.dumps(
        {k: report.get(k) for k in ("failures", "faults", "host_mode", "error_details")}, indent=1
    )
    assert code == 0 and report["ok"], detail
    return {f["kind"]: f for f in report["faults"]}


@pytest.mark.timeout(180)
def test_every_fault_kind_shows_its_outcome(tmp_path: Path) -> None:
    faults = (
        "peer_reset:2,daemon_reset:1,stall_peer:1/ms=1500,retrieve:2,fail_next:2,upload_send:1,"
        "refuse_offload:1,target_failure@6s/for=2s,raise_next:1,"
        "raise_next:1/layer=im0/call=MiniportTcpOffloadReceive"
    )
    code, report = _soak(
        tmp_path,
        *("-n", "600", "--duration", "20", "--workers", "2", "--upload-share", "0.1"),
        *("--churn", "0.2", "--close", "mixed", "--faults", faults),
    )
    by_kind = _faults_of_a_pass(code, report)
    assert set(by_kind) == {
        "peer_reset", "daemon_reset", "stall_peer", "retrieve", "target_failure", "fail_next",
        "upload_send", "refuse_offload", "raise_next",
    }  # fmt: skip
    for kind, f in by_kind.items():
        assert f["ok"] and f["injected"] >= 1 and f["verified_after"] > 0, (kind, f)
    # the stall held its round trip until its end; the daemon's own reset lost nothing it read
    assert by_kind["stall_peer"]["held"] == by_kind["stall_peer"]["injected"]
    assert "read_before_rst" in by_kind["daemon_reset"]  # tcp.info said what the daemon read
    assert "lost_before_reset" not in by_kind["daemon_reset"]
    tf = by_kind["target_failure"]
    assert tf["connections_uploaded"] > 0 and tf["reoffloaded"] == tf["connections_uploaded"]
    assert report["host_mode"]["explained"]["target_failure"] > 0
    # the bugs planted were the daemon's only layer errors and invariant violations (spec §6.3)
    bugs = by_kind["raise_next"]
    assert bugs["planted"] == 2 and bugs["connections_hit"] >= 1, bugs
    engine = report["stats_after"]["engine"]
    assert engine["layer_errors"] == engine["invariant_violations"] == 2, engine
    assert report["states"]["host_by_cause"].get("target_failure", 0) > 0
    assert report["integrity_errors"] == 0 and report["drained"]
    # the daemon said which connections each fail_next failed a call of, and the outcomes
    # were matched to them
    for kind in ("fail_next", "upload_send", "refuse_offload"):
        assert by_kind[kind]["connections_failed"] >= 1, by_kind[kind]


@pytest.mark.timeout(150)
def test_fail_next_in_every_shard_shows_its_count_in_each(tmp_path: Path) -> None:
    """Two shards: each fail_next preset (no /shard=) goes into both and fails its count of
    calls in each; every one of those must show its outcome, on a connection the daemon
    says it failed."""
    code, report = _soak(
        tmp_path,
        *("--shards", "2", "-n", "200", "--duration", "8", "--workers", "2"),
        *("--faults", "fail_next:2,upload_send:1,refuse_offload:1"),
    )
    by_kind = _faults_of_a_pass(code, report)
    for kind, count in (("fail_next", 2), ("upload_send", 1), ("refuse_offload", 1)):
        f = by_kind[kind]
        assert f["expected"] == f["observed"] == 2 * count, (kind, f)
        assert f["connections_failed"] >= 1 and f["verified_after"] > 0, (kind, f)
    assert report["integrity_errors"] == 0 and report["drained"]


@pytest.mark.timeout(150)
def test_bugs_in_the_state_calls_show_their_outcomes(tmp_path: Path) -> None:
    """raise_next in initiates (nic0, im0), terminates (nic0, im0) and a disconnect, with
    planned uploads, churn and mixed closes to run them: each bug is explained by what it did
    (an offload refused or answered INTERNAL and done again, a reset of the connection being
    uploaded or closed, a disconnect answered INTERNAL), and the daemon counted exactly them."""
    faults = (
        "raise_next:2/call=MiniportInitiateOffload,raise_next:1/layer=im0/call=MiniportInitiateOffload,"
        "raise_next:2/call=MiniportTerminateOffload,raise_next:1/layer=im0/call=MiniportTerminateOffload,"
        "raise_next:1/call=MiniportTcpOffloadDisconnect"
    )
    code, report = _soak(
        tmp_path,
        *("-n", "200", "--duration", "12", "--workers", "2", "--upload-share", "0.2"),
        *("--churn", "0.3", "--close", "mixed", "--faults", faults),
    )
    bugs = _faults_of_a_pass(code, report)["raise_next"]
    assert bugs["planted"] == 7 and bugs["connections_hit"] >= 1, bugs
    engine = report["stats_after"]["engine"]
    assert engine["layer_errors"] == engine["invariant_violations"] == 7, engine
    assert report["integrity_errors"] == 0 and report["drained"]


@pytest.mark.timeout(120)
def test_state_call_bugs_go_off_in_a_hold_with_no_churn_or_uploads(tmp_path: Path) -> None:
    """The plain workload offloads each connection once and uploads none until the drain:
    the soak has connections of its own upload and offload again after each such injection,
    so that every bug goes off in the hold and shows its outcome there."""
    faults = (
        "raise_next/call=MiniportInitiateOffload,raise_next:2/call=MiniportTerminateOffload,"
        "raise_next/layer=im0/call=MiniportInitiateOffload/skip=1"
    )
    code, report = _soak(tmp_path, "-n", "100", "--duration", "6", "--faults", faults)
    bugs = _faults_of_a_pass(code, report)["raise_next"]
    assert bugs["planted"] == 4 and bugs["connections_hit"] >= 1, bugs
    assert bugs["verified_after"] > 0


@pytest.mark.timeout(120)
def test_a_broken_offload_path_fails_the_soak(tmp_path: Path) -> None:
    """nic0 takes 20 offloads; 60 connections are asked for: 40 run in the host stack. The
    traffic is intact, but that is not the run the soak claims."""
    config = tmp_path / "small-nic.toml"
    config.write_text(SMALL_NIC)
    code, report = _soak(
        tmp_path, "-n", "60", "--duration", "3", "--daemon-config", str(config), timeout=100
    )
    assert code == 1 and not report["ok"]
    assert report["integrity_errors"] == 0 and report["bytes_verified"] > 0
    host = report["host_mode"]
    assert host["refused_at_connect"] == 40 and host["unexplained"] >= 40
    assert any("offload refused at connect" in f for f in report["failures"])
    assert report["states"]["host_by_cause"]["refused_offload"] > 0


@pytest.mark.timeout(150)
def test_teamed_nics_fail_in_turn_and_only_their_connections_move(tmp_path: Path) -> None:
    """deploy/teaming.toml (a MUX over three NICs): nic0 fails, then nic1 is taken out. Each
    time exactly the connections on that NIC are asked up and offloaded again onto the others,
    every byte verified; nothing stays on the NIC at the end of its outage."""
    teaming = Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml"
    # 1.5 s into the hold, the ramp's connections all offloaded; 3 s from the first outage's
    # clear to the second, so the first's re-offloads are done and nic1 is counted on a full
    # team; the hold ends 1 s after the second clear, its re-offloads judged in the settle
    faults = "target_failure@1.5s/layer=nic0/for=2s,nic_down@6.5s/layer=nic1/for=2s"
    code, report = _soak(
        tmp_path,
        *("--daemon-config", str(teaming), "-n", "300", "--duration", "9.5"),
        *("--faults", faults),
    )
    by_kind = _faults_of_a_pass(code, report)
    for kind, nic in (("target_failure", "nic0"), ("nic_down", "nic1")):
        f = by_kind[kind]
        (before,), (at_end,) = f["nics_before"], f["nics_at_end"]
        assert before[nic] > 0 and at_end[nic] == 0, (kind, f)
        assert sum(at_end.values()) == sum(before.values()) == 300, (kind, f)
        assert f["connections_uploaded"] == before[nic] == f["reoffloaded"], (kind, f)
        assert f["verified_after"] > 0
    assert report["integrity_errors"] == 0 and report["drained"]


@pytest.mark.timeout(150)
def test_a_rebalance_after_a_nic_came_back_evens_the_teamed_nics(tmp_path: Path) -> None:
    """deploy/teaming.toml: nic2 is taken out (its connections move to nic0 and nic1) and put
    back empty; the rebalance then moves a third of them onto it, each offloaded again with
    every byte verified, and leaves the three even."""
    teaming = Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml"
    # 3 s from the clear to the rebalance (nic2's outage re-offloaded onto nic0 and nic1);
    # the rebalance waits for what it moved to be offloaded again itself
    code, report = _soak(
        tmp_path,
        *("--daemon-config", str(teaming), "-n", "300", "--duration", "9.5"),
        *("--faults", "nic_down@1.5s/layer=nic2/for=2s,rebalance@6.5s/layer=team0"),
    )
    by_kind = _faults_of_a_pass(code, report)
    f = by_kind["rebalance"]
    (before,), (after,) = f["mux_before"], f["mux_after"]
    assert before["nic2"] == 0 and min(before["nic0"], before["nic1"]) > 1, f
    assert max(after.values()) - min(after.values()) <= 1, f
    assert sum(after.values()) == sum(before.values()) == 300, f
    assert f["connections_uploaded"] == after["nic2"] == f["reoffloaded"], f
    assert f["verified_after"] > 0
    assert report["integrity_errors"] == 0 and report["drained"]
