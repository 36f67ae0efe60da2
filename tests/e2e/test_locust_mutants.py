"""Locust against a daemon broken on purpose (tests/e2e/locust_mutant_daemon.py): every way the
daemon can go wrong must end the run as a failure (Locust's failure stats, exit status 1).

One headless Locust process (no master: the checks are the user's, the same on a worker),
one mutant daemon and one echo peer on loopback, a short bounded run with the settings
tests/e2e/test_locust.py uses. Anything that imports locust runs in a child process.

`MISSED` are breakages a run used to pass (each must now fail the run, and on the row that
names it); `CAUGHT` two it always reported, kept to show the harness fails a run. Each run takes
8-20 s: marked `soak`, so a plain `pytest` leaves them out and `make test` runs them.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import HOST, ROOT, child_env, peer_process

pytestmark = pytest.mark.soak  # run by `make test` after the default selection

LOCUSTFILE = ROOT / "deploy" / "locustfile.py"
MUTANT = Path(__file__).with_name("locust_mutant_daemon.py")
READY = re.compile(r"chimneyd listening on (\S+)")
#: A run whose breakage shows by the stop at the latest (a stuck echo the stop cuts off, an
#: integrity or EOF failure, an offload that did nothing): the mutation strikes at its 40th
#: event, within the first second of the run
RUN_TIME_S = 6
#: A run whose breakage is ended by the call limit (SHORT_OP's op timeout of 3 s plus the
#: client's 5 s server-wait margin), well before the stop: the limit, not the stop, reports it.
#: And a run whose breakage needs an injected reset: resets come at random (0.5 per user per
#: second), and the stop reports one unseen only 5 s after it (STOP_GRACE_S), so in a 6 s run
#: all four users' first resets fell too late about one run in seven (seen: reset_noop passed
#: with 4 resets injected); in 12 s, about one in a million
LONG_RUN_TIME_S = 12
#: what tests/e2e/test_locust.py runs with
COMMON = ["--chimney-payload-bytes", "16384", "--chimney-think-ms", "20"]
#: an op timeout well inside the run, so a stuck echo has time to be reported
SHORT_OP = ["--chimney-op-timeout-s", "3", "--chimney-recv-timeout-ms", "1000"]


@dataclass
class Run:
    returncode: int
    stats: list[dict[str, Any]]
    failures: list[dict[str, str]]
    connections_left: int | None
    log: str

    def total_failures(self) -> int:
        return sum(int(e["num_failures"]) for e in self.stats)

    def count(self, request_type: str, name: str) -> int:
        return sum(
            int(e["num_requests"])
            for e in self.stats
            if e["method"] == request_type and e["name"] == name
        )

    def failures_of(self, request_type: str, name: str) -> int:
        return sum(
            int(e["num_failures"])
            for e in self.stats
            if e["method"] == request_type and e["name"] == name
        )

    def explain(self) -> str:
        rows = [
            f"{e['method']:<7} {e['name']:<24} reqs={e['num_requests']:<6} "
            f"fails={e['num_failures']:<4} bytes={e['total_content_length']}"
            for e in self.stats
        ]
        rows += [f"FAILURE {f}" for f in self.failures]
        rows.append(f"rc={self.returncode} connections left={self.connections_left}")
        return "\n".join(rows + self.log.splitlines()[-15:])


@contextlib.contextmanager
def _mutant(tmp: Path, mutation: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    out = tmp / f"{mutation}.daemon"
    argv = [sys.executable, str(MUTANT), mutation, "--listen", f"{HOST}:0"]
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            argv,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**child_env(), "PYTHONMALLOC": "malloc"},
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 30
        while (m := READY.search(out.read_text(errors="replace"))) is None:
            assert proc.poll() is None, out.read_text()[-2000:]
            assert time.monotonic() < deadline, "the mutant daemon never said it listens"
            time.sleep(0.05)
        yield proc, m.group(1)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _connections(address: str) -> int | None:
    """Connections the daemon still has (None: it cannot be asked)."""
    from chimney_client import ChimneyError, Client

    try:
        with Client.connect(address, call_timeout=5) as c:
            return int(c.stack_stats()["connections"])
    except ChimneyError:
        return None


def run_locust(tmp: Path, mutation: str, *options: str, run_s: int = RUN_TIME_S) -> Run:
    out = tmp / mutation
    out.mkdir(exist_ok=True)
    with _mutant(tmp, mutation) as (daemon, address), peer_process("echo") as (_, echo_port):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(LOCUSTFILE),
                "--headless",
                "-u",
                "4",
                "-r",
                "4",
                "-t",
                f"{run_s}s",
                "--stop-timeout",
                "5",
                "--only-summary",
                "--host",
                address,
                "--chimney-echo",
                f"{HOST}:{echo_port}",
                "--csv",
                str(out / "run"),
                "--json-file",
                str(out / "stats"),
                *COMMON,
                *options,
            ],
            capture_output=True,
            text=True,
            env={**child_env(), "CHIMNEY_MUTANT_AT": "40"},
            cwd=out,
            timeout=run_s + 60,
        )
        left = _connections(address) if daemon.poll() is None else None
    stats_path = out / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else []
    failures: list[dict[str, str]] = []
    if (out / "run_failures.csv").exists():
        with (out / "run_failures.csv").open(newline="") as f:
            failures = list(csv.DictReader(f))
    return Run(proc.returncode, stats, failures, left, proc.stdout + proc.stderr)


#: (mutation, options, the row that must fail): each a way a run used to pass a broken daemon
MISSED = [
    # tcp.send answers "acknowledged" and sends nothing: the echo never comes; the run (6 s)
    # is shorter than the default op timeout (30 s), so only the stop can report it
    ("send_noop", (), ("event", "stuck")),
    # the last bytes of a chunk are lost: same, the read-back waits and the stop cuts it off
    ("drop_tail", (), ("event", "stuck")),
    # one tcp.recv / tcp.send never answered: the call limit (op timeout + margin) ends it,
    # inside a run of LONG_RUN_TIME_S
    ("recv_hang", tuple(SHORT_OP), ("event", "stuck")),
    ("send_hang", tuple(SHORT_OP), ("event", "stuck")),
    # peer_reset accepted and done nothing: still unseen long after, when the run stops
    ("reset_noop", ("--chimney-reset-rate", "0.5"), ("event", "peer_reset_unobserved")),
    # tcp.close answers True and leaves the connection open
    ("close_leaves", ("--chimney-reset-rate", "0.5"), ("event", "not_closed")),
    # tcp.connect/tcp.offload answer and nothing is offloaded
    ("offload_off", ("--chimney-upload-rate", "0.5"), ("event", "not_offloaded")),
]

#: mutations reported all along, kept to show the harness fails a run for what it should
CAUGHT = [
    ("flip_byte", (), ("verify", "integrity")),
    ("recv_eof", (), ("event", "unexpected_eof")),
]

Case = tuple[str, tuple[str, ...], tuple[str, str]]


def _id(case: Case) -> str:
    return case[0] + ("-short-op" if "--chimney-op-timeout-s" in case[1] else "")


def _run_s(case: Case) -> int:
    """How long the run of `case` lasts: long enough for the call limit where that is what
    must end it (the short op timeout's cases), and for a reset early enough for the stop to
    call it unseen where a reset must show the breakage, else RUN_TIME_S."""
    long = {"--chimney-op-timeout-s", "--chimney-reset-rate"} & set(case[1])
    return LONG_RUN_TIME_S if long else RUN_TIME_S


@pytest.mark.timeout(120)
@pytest.mark.parametrize("run_s", sorted({RUN_TIME_S, LONG_RUN_TIME_S}))
def test_control_run_against_the_unbroken_daemon_passes(tmp_path: Path, run_s: int) -> None:
    # every check on: resets, uploads and re-offloads, closes, and the short op timeout that
    # makes the stop's grace the shortest; as long as each of the runs below
    options = ["--chimney-reset-rate", "0.5", "--chimney-upload-rate", "0.5", *SHORT_OP]
    run = run_locust(tmp_path, "none", *options, run_s=run_s)
    assert run.returncode == 0 and run.total_failures() == 0, run.explain()
    assert run.count("event", "peer_reset") > 0, run.explain()
    assert run.count("rpc", "tcp.offload") > 0, run.explain()
    assert run.connections_left == 0, run.explain()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", MISSED + CAUGHT, ids=[_id(c) for c in MISSED + CAUGHT])
def test_a_broken_daemon_fails_the_run(tmp_path: Path, case: Case) -> None:
    mutation, options, row = case
    run = run_locust(tmp_path, mutation, *options, run_s=_run_s(case))
    assert run.returncode != 0 and run.total_failures() > 0, run.explain()
    assert run.failures_of(*row) > 0, run.explain()
