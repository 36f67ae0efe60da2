"""A real distributed Locust run as subprocesses: one master, N workers, headless, bounded.

Locust monkey-patches every process that imports it (gevent), so the test process never does:
the master and the workers are `python -m locust` children, and what they counted is read back
from Locust's own output (`--json-file` for the stats, `--csv` for the failures table).
"""

from __future__ import annotations

import contextlib
import csv
import json
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.support import HOST, ROOT, child_env

LOCUSTFILE = ROOT / "deploy" / "locustfile.py"
#: Time a run may take beyond its --run-time: start-up of three processes, stop, final report.
RUN_MARGIN_S = 90.0


@dataclass
class LocustResult:
    returncode: int
    stats: list[dict[str, Any]]
    failures: list[dict[str, str]]
    logs: dict[str, str] = field(default_factory=dict)

    def entry(self, request_type: str, name: str) -> dict[str, Any] | None:
        for e in self.stats:
            if e["method"] == request_type and e["name"] == name:
                return e
        return None

    def count(self, request_type: str, name: str) -> int:
        e = self.entry(request_type, name)
        return 0 if e is None else int(e["num_requests"])

    def rows(self, request_type: str) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.stats if e["method"] == request_type}

    def total_failures(self) -> int:
        return sum(int(e["num_failures"]) for e in self.stats)

    def table(self) -> str:
        lines = [
            f"{e['method']:<7} {e['name']:<24} reqs={e['num_requests']:<6} "
            f"fails={e['num_failures']:<4} bytes={e['total_content_length']}"
            for e in self.stats
        ]
        lines += [f"FAILURE {f}" for f in self.failures]
        return "\n".join(lines)

    def explain(self) -> str:
        """What to print when an assertion fails: the stats, the failures and each log's tail."""
        parts = [self.table()]
        for name, text in self.logs.items():
            tail = "\n".join(text.splitlines()[-25:])
            parts.append(f"--- {name} (last lines)\n{tail}")
        return "\n".join(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _locust(args: Sequence[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=cwd,
        )
    finally:
        out.close()


@contextlib.contextmanager
def _reaped(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)


def run_distributed(
    tmp: Path,
    hosts: Sequence[str],
    echo: str,
    *,
    users: int = 4,
    run_time_s: int = 12,
    workers: int = 2,
    options: Sequence[str] = (),
) -> LocustResult:
    """Master + `workers` workers on loopback against `hosts`; returns the master's figures."""
    port = free_port()
    out = tmp / "locust"
    out.mkdir(exist_ok=True)
    master_log = out / "master.log"
    common = ["--loglevel", "INFO"]
    master_args = [
        "--master",
        "--master-bind-host",
        HOST,
        "--master-bind-port",
        str(port),
        "--expect-workers",
        str(workers),
        "--expect-workers-max-wait",
        "60",
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{run_time_s}s",
        "--stop-timeout",
        "5",
        "--only-summary",
        "--host",
        ",".join(hosts),
        "--chimney-echo",
        echo,
        "--csv",
        str(out / "run"),
        "--json-file",
        str(out / "stats"),  # Locust adds ".json"
        *common,
        *options,
    ]
    procs = [_locust(master_args, master_log, out)]
    logs = {"master": master_log}
    with _reaped(procs):
        for i in range(workers):
            log = out / f"worker{i}.log"
            worker_args = ["--worker", "--master-host", HOST, "--master-port", str(port), *common]
            procs.append(_locust(worker_args, log, out))
            logs[f"worker{i}"] = log
        try:
            rc = procs[0].wait(run_time_s + RUN_MARGIN_S)
        except subprocess.TimeoutExpired:
            rc = -1
        for p in procs[1:]:  # workers quit when the master does
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
    texts = {name: path.read_text(errors="replace") for name, path in logs.items()}
    stats_path = out / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else []
    failures_path = out / "run_failures.csv"
    failures: list[dict[str, str]] = []
    if failures_path.exists():
        with failures_path.open(newline="") as f:
            failures = list(csv.DictReader(f))
    result = LocustResult(rc, stats, failures, texts)
    assert rc != -1, "the Locust master did not exit in time\n" + result.explain()
    for i, p in enumerate(procs[1:]):
        assert p.returncode is not None, f"worker{i} did not quit\n" + result.explain()
    return result
