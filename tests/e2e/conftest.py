"""End-to-end fixtures (see support.py): daemons as subprocesses, loopback peers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chimney_client import PeerServer, start_peer
from tests.e2e.support import HOST, Daemon, start_daemon

SpawnDaemon = Callable[..., Daemon]


@contextlib.contextmanager
def daemon_factory(tmp_path: Path) -> Iterator[SpawnDaemon]:
    daemons: list[Daemon] = []

    def spawn(config: str | None = None, **kw: Any) -> Daemon:
        d = start_daemon(tmp_path, config, **kw)
        daemons.append(d)
        return d

    try:
        yield spawn
        for d in daemons:
            if not d.stopped and d.alive():
                d.check_final_stats()
            if not d.stopped:
                d.assert_clean_stop()
    finally:
        for d in daemons:
            d.kill()


@pytest.fixture
def spawn_daemon(tmp_path: Path) -> Iterator[SpawnDaemon]:
    """Start daemons (optionally with a TOML config); each is stopped and checked at teardown."""
    with daemon_factory(tmp_path) as spawn:
        yield spawn


@pytest.fixture
def daemon(spawn_daemon: SpawnDaemon) -> Daemon:
    return spawn_daemon()


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon shared by a module's tests (bad input: each test checks others still work)."""
    with daemon_factory(tmp_path_factory.mktemp("chimneyd")) as spawn:
        yield spawn("[rpc]\nmax_message_bytes = 1048576\n")


@pytest.fixture
async def echo_peer() -> AsyncIterator[PeerServer]:
    peer = await start_peer("echo", HOST, 0)
    try:
        yield peer
    finally:
        await peer.close()
