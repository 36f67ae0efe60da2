"""A run that fails for one reason says that reason, not a second one made up by how the soak
winds down or counts (report `_limits_verdict`): a slot whose task the wind-down cancelled is
counted by the bytes it carried, and a LIMIT refusal says whether a first connect or a reopen
was refused."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from chimney_client.soak import worker as worker_mod
from chimney_client.soak.conn import Conn
from tests.soak.test_slot_traffic import _worker

pytestmark = pytest.mark.soak


@pytest.mark.timeout(10)
async def test_a_slot_cancelled_at_the_wind_down_counts_the_bytes_it_carried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slot 7 carried a round trip during the hold, then its next one hung (a daemon that
    stopped answering it): the wind-down reports it (`close_timeout`) and cancels it. Before,
    the slot counted as carrying nothing, and the run failed a second time for `only 0 of 1
    connections carried traffic`."""
    monkeypatch.setattr(worker_mod, "WIND_DOWN_S", 0.2)
    w = _worker()
    w.cfg = dataclasses.replace(w.cfg, peers=(("127.0.0.1", 9),))
    hung = asyncio.Event()

    async def open_(rpc: object, slot: int, peer: int) -> Conn:
        return Conn(1, 1, slot, peer, time.monotonic())

    async def echo(rpc: object, conn: Conn) -> None:
        if conn.verified:
            hung.set()
            await asyncio.Event().wait()  # never answered
        conn.verified += 4096

    w.rpcs = [None]  # type: ignore[list-item]
    w.open = open_  # type: ignore[method-assign,assignment]
    w.echo = echo  # type: ignore[method-assign,assignment]
    w.think = lambda conn, s: asyncio.sleep(0)  # type: ignore[method-assign,assignment,return-value]
    w.tasks = [asyncio.create_task(w.run_slot(0, 7))]
    await hung.wait()
    w.stopping, w.stop_at = True, time.monotonic()
    await w.wind_down()
    assert "close_timeout" in w.errors, w.errors  # the run's own failure
    final = w.final()
    assert final["slots_with_traffic"] == 1, final
