"""Support for the web view's tests: a daemon with `--web` and `--metrics` on free loopback
ports and a real `chimney-peer echo`, and where screenshots and measurements go
(`tests/web/screenshots/`, kept out of git)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chimney_client import Client
from tests.e2e.support import Daemon, peer_process, start_daemon
from tests.e2e.test_shards import assert_clean_stop as shards_clean_stop
from tests.e2e.test_shards import shard_pids

SHOTS = Path(__file__).resolve().parent / "screenshots"


@dataclass
class WebDaemon:
    daemon: Daemon
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    metrics_url: str  # http://127.0.0.1:PORT/metrics on its own port
    peer_port: int

    def client(self) -> Client:
        return self.daemon.client()


def _line_after(daemon: Daemon, prefix: str) -> str:
    for line in daemon.stdout.lines:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    # a daemon of several shards prints its HTTP addresses once shard 0 is listening
    return daemon.stdout.wait_for(prefix, 30)[len(prefix) :].strip()


@contextlib.contextmanager
def web_daemon(
    tmp_path: Path, config: str | None = None, args: tuple[str, ...] = (), **kw: Any
) -> Iterator[WebDaemon]:
    """A daemon serving the web view and /metrics, and an echo peer; checked and stopped after."""
    args = ("--web", "127.0.0.1:0", "--metrics", "127.0.0.1:0", *args)
    with peer_process("echo") as (_, peer_port):
        d = start_daemon(tmp_path, config, args=args, **kw)
        try:
            web = _line_after(d, "chimneyd web view on ").rstrip("/")
            metrics = _line_after(d, "chimneyd metrics on ")
            yield WebDaemon(d, web, metrics, peer_port)
            if d.alive():
                d.check_final_stats()
            if "--shards" in args:
                shards_clean_stop(d)
            else:
                d.assert_clean_stop()
        finally:
            d.kill()
            for pid in shard_pids(d):  # none unless sharded; each shard is a process
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def screenshot(page: Any, name: str, full_page: bool = True) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def record(name: str, values: dict[str, Any]) -> None:
    """Measurements (never asserted) next to the screenshots, and on the test's output."""
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / "measurements.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = values
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\n{name}: {values}")
