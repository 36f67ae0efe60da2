"""An idle engine gives back the tables its emptied dicts and sets grew to, in place."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref

import uvloop

from chimneyd.runtime.memory import release_empty_containers


class Holder:
    __slots__ = ("busy", "conns", "ids", "name")

    def __init__(self) -> None:
        self.conns: dict[int, object] = {i: object() for i in range(10_000)}
        self.ids: set[int] = set(range(10_000))
        self.busy: dict[int, int] = {1: 1}
        self.name = "nic0"


def test_emptied_containers_shrink_and_keep_their_identity() -> None:
    h = Holder()
    alias_conns, alias_ids = h.conns, h.ids
    for i in range(10_000):
        del h.conns[i]
        h.ids.discard(i)
    grown = sys.getsizeof(h.conns), sys.getsizeof(h.ids)
    assert release_empty_containers([h, None]) == 2
    assert h.conns is alias_conns and h.ids is alias_ids  # every other reference stays valid
    assert sys.getsizeof(h.conns) < grown[0] // 10
    assert sys.getsizeof(h.ids) < grown[1] // 10
    assert h.busy == {1: 1}  # a container still in use is left alone
    h.conns[5] = h
    assert alias_conns[5] is h


def test_weak_containers_shrink() -> None:
    class Item:
        pass

    items = [Item() for _ in range(10_000)]
    by_fd: weakref.WeakValueDictionary[int, Item] = weakref.WeakValueDictionary(enumerate(items))
    grown = sys.getsizeof(by_fd.data)
    del items
    h = Holder()
    h.conns = by_fd  # type: ignore[assignment]
    assert release_empty_containers([h]) >= 1
    assert sys.getsizeof(by_fd.data) < grown // 10


def test_uvloop_transport_map_shrinks_after_many_sockets() -> None:
    """uvloop keeps its transports by fd in a weak dictionary that no Python name reaches; the
    loop itself is the holder, and what it references is searched."""

    async def churn(n: int) -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transports = []
        for _ in range(n):
            tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            transports.append(tr)
        for tr in transports:
            tr.abort()
        server.close()
        await server.wait_closed()
        del transports, tr
        for _ in range(3):
            await asyncio.sleep(0.05)
        gc.collect()
        weak_maps = [
            o for o in gc.get_referents(loop) if isinstance(o, weakref.WeakValueDictionary)
        ]
        grown = sum(sys.getsizeof(w.data) for w in weak_maps)
        release_empty_containers([loop])
        return grown, sum(sys.getsizeof(w.data) for w in weak_maps)

    grown, after = uvloop.run(churn(300))
    assert grown > 8_000  # the map did grow with the sockets
    assert after < grown // 4
