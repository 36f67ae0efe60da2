"""Locust on chimneyd: real distributed runs, and the user's verification under mutation.

The distributed tests start two daemons and one echo peer, then a Locust master and two worker
processes (headless, bounded run time) with deploy/locustfile.py, and read what happened from
Locust's own output. Anything that imports locust runs in a child process: locust
monkey-patches the process that imports it (see locust_checks.py and locust_support.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chimney_client.stream import PatternStream
from tests.e2e.conftest import SpawnDaemon
from tests.e2e.locust_support import LocustResult, run_distributed
from tests.e2e.support import HOST, ROOT, Daemon, all_zero, child_env, peer_process

USERS = 4
RUN_TIME_S = 12
ROUNDS = 3  # locust_checks.ROUNDS
PAYLOAD = 16 * 1024
#: resets per user per second in the reset test: one is due a quarter second into a user's
#: life on average, so every user that does more than a couple of rounds injects one and sees
#: it land (the round that injects it observes the abort); most rounds still echo
RESET_RATE = 4.0
#: a distributed run takes RUN_TIME_S plus start-up and stop of five processes; on a busy
#: machine that can pass the suite's default 120 s (locust_support bounds it at +90 s)
DISTRIBUTED_TIMEOUT_S = 180


def _run(
    spawn_daemon: SpawnDaemon, tmp_path: Path, *options: str
) -> tuple[LocustResult, list[Daemon]]:
    daemons = [spawn_daemon(), spawn_daemon()]
    with peer_process("echo") as (_, echo_port):
        result = run_distributed(
            tmp_path,
            [d.address for d in daemons],
            f"{HOST}:{echo_port}",
            users=USERS,
            run_time_s=RUN_TIME_S,
            options=[
                "--chimney-payload-bytes",
                str(PAYLOAD),
                "--chimney-think-ms",
                "20",
                *options,
            ],
        )
    return result, daemons


def _assert_daemons_drained(daemons: list[Daemon]) -> None:
    """Every user's session is gone: no connection left and every layer's gauges at zero."""
    for d in daemons:
        with d.client() as c:
            stats = c.stack_stats()
        assert stats["connections"] == 0, stats
        assert all_zero(stats), stats


@pytest.mark.timeout(DISTRIBUTED_TIMEOUT_S)
def test_distributed_echo_over_two_daemons(spawn_daemon: SpawnDaemon, tmp_path: Path) -> None:
    result, daemons = _run(spawn_daemon, tmp_path, "--chimney-upload-rate", "0.5")
    why = result.explain()
    assert result.returncode == 0, why
    assert result.total_failures() == 0 and not result.failures, why

    # both daemons carried verified echo: one `echo` row per daemon, bytes counted
    echo = result.rows("echo")
    assert set(echo) == {d.address for d in daemons}, why
    for row in echo.values():
        assert row["num_requests"] > 0 and row["total_content_length"] > 0, why
    verified = sum(row["total_content_length"] for row in echo.values())

    # every RPC of the workload is in Locust's statistics, and the bytes add up: what was
    # verified was sent, and at most one round per user was cut short when the run stopped
    rpc = result.rows("rpc")
    for method in ("tcp.connect", "tcp.send", "tcp.recv", "tcp.upload", "tcp.offload"):
        assert rpc.get(method, {}).get("num_requests", 0) > 0, f"{method} missing\n{why}"
    sent = rpc["tcp.send"]["total_content_length"]
    assert verified <= sent <= verified + USERS * PAYLOAD, why
    assert rpc["tcp.offload"]["num_requests"] <= rpc["tcp.upload"]["num_requests"], why

    assert result.entry("verify", "integrity") is None, why
    assert result.rows("event").keys() <= {"recv_timeout"}, why
    _assert_daemons_drained(daemons)


@pytest.mark.timeout(DISTRIBUTED_TIMEOUT_S)
def test_peer_resets_count_as_expected_events(spawn_daemon: SpawnDaemon, tmp_path: Path) -> None:
    # a reset due within a user's first few rounds (RESET_RATE), not only after a second or
    # more of a run a loaded machine may spend mostly starting: at 1.0 a run whose users did
    # few rounds had each reset cut off by the stop (resets 0, failed)
    result, daemons = _run(spawn_daemon, tmp_path, "--chimney-reset-rate", str(RESET_RATE))
    why = result.explain()
    assert result.returncode == 0, why
    assert result.total_failures() == 0 and not result.failures, why

    resets = result.count("event", "peer_reset")
    injected = result.count("rpc", "fault.inject")
    assert resets > 0, why
    # each injected reset surfaced as the expected event (one per user may be cut off by the stop)
    assert injected - USERS <= resets <= injected, why
    assert result.entry("verify", "integrity") is None, why
    # after each reset the user went on with a new connection, still verified
    assert result.count("rpc", "tcp.connect") >= resets + 1, why
    assert set(result.rows("echo")) == {d.address for d in daemons}, why

    # the daemons saw the aborts the events stand for
    aborts = 0
    for d in daemons:
        with d.client() as c:
            calls = c.stack_stats()["layers"]["nic0"]["calls"]
        aborts += sum(n for k, n in calls.items() if k.endswith("TcpIndicateAbort"))
    assert aborts >= resets, (aborts, why)
    _assert_daemons_drained(daemons)


# -- the user's verification, in-memory ------------------------------------------------------


def _check(*args: str, timeout: float = 60.0) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.e2e.locust_checks", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _failures(result: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(e["type"], e["name"]): e["failures"] for e in result["entries"] if e["failures"]}


def _requests(result: dict[str, Any], request_type: str, name: str) -> int:
    for e in result["entries"]:
        if e["type"] == request_type and e["name"] == name:
            return int(e["requests"])
    return 0


def _first_seen_at(error: str, mutation: str, at: int = 9_000) -> int:
    """Stream offset where the verifier sees a byte changed (`corrupt`) or dropped (`drop`)
    at `at`, for the seed the error names."""
    if mutation == "corrupt":
        return at
    seed = int(re.search(r"seed (\d+)", error).group(1))  # type: ignore[union-attr]
    data = PatternStream(seed).at(0, at + 4096)
    return next(i for i in range(at, len(data) - 1) if data[i] != data[i + 1])


def test_user_verifies_echo_and_flags_a_changed_or_missing_byte() -> None:
    clean = _check("user", "clean")
    assert _failures(clean) == {}, clean
    assert _requests(clean, "echo", "127.0.0.1:1") > 0, clean

    for mutation in ("corrupt", "drop"):
        result = _check("user", mutation)
        assert _failures(result) == {("verify", "integrity"): 1}, result
        (error,) = result["errors"]
        assert error["error"].startswith("IntegrityError:"), error
        # the byte the client changed; a dropped one shows where the bytes after it first
        # differ from it (the stream may repeat the dropped byte right after it)
        assert f"stream offset {_first_seen_at(error['error'], mutation)}" in error["error"], error
        # the user went on with a fresh connection and verified echo again
        assert _requests(result, "rpc", "tcp.connect") == 2, result


def test_user_counts_its_own_reset_as_an_event_and_any_other_abort_as_a_failure() -> None:
    reset = _check("user", "reset")
    assert _failures(reset) == {}, reset
    assert _requests(reset, "event", "peer_reset") == 1, reset
    assert _requests(reset, "rpc", "fault.inject") == 1, reset

    abort = _check("user", "abort")
    assert _failures(abort) == {("rpc", "tcp.send"): 1}, abort
    assert "NDIS_STATUS_REQUEST_ABORTED" in abort["errors"][0]["error"], abort
    assert _requests(abort, "event", "peer_reset") == 0, abort


def test_an_offload_refused_with_an_ndis_status_is_an_event_not_a_failure() -> None:
    refused = _check("user", "refused")
    assert _failures(refused) == {}, refused
    # the connection's refusal after tcp.connect, then one at the end of each round
    assert _requests(refused, "event", "offload_refused") == 1 + ROUNDS, refused
    assert _requests(refused, "echo", "127.0.0.1:1") > 0, refused  # verified in the host stack


def test_blocking_client_cooperates_under_gevent(daemon: Daemon) -> None:
    result = _check("gevent", daemon.address)
    assert result["log"] == ["accept called", "connect called", "accept returned"], result
    assert result["accepted"] > 0 and result["connected"] > 0, result

    # control: without Locust's monkey-patching the same check deadlocks until the accept's
    # TIMEOUT, so the check above does tell a cooperative client from a blocking one
    proc = subprocess.run(
        [sys.executable, "-m", "tests.e2e.locust_checks", "gevent", daemon.address, "2000"],
        capture_output=True,
        text=True,
        env={**child_env(), "LOCUST_SKIP_MONKEY_PATCH": "1"},
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode != 0 and "TIMEOUT" in proc.stderr, proc.stdout + proc.stderr
