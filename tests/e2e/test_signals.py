"""The signals a service manager and logrotate send, at the edges of the daemon's life: SIGHUP
(reopen the log) while it starts, and SIGTERM or SIGHUP again while it exits (a daemon of
shards, whose shards start and restart: test_shard_signals.py). Outside its
loop's life the daemon ignores them; their default action would end it (exit status -1 or
-15 instead of its own, a reload that kills, a clean stop reported failed)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import HOST, Daemon, LineReader, popen_chimneyd

CONFIG = "[rpc]\nshutdown_deadline_s = 3.0\n"


@pytest.mark.parametrize("late", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("shards", [1, 2], ids=["single", "sharded"])
def test_signals_after_the_stop_began_change_nothing_to_the_end(
    spawn_daemon: Any, shards: int, late: signal.Signals
) -> None:
    """SIGTERM, then `late` sent again and again until the process is gone: each is ignored
    (or, while the loop runs, answered) up to the process's very end. Once the loop had
    closed, one met the default action, and a daemon that had stopped cleanly died of it."""
    d: Daemon = spawn_daemon(CONFIG, args=("--shards", str(shards)))
    assert d.client().ping() == "pong"
    d.proc.send_signal(signal.SIGTERM)
    sent = 0
    give_up = time.monotonic() + 60
    while d.proc.poll() is None and time.monotonic() < give_up:
        with contextlib.suppress(ProcessLookupError):
            d.proc.send_signal(late)
            sent += 1
        time.sleep(0.002)
    assert d.proc.poll() is not None, "the daemon did not stop"
    rc = d.stop()  # gone already: collects its output and status
    assert rc == 0, f"exit status {rc} after {sent} more {late.name}\n{d.log_tail()}"
    assert d.events_named("supervisor_stopped" if shards > 1 else "daemon_stopped"), d.log_tail()


def _signal_state(pid: int, sig: signal.Signals) -> str:
    """ "ignored", "caught" or "default": the process's disposition of `sig`, from /proc."""
    masks = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("SigIgn", "SigCgt"):
            masks[key] = int(value.strip(), 16)
    bit = 1 << (sig - 1)
    if masks.get("SigIgn", 0) & bit:
        return "ignored"
    return "caught" if masks.get("SigCgt", 0) & bit else "default"


@pytest.mark.timeout(60)
def test_a_reload_before_the_loop_answers_it_is_ignored(tmp_path: Path) -> None:
    """From the daemon's entry point on, SIGHUP is ignored until its loop answers it (then it
    reopens the log): a service manager counts the daemon started once it runs, and its
    reload (or logrotate's postrotate) may come at once. Its default action ends the process.
    The daemon is watched through /proc from its start: SIGHUP must be ignored before it is
    caught, and one sent then must leave the daemon starting up."""
    proc = popen_chimneyd("--listen", f"{HOST}:0", stderr=subprocess.DEVNULL)
    try:
        out = LineReader(proc.stdout)
        seen = []
        give_up = time.monotonic() + 40
        while proc.poll() is None and time.monotonic() < give_up:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                state = _signal_state(proc.pid, signal.SIGHUP)
                if not seen or seen[-1] != state:
                    seen.append(state)
                if state != "default":
                    break
            time.sleep(0.0005)
        assert seen and seen[-1] == "ignored", f"SIGHUP's disposition went {seen}"
        proc.send_signal(signal.SIGHUP)
        try:
            out.wait_for("chimneyd listening on", 40.0)
        except EOFError:
            pytest.fail(f"a SIGHUP while it started ended it: exit status {proc.wait(20)}")
        assert _signal_state(proc.pid, signal.SIGHUP) == "caught"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise
