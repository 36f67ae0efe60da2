"""The soak against a daemon with one thing broken on purpose (tests/soak/mutant_daemon.py): a
fault that is accepted and does nothing, offload that does nothing, one damaged byte, or a bug
no fault planted. Each run must fail, for the reason the mutation gives, where a run against the
real daemon passes (test_fault_soak.py, test_short_soak.py). Marked `soak`: run with
`pytest -m soak tests/soak`."""

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

from tests.soak.support import soak_env

pytestmark = pytest.mark.soak

MUTANT = Path(__file__).with_name("mutant_daemon.py")
READY = re.compile(r"chimneyd listening on (\S+)")


class Mutant:
    def __init__(self, proc: subprocess.Popen[bytes], address: str) -> None:
        self.proc = proc
        self.address = address


@pytest.fixture
def mutant(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(mutation: str, *daemon_args: str) -> Mutant:
        out = tmp_path / f"{mutation}.out"
        argv = [sys.executable, str(MUTANT), mutation, "--listen", "127.0.0.1:0", "--invariants"]
        with open(out, "wb") as sink, open(tmp_path / f"{mutation}.err", "wb") as err:
            proc = subprocess.Popen(
                [*argv, *daemon_args],
                stdout=sink,
                stderr=err,
                stdin=subprocess.DEVNULL,
                # the C allocator, as `python -m chimneyd` runs the daemon
                env={**os.environ, "PYTHONMALLOC": "malloc"},
            )
        started.append(proc)
        deadline = time.monotonic() + 30
        while (m := READY.search(out.read_text())) is None:
            assert proc.poll() is None, (tmp_path / f"{mutation}.err").read_text()[-2000:]
            assert time.monotonic() < deadline, "the mutant daemon never said it listens"
            time.sleep(0.05)
        return Mutant(proc, m.group(1))

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


BROKEN = [
    # stall_peer accepted, nothing stalled: the data still arrives, but nothing waited
    (
        "stall_noop",
        "stall_peer:1/ms=1500",
        "a round trip begun during the stall came back",
    ),
    # the daemon's peer_reset does nothing: no abort on the connection it named
    ("reset_noop", "daemon_reset:1", "no TcpIndicateAbort"),
    # bytes the daemon held at a reset dropped, at the host or at the NIC: a reset's slot has
    # bytes held at both when it orders the reset, so they are missed
    ("host_drops_unread_at_abort", "daemon_reset:1", "the daemon had read before its own RST"),
    ("nic_drops_held_at_reset", "daemon_reset:1", "the daemon had read before its own RST"),
    # retrieve accepted, no TcpIndicateRetrieve raised
    ("retrieve_noop", "retrieve:1", "no TcpIndicateRetrieve"),
    # the NIC "fails" and nothing is uploaded; a send "failed" and none was
    ("target_failure_noop", "target_failure@1s/for=2s", "none uploaded (UPLOAD_ALL)"),
    ("fail_next_noop", "fail_next:1", "1 send failure(s) caused, 0 seen"),
    # raise_next accepted, nothing raised: no layer error for the bug it planted
    ("raise_next_noop", "raise_next:1", "1 bug(s) planted, the daemon counted 0 layer error(s)"),
    # a bug in the daemon no fault planted: a send answered INTERNAL, explained by nothing
    ("internal_500th_send", "", "send answered INTERNAL (INTERNAL: a bug, logged as trace id"),
    # offload answers and does nothing: every connection carried by the host stack
    ("offload_off", "", "offload refused at connect"),
    # the invariant checker on and never called: no violation, and none checked
    ("checker_detached", "", "the daemon's invariant checker checked no NBL completion"),
    # one byte of one tcp.recv answer flipped, in the warm-up or in the run: no fault at all
    ("damage_20th_answer", "", "1 integrity error(s)"),
    ("damage_500th_answer", "", "1 integrity error(s)"),
]


def _soak(daemon: Mutant, tmp_path: Path, faults: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "chimney_client.soak", "--rpc", daemon.address]
    argv += ["--daemon-pid", str(daemon.proc.pid), "-n", "30", "--duration", "4"]
    # what these runs judge is not memory, and a fault a mutant ignores shows as missing 10 s
    # after the hold as well as 30 s after it (the control takes the same options)
    argv += ["--quiet", "--json", str(out), "--no-rss", "--settle", "10"]
    if faults:
        argv += ["--faults", faults]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=soak_env(tmp_path)
    )
    try:
        stdout, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        # stuck: Ctrl-C makes the soak stop and write its partial report, which says what it
        # was waiting for (a phase, connections not closed, gauges left)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
        report = out.read_text() if out.exists() else "no report"
        raise AssertionError(
            f"the soak did not finish in 90 s\n{report[-4000:]}\n{stdout[-2000:]}\n{stderr[-3000:]}"
        ) from None
    assert out.exists(), stderr[-3000:]
    return proc.returncode, json.loads(out.read_text())


@pytest.mark.timeout(120)
def test_the_same_soak_of_an_unbroken_daemon_passes(mutant: Any, tmp_path: Path) -> None:
    """The control: every fault of BROKEN at once, the same size and way of starting, nothing
    broken. The runs below fail because of their mutation, not because of the setup."""
    faults = ",".join(dict.fromkeys(f for _, f, _ in BROKEN if f))  # each once
    code, report = _soak(mutant("none"), tmp_path, faults)
    # the whole account of each fault that failed: pytest keeps the report's directory for
    # three runs only, and a failure here is rare enough to need reading where it happened
    failed = [f for f in report["faults"] if not f["ok"]]
    assert code == 0 and report["ok"], (report["failures"], failed)
    kinds = {f["kind"]: f for f in report["faults"]}
    assert set(kinds) == {
        "stall_peer", "daemon_reset", "retrieve", "target_failure", "fail_next", "raise_next"
    }  # fmt: skip
    assert all(f["ok"] and f["injected"] == 1 for f in kinds.values()), kinds
    assert report["integrity_errors"] == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("mutation", "faults", "why"), BROKEN)
def test_a_broken_daemon_fails_the_soak_for_its_reason(
    mutant: Any, tmp_path: Path, mutation: str, faults: str, why: str
) -> None:
    code, report = _soak(mutant(mutation), tmp_path, faults)
    assert code == 1 and not report["ok"], report["failures"]
    assert any(why in f for f in report["failures"]), report["failures"]
    if mutation.startswith("damage_"):
        (where,) = report["integrity_error_details"]
        assert (where["state"] == "warm-up") == (mutation == "damage_20th_answer"), where
    if faults:
        # the fault was injected (the daemon answered with its id): its outcome is what failed
        (fault,) = report["faults"]
        assert fault["injected"] == 1 and not fault["ok"], fault
        if fault["kind"] in ("stall_peer", "daemon_reset", "retrieve"):
            # what the soak kept of the fault goes with its problem in the report
            said = fault["problem_records"][0]
            assert said["problem"] in fault["problems"], fault
            assert [r["kind"] for r in said["records"]] == [fault["kind"]], said


TEAMING = Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml"
#: nic2 taken out and put back empty, then the MUX asked to even its three NICs: 2.5 s after
#: the outage is cleared, so the outage's connections are placed again and the MUX has said
#: RESUME (an outage that changes the NICs in service while a rebalance runs excuses it from
#: the counts) even on a loaded machine
REBALANCE = "nic_down@0.5s/layer=nic2/for=0.5s,rebalance@3s/layer=team0"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mutation", ["none", "rebalance_noop"])
def test_a_rebalance_that_does_nothing_fails_the_soak(
    mutant: Any, tmp_path: Path, mutation: str
) -> None:
    """On deploy/teaming.toml: the unbroken daemon's rebalance passes; one accepted that moves
    nothing fails, as its NICs stay uneven."""
    code, report = _soak(mutant(mutation, "--config", str(TEAMING)), tmp_path, REBALANCE)
    kinds = {f["kind"]: f for f in report["faults"]}
    if mutation == "none":
        assert code == 0 and report["ok"], (report["failures"], kinds)
        assert kinds["rebalance"]["connections_uploaded"] > 0, kinds["rebalance"]
        return
    assert code == 1 and not report["ok"], report["failures"]
    assert any("moved nothing while its NICs were" in f for f in report["failures"]), report[
        "failures"
    ]
    assert kinds["nic_down"]["ok"], kinds["nic_down"]


#: nic2 out all along (from 0.3 s until 5.3 s), nic1 taken out meanwhile and put back empty,
#: then the MUX asked to even its NICs in service (nic0, nic1): nic2's outage began long before
#: the rebalance and ends after it, so the MUX knew nic2 out of service when it planned
REBALANCE_IN_AN_OUTAGE = (
    "nic_down@0.3s/layer=nic2/for=5s,nic_down@0.6s/layer=nic1/for=0.6s,rebalance@3s/layer=team0"
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mutation", ["none", "rebalance_noop"])
def test_a_rebalance_that_does_nothing_during_a_long_outage_fails_the_soak(
    mutant: Any, tmp_path: Path, mutation: str
) -> None:
    """An outage in place from before the rebalance until after it does not excuse it: the
    unbroken daemon's rebalance evens nic0 and nic1 and passes; one that moves nothing fails."""
    daemon = mutant(mutation, "--config", str(TEAMING))
    code, report = _soak(daemon, tmp_path, REBALANCE_IN_AN_OUTAGE)
    kinds = {f["kind"]: f for f in report["faults"]}
    if mutation == "none":
        assert code == 0 and report["ok"], (report["failures"], kinds)
        assert kinds["rebalance"]["connections_uploaded"] > 0, kinds["rebalance"]
        assert "crossed_by_an_outage" not in kinds["rebalance"], kinds["rebalance"]
        return
    assert code == 1 and not report["ok"], report["failures"]
    assert any("moved nothing while its NICs were" in f for f in report["failures"]), report[
        "failures"
    ]
