"""An admin's `events.subscribe "*"` on a daemon of several shards: rpc-contract says it answers
`true`, *then* notifications follow. In one process the subscription is in effect when it
answers; sharded, the answer waits until every running shard forwards its events, so no event
of another shard after `true` is lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from chimney_client import PeerServer
from tests.e2e.support import wait_until
from tests.e2e.test_shards import ADMIN, closing, on_shards, sharded

CONFIG = f'[rpc]\nadmin_token = "{ADMIN}"\n'


async def _now(value: bool) -> bool:
    return value


async def test_an_event_of_another_shard_right_after_subscribe_is_heard(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    """The supervisor is held (SIGSTOP) while the admin subscribes, which widens the window
    between the subscription in the admin's shard and the other shard's forwarding (on a
    loaded machine it is the supervisor's scheduling delay). `true` must not come before the
    other shard forwards: a connection of the other shard closed once `true` has come is heard
    as `closed`."""
    with sharded(tmp_path, CONFIG, admin_token=ADMIN) as d:
        async with closing(await on_shards(d, token=ADMIN)) as admins:
            admin, other = admins[0], admins[1]  # `other`: a client of shard 1
            conn = await other.tcp_connect("127.0.0.1", echo_peer.port)
            heard: list[tuple[int, str]] = []
            admin.on_tcp_event(lambda cid, ev, info: heard.append((cid, ev)))
            closed = False
            os.kill(d.pid, signal.SIGSTOP)  # the supervisor only: the shards serve on
            try:
                sub = asyncio.ensure_future(admin.events_subscribe("*"))
                await asyncio.wait({sub}, timeout=0.5)
                if sub.done():  # answered while shard 1 cannot have been told
                    await other.tcp_close(conn)
                    closed = True
                    await asyncio.sleep(0.3)
            finally:
                os.kill(d.pid, signal.SIGCONT)
            assert await sub is True
            if not closed:
                await other.tcp_close(conn)
            with contextlib.suppress(AssertionError):
                await wait_until(lambda: _now((conn, "closed") in heard), 5)
            assert (conn, "closed") in heard, heard
