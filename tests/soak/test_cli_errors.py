"""`chimney-soak` refuses what cannot work before it starts anything: a bad option value, an
address that does not parse, a daemon that is not there, a fault the topology cannot take. Each
is a usage error (exit 2) that says what is wrong, never a traceback or a full report."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chimney_client.soak import main

ROOT = Path(__file__).resolve().parents[2]


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run `chimney-soak argv`; it must stop with exit 2. Returns its stderr."""
    with pytest.raises(SystemExit) as stopped:
        main(list(argv))
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--duration", "2x"), "expected a duration like 30s, 500ms, 1.5m"),
        (("--payload", "1x"), "not a size: '1x'"),
        (("--payload", "4k:1k"), "low end above high end"),
    ],
)
def test_a_bad_option_value_says_what_is_expected(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str
) -> None:
    err = usage_error(capsys, *argv)
    assert says in err, err
    assert "parse_" not in err, err  # argparse's "invalid parse_duration value"


NONSENSE = "9" * 400  # a float of it is inf; an int of it no size or count can mean


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        # counts
        (("-n", "0"), "argument --connections/-n: must be at least 1"),
        (("-n", "-5"), "argument --connections/-n: must be at least 1"),
        (("-n", NONSENSE), "argument --connections/-n: must be at most 1000000"),
        (("--workers", "-1"), "argument --workers: must be at least 0"),
        (("--workers", "1000"), "argument --workers: must be at most 256"),
        (("-n", "2", "--workers", "3"), "--workers 3 is more than --connections 2"),
        (("--conns-per-rpc", "0"), "argument --conns-per-rpc: must be at least 1"),
        (("--conns-per-rpc", "20000"), "argument --conns-per-rpc: must be at most 10000"),
        (("--ops-per-rpc", "0"), "--ops-per-rpc and --conns-per-rpc must be at least 1"),
        (("--ops-per-rpc", "-1"), "--ops-per-rpc and --conns-per-rpc must be at least 1"),
        (("--ops-per-rpc", "125"), "--ops-per-rpc above 124"),
        (("--daemon-pid", "0"), "argument --daemon-pid: must be at least 1"),
        (("--daemon-pid", "-1"), "argument --daemon-pid: must be at least 1"),
        (("--shards", "0"), "--shards must be at least 1"),
        (("--shards", "-1"), "--shards must be at least 1"),
        # rates and ratios
        (("--rate", "0"), "argument --rate: must be more than 0"),
        (("--rate", "-3"), "argument --rate: must be more than 0"),
        (("--rate", "nan"), "argument --rate: must be a finite number"),
        (("--rate", "inf"), "argument --rate: must be a finite number"),
        (("--rate", "1e7"), "argument --rate: must be at most 1000000"),
        (("--think-ms", "-1"), "argument --think-ms: must be at least 0"),
        (("--think-ms", "nan"), "argument --think-ms: must be a finite number"),
        (("--think-ms", "1e12"), "argument --think-ms: must be at most 3600000"),
        (("--upload-share", "nan"), "argument --upload-share: must be a finite number"),
        (("--upload-share", "-0.1"), "argument --upload-share: must be at least 0"),
        (("--upload-share", "1.5"), "argument --upload-share: must be at most 1"),
        (("--churn", "inf"), "argument --churn: must be a finite number"),
        (("--churn", "nan"), "argument --churn: must be a finite number"),
        (("--churn", "-1"), "argument --churn: must be at least 0"),
        (("--churn", "61"), "argument --churn: must be at most 60"),
        # durations
        (("--duration", "0"), "argument --duration: must be more than 0"),
        (("--duration", "-1"), "argument --duration: expected a duration like 30s"),
        (("--duration", "nan"), "argument --duration: expected a duration like 30s"),
        (("--duration", NONSENSE), "argument --duration: a duration is at most 30 days"),
        (("--duration", "100000min"), "argument --duration: a duration is at most 30 days"),
        (("--drain-timeout", "nan"), "argument --drain-timeout: expected a duration like 30s"),
        (("--drain-timeout", "-1"), "argument --drain-timeout: expected a duration like 30s"),
        (("--drain-timeout", "inf"), "argument --drain-timeout: expected a duration like 30s"),
        (("--drain-timeout", "0"), "argument --drain-timeout: must be more than 0"),
        # sizes
        (("--payload", "0"), "argument --payload: size must be at least 1 byte"),
        (("--payload", "9m"), "argument --payload: payload '9m': a payload is at most 8191k"),
        (("--payload", "1k:1g"), "a payload is at most 8191k"),
        (("--payload", NONSENSE + "k"), "argument --payload: not a size"),
        # the fault schedule's numbers
        (("--faults", "peer_reset:0"), "count must be at least 1"),
        (("--faults", "peer_reset:1001"), "--faults schedules 1001 injections; at most 1000"),
        (("--faults", "peer_reset:600,retrieve:401"), "schedules 1001 injections"),
        (("--faults", "peer_reset:" + NONSENSE), "injections; at most 1000 in one run"),
        (("--faults", "stall_peer/ms=0"), "ms must be a positive integer"),
        (("--faults", "stall_peer/ms=60001"), "ms is at most 60000"),
        (("--faults", "fail_next/count=1000001"), "count is at most 1000000"),
        (("--faults", "raise_next/skip=1000001"), "skip is at most 1000000"),
        (("--faults", "target_failure/for=0s"), "for must be more than 0"),
        (("--faults", "target_failure/for=inf"), "expected a duration like 30s"),
        (("--faults", "peer_reset@" + NONSENSE), "a duration is at most 30 days"),
    ],
)
def test_a_number_no_run_can_mean_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str
) -> None:
    """Refused before anything starts, naming what was wrong: not silently replaced by a
    default (--rate 0 was 200/s), not run as nonsense (a negative think time), no traceback."""
    err = usage_error(capsys, *argv)
    assert says in err, err
    assert "Traceback" not in err and "parse_" not in err, err


def test_the_usual_values_still_parse() -> None:
    from chimney_client.soak.cli import build_parser

    args = build_parser().parse_args(
        [
            *("--duration", "15s", "--payload", "16k", "--rate", "0.5", "--think-ms", "0"),
            *("--workers", "0", "--drain-timeout", "60", "--churn", "0.2", "--seed", "-7"),
            *("--upload-share", "1", "-n", "30000", "--conns-per-rpc", "500"),
            *("--daemon-pid", "4242", "--faults", "peer_reset:5,stall_peer:2/ms=3000"),
        ]
    )
    assert (args.duration, args.payload.values, args.rate, args.think_ms) == (
        15.0,
        (16384,),
        0.5,
        0.0,
    )
    assert (args.workers, args.drain_timeout, args.churn, args.seed) == (0, 60.0, 0.2, -7)
    assert (args.upload_share, args.connections, args.conns_per_rpc) == (1.0, 30000, 500)
    assert args.daemon_pid == 4242
    assert build_parser().parse_args(["--drain-timeout", "2min"]).drain_timeout == 120.0
    assert build_parser().parse_args(["--payload", "1k:8191k"]).payload.values == (
        1024,
        8191 * 1024,
    )


@pytest.mark.parametrize("schedule", ["peer_reset@2x", "target_failure/for=2x"])
def test_a_bad_duration_in_the_fault_schedule_names_its_item(
    capsys: pytest.CaptureFixture[str], schedule: str
) -> None:
    err = usage_error(capsys, "--faults", schedule)
    assert f"fault {schedule!r}: expected a duration like 30s" in err, err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--rpc", "127.0.0.1:abc"), "--rpc '127.0.0.1:abc': "),
        (("--rpc", "127.0.0.1:99999"), "--rpc '127.0.0.1:99999': "),
        # with --rpc: a soak that got past the check would not spawn a daemon
        (("--rpc", "127.0.0.1:1", "--peer", "127.0.0.1:abc"), "--peer '127.0.0.1:abc': "),
        (("--rpc", "127.0.0.1:1", "--peer", "unix:/tmp/x.sock"), "a peer is HOST:PORT"),
    ],
)
def test_an_address_that_does_not_parse_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str
) -> None:
    err = usage_error(capsys, *argv, "-n", "1", "--duration", "1")
    assert says in err, err
    assert "Traceback" not in err, err


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run `chimney-soak argv`; it must refuse to start (exit 2, no report). Returns stderr."""
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "held of" not in captured.err and "verdict" not in captured.err, captured.err
    return captured.err


@pytest.fixture
def nobody_listens() -> Iterator[str]:
    """A loopback address where a connect is refused: a port bound (so no one else takes
    it) and not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def daemon() -> Iterator[str]:
    """A daemon of the default topology (no mux) on a free loopback port; its address."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chimneyd", "--listen", "127.0.0.1:0", "--log-level", "error"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("chimneyd listening on "), line
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.timeout(30)
def test_no_daemon_at_rpc_stops_at_once(
    capsys: pytest.CaptureFixture[str], nobody_listens: str
) -> None:
    err = refused(capsys, "--rpc", nobody_listens, "-n", "5", "--duration", "2")
    assert err.startswith(f"chimney-soak: cannot connect to {nobody_listens}: "), err
    assert "refused" in err and "is chimneyd running? (`make run`)" in err, err
    assert "spawned" not in err and "CRASHED" not in err, err


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("schedule", "says"),
    [
        ("nic_down:1", "--faults nic_down (layer nic0) needs a topology with a mux"),
        ("rebalance", "--faults rebalance (layer team0) needs a topology with a mux"),
        ("nic_up", "--faults nic_up (layer nic0) needs a topology with a mux"),
        ("fail_next/layer=nic7", "--faults fail_next (layer nic7): the daemon has no layer nic7"),
        ("target_failure/layer=im0", "im0 is a passthrough, not a target"),
    ],
)
def test_a_fault_the_spawned_topology_cannot_take_stops_at_once(
    capsys: pytest.CaptureFixture[str], schedule: str, says: str
) -> None:
    """Checked against the configuration the soak would spawn its daemon with: nothing is
    spawned, nothing is held."""
    err = refused(capsys, "--faults", schedule, "-n", "5", "--duration", "2", "--workers", "0")
    assert says in err, err
    if "mux" in says:
        assert "--daemon-config deploy/teaming.toml" in err, err


def test_a_mux_fault_passes_the_check_with_a_teaming_config() -> None:
    from chimney_client.soak.faults import parse_faults
    from chimney_client.soak.preflight import NotReady, check_topology, spawn_layers

    args = argparse.Namespace(daemon_config=str(ROOT / "deploy" / "teaming.toml"), shards=None)
    layers = spawn_layers(args)
    assert layers is not None
    good = "nic_down/layer=nic1,rebalance,target_failure/layer=nic2,fail_next/layer=filter0"
    check_topology(parse_faults(good), layers, spawned=True)
    with pytest.raises(NotReady, match="filter0 is not right under a mux"):
        check_topology(parse_faults("nic_down/layer=filter0"), layers, spawned=True)
    # nic_up takes its NIC out (nic_down) and puts it back: the MUX above it does both
    check_topology(parse_faults("nic_up/layer=nic2"), layers, spawned=True)
    with pytest.raises(NotReady, match="filter0 is not right under a mux"):
        check_topology(parse_faults("nic_up/layer=filter0"), layers, spawned=True)


@pytest.mark.timeout(60)
def test_a_mux_fault_against_a_running_daemon_without_one_stops_at_once(
    capsys: pytest.CaptureFixture[str], daemon: str
) -> None:
    """Against a running daemon the topology is its stack.info."""
    err = refused(capsys, "--rpc", daemon, "--faults", "nic_down", "-n", "5", "--duration", "2")
    assert "--faults nic_down (layer nic0) needs a topology with a mux" in err, err
    assert "chimneyd --config deploy/teaming.toml" in err, err


@pytest.mark.timeout(30)
def test_a_daemon_config_chimneyd_would_refuse_stops_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "chimneyd.toml"
    config.write_text(f'[log]\nfile = "{tmp_path}/gone/chimneyd.log"\n')
    err = refused(capsys, "--daemon-config", str(config), "-n", "5", "--duration", "2")
    assert err.startswith(f"chimney-soak: --daemon-config {config}: log.file: "), err
    assert f"the directory {tmp_path}/gone does not exist" in err, err
