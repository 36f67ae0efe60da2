"""`--parent-pid` of the daemon and of the soak's echo peer: the kernel wakes the watch when the
parent exits (a pidfd), instead of it looking every PARENT_CHECK_S. Each test sets that period
to an hour, so a watch that polls would not see the exit within the test's bound and the test
fails (the bound is a limit on a hang, not a timing)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from chimney_client.soak import echo_peer
from chimneyd import daemon

HOUR = 3600.0
BOUND_S = 20.0


@pytest.fixture
def parent(monkeypatch: pytest.MonkeyPatch) -> Iterator[subprocess.Popen[bytes]]:
    """A process that plays our parent: os.getppid() names it while it runs, and init once it
    has exited (as re-parenting would)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    real_getppid = os.getppid

    def getppid() -> int:
        return proc.pid if proc.poll() is None else 1

    monkeypatch.setattr(os, "getppid", getppid)
    try:
        yield proc
    finally:
        monkeypatch.setattr(os, "getppid", real_getppid)
        proc.kill()
        proc.wait()


async def test_the_echo_peer_is_woken_when_its_parent_exits(
    parent: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(echo_peer, "PARENT_CHECK_S", HOUR)
    stop = asyncio.Event()
    watch = asyncio.create_task(echo_peer._watch_parent(parent.pid, stop))
    await asyncio.sleep(0.2)
    assert not stop.is_set()  # the parent lives
    parent.kill()
    await asyncio.wait_for(watch, BOUND_S)
    assert stop.is_set()


def test_the_daemon_is_woken_when_its_parent_exits(
    parent: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "PARENT_CHECK_S", HOUR)
    signalled = threading.Event()
    sent: list[tuple[int, Any]] = []

    real_kill = os.kill

    def kill(pid: int, sig: Any) -> None:  # our own SIGTERM is recorded, not sent
        if pid == parent.pid:
            real_kill(pid, sig)
            return
        sent.append((pid, sig))
        signalled.set()

    monkeypatch.setattr(os, "kill", kill)
    daemon.stop_with_parent(parent.pid)
    assert not signalled.wait(0.2)  # the parent lives
    parent.kill()
    assert signalled.wait(BOUND_S), "the watch did not see its parent exit"
    assert sent == [(os.getpid(), signal.SIGTERM)]
