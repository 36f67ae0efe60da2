"""The NIC's real socket: acknowledgement reports from the kernel (runtime/wire.py, and the
watcher that polls for them, runtime/acks.py).

A graceful disconnect completes when the peer has acknowledged our FIN. `write_eof` only asks for
the FIN (libuv sends it on a later loop turn), so "nothing left in the send queue" right after it
must not read as "FIN acknowledged": a watcher that reported so once would never report the real
acknowledgement, and the disconnect would wait for ever.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

from chimneyd.drivers.wire import SocketOption
from chimneyd.runtime.acks import AckWatcher
from chimneyd.runtime.wire import WireSocket
from tests.integration.support import eventually


class Peer(asyncio.Protocol):
    """Answers our FIN with its own, as the echo peer does."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def eof_received(self) -> bool:
        self.transport.close()
        return False


class Owner:
    """Stands for the layer that carries the connection: it re-arms the watcher while it still
    waits for the FIN's acknowledgement, exactly as the target's `WireAcked` does."""

    def __init__(self) -> None:
        self.acked_events: list[int] = []
        self.fin_done = asyncio.Event()
        self.wire: WireSocket | None = None

    def WireAcked(self, ctx: Any, acked: int) -> None:
        assert self.wire is not None
        self.acked_events.append(acked)
        if self.wire.fin_acked():
            self.fin_done.set()
        else:
            self.wire.watch_acks()

    def WireData(self, ctx: Any, offset: int, data: bytes) -> None:
        pass

    def WireEof(self, ctx: Any, offset: int) -> None:
        pass

    def WireReset(self, ctx: Any, reason: str) -> None:
        pass


async def connected_wire(
    owner: Owner, host: str = "127.0.0.1"
) -> tuple[WireSocket, asyncio.AbstractServer]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Peer, host, 0)
    port = server.sockets[0].getsockname()[1]
    watcher = AckWatcher(loop)

    def post(layer: Any, method: Any, args: tuple[Any, ...]) -> None:
        loop.call_soon(method, *args)  # the layer's inbox, one hop later

    _, wire = await loop.create_connection(lambda: WireSocket(post, watcher), host, port)
    wire.set_home(owner, "ctx")
    owner.wire = wire
    return wire, server


@pytest.mark.asyncio
@pytest.mark.parametrize("payload", [b"", b"x" * 100_000])
async def test_fin_is_not_acknowledged_before_it_is_sent(payload: bytes) -> None:
    owner = Owner()
    wire, server = await connected_wire(owner)
    try:
        if payload:
            wire.write([memoryview(payload)])
        wire.write_eof()
        # same loop turn: libuv has not called shutdown(2) yet
        assert not wire.fin_acked()
        assert wire.acked() <= len(payload)
        wire.watch_acks()
        await asyncio.wait_for(owner.fin_done.wait(), 5.0)
        assert wire.fin_acked()
        assert wire.acked() == len(payload)
        assert owner.acked_events[-1] == len(payload)
    finally:
        wire.close()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_send_room_reads_what_tcp_info_reads(host: str) -> None:
    """The NIC sizes its send backlog from `send_room` (spec §5.3): the congestion window and
    send buffer `tcp_info` reads too, on either family; nothing once the socket is gone. The
    socket options go through the same view of the fd."""
    owner = Owner()
    wire, server = await connected_wire(owner, host)
    try:
        sent = 300_000
        wire.write([memoryview(b"x" * sent)])
        # idle once all is acknowledged: the window stops moving
        await eventually(lambda: wire.acked() == sent, "every byte acknowledged")
        info = wire.tcp_info()
        cwnd_bytes, snd_buf = wire.send_room()
        assert info.snd_buf is not None and snd_buf == info.snd_buf > 0
        assert cwnd_bytes == info.snd_cwnd * info.snd_mss > 0
        option = SocketOption.IPV6_UNICAST_HOPS if ":" in host else SocketOption.IP_TTL
        assert wire.set_option(option, 7)
    finally:
        wire.close()
        server.close()
        await server.wait_closed()
    assert wire.send_room() == (0, 0)


@pytest.mark.asyncio
async def test_many_disconnects_all_see_their_fin_acknowledged() -> None:
    """Many connections closing in the same loop turn: each one hears its FIN acknowledged."""
    owners = [Owner() for _ in range(50)]
    pairs = [await connected_wire(o) for o in owners]
    try:
        for wire, _ in pairs:
            wire.write_eof()
            wire.watch_acks()
        await asyncio.wait_for(asyncio.gather(*(o.fin_done.wait() for o in owners)), 10.0)
    finally:
        for wire, server in pairs:
            wire.close()
            server.close()
            await server.wait_closed()


# ================================================================================================
# how often the watcher asks the kernel (runtime/acks.py)
# ================================================================================================
# It must not poll on every loop turn while nothing moves: under uvloop a `call_later` under
# 1 ms is a `call_soon`, and the daemon then burned a whole core for as long as a peer did not
# read. It must not leave a fresh wait to a 1 ms timer either: one send at a time would then
# wait about a millisecond for news the kernel has in microseconds.
TURNS = 20_000  # loop turns counted while a send waits


class CountingLoop:
    """The running loop as the watcher sees it, counting the polls it schedules (the watcher
    holds it as its loop; no method of a compiled class is replaced)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.polls = 0

    def time(self) -> float:
        return self.loop.time()

    def call_soon(self, fn: Callable[[], None]) -> asyncio.Handle:
        self.polls += 1
        return self.loop.call_soon(fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> asyncio.TimerHandle:
        self.polls += 1
        return self.loop.call_later(delay, fn)


@pytest.mark.asyncio
async def test_a_peer_that_does_not_read_is_not_polled_every_loop_turn() -> None:
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    counter = CountingLoop(loop)
    watcher = AckWatcher(counter)  # type: ignore[arg-type]
    owner = Owner()

    def post(layer: Any, method: Any, args: tuple[Any, ...]) -> None:
        loop.call_soon(method, *args)

    _, wire = await loop.create_connection(
        lambda: WireSocket(post, watcher), "127.0.0.1", listener.getsockname()[1]
    )
    peer, _ = listener.accept()  # never reads: the send queue stays full
    try:
        wire.set_home(owner, "ctx")
        owner.wire = wire
        wire.write([memoryview(bytes(16 << 20))])
        wire.watch_acks()
        for _ in range(200):  # until the window is full and nothing moves
            await asyncio.sleep(0.001)
        before = counter.polls
        for _ in range(TURNS):
            await asyncio.sleep(0)  # one loop turn each
        during = counter.polls - before
        assert wire in watcher.waiting, "the send should still wait: the peer reads nothing"
        # polled on every turn, `during` would be about TURNS; on a 1 ms timer it is the
        # milliseconds those turns took
        assert during < TURNS // 4, f"{during} polls in {TURNS} loop turns"
        peer.setblocking(False)
        got = 0
        while got < wire.bytes_written:  # now the peer reads: every byte is acknowledged
            try:
                got += len(peer.recv(1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        for _ in range(1000):
            if owner.acked_events and owner.acked_events[-1] == wire.bytes_written:
                break
            await asyncio.sleep(0.001)
        assert owner.acked_events[-1] == wire.bytes_written
    finally:
        wire.close()
        peer.close()
        listener.close()


class RecordingLoop:
    """The two ways the watcher schedules its next poll, recorded, not run."""

    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []
        self.later: list[float] = []

    def time(self) -> float:
        return 0.0

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.soon.append(fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.later.append(delay)


def _waiting(watcher: AckWatcher) -> WireSocket:
    """A socket without a transport that starts waiting for acknowledgements."""
    wire = WireSocket(lambda layer, method, args: None, watcher)
    wire.set_home(Owner(), "ctx")
    watcher.add(wire)
    return wire


def test_news_is_asked_for_again_next_turn_and_silence_after_a_millisecond() -> None:
    loop = RecordingLoop()
    watcher = AckWatcher(loop, spin=0.0)  # type: ignore[arg-type]  # no turns after a new wait
    told: list[tuple[Any, int]] = []

    def post(layer: Any, method: Any, args: tuple[Any, ...]) -> None:
        told.append(args)  # (ctx, acked): the WireAcked the owner would get

    # sockets without a transport: `acked()` gives what the kernel told last
    flowing, stuck = WireSocket(post, watcher), WireSocket(post, watcher)
    flowing.set_home(Owner(), "flowing")
    stuck.set_home(Owner(), "stuck")
    watcher.add(flowing)
    watcher.add(stuck)
    assert len(loop.soon) == 1  # the first check: the next loop turn
    flowing._acked_seen = 100  # the peer acknowledged 100 bytes
    loop.soon.pop()()
    assert told == [("flowing", 100)]
    assert len(loop.soon) == 1 and loop.later == []  # news came: next turn again
    loop.soon.pop()()
    assert loop.soon == [] and loop.later == [watcher.interval]  # nothing new: a timer
    assert told == [("flowing", 100)]
    # uvloop rounds a delay to whole milliseconds: under 1 ms it would be the next turn
    assert round(watcher.interval * 1000) >= 1


def test_a_new_wait_is_polled_every_turn_for_a_while() -> None:
    """A peer answering one send at a time acknowledges within a fraction of a millisecond: the
    turns right after a socket starts waiting are polled, not left to the timer. Each of those
    polls that finds nothing gives the CPU up first, so a peer on the same core can run."""
    loop = RecordingLoop()
    yields: list[int] = []
    watcher = AckWatcher(
        loop,  # type: ignore[arg-type]
        spin=60.0,  # longer than this test
        yield_cpu=lambda: yields.append(len(loop.soon)),
    )
    wire = _waiting(watcher)
    for turn in range(3):
        loop.soon.pop()()  # nothing new, but the wait is new: the next turn again
        assert len(loop.soon) == 1 and loop.later == []
        assert yields == [0] * (turn + 1)  # yielded before the next poll was asked for
    wire._acked_seen = 10  # news: the owner is told, and the socket no longer waits
    loop.soon.pop()()
    assert loop.soon == [] and loop.later == [] and len(yields) == 3
    watcher.add(wire)  # waits again (a new send)
    watcher.spin_until = 0.0  # the while is over
    loop.soon.pop()()
    assert loop.soon == [] and loop.later == [watcher.interval]
    assert len(yields) == 3  # on the timer: nothing to give up


def test_a_yield_that_loses_a_time_slice_stops_the_yields_for_a_while() -> None:
    """A CPU-bound process on our core takes the whole slice a yield offers it: after such a
    yield the spin polls without yielding for a backoff, twice as long after each one in a
    row; a short yield ends it."""
    loop = RecordingLoop()
    now = [100.0]
    yields: list[float] = []
    lost = [0.004]  # what the next yield keeps us off the CPU

    def yield_cpu() -> None:
        yields.append(now[0])
        now[0] += lost[0]

    watcher = AckWatcher(
        loop,  # type: ignore[arg-type]
        spin=60.0,
        yield_cpu=yield_cpu,
        monotonic=lambda: now[0],
        yield_limit=0.001,
        yield_backoff=0.01,
        yield_backoff_max=0.03,
    )
    _waiting(watcher)  # the watcher holds it while it waits

    def turns_without_a_yield(seconds: float) -> None:
        """Empty polls over `seconds` (in steps of 1 ms): none of them yields."""
        before = len(yields)
        end = now[0] + seconds
        while now[0] + 0.001 < end:
            now[0] += 0.001
            loop.soon.pop()()
            assert len(loop.soon) == 1 and len(yields) == before

    for backoff in (0.01, 0.02, 0.03, 0.03):  # doubled each time, up to the most
        loop.soon.pop()()  # yields, and loses 4 ms
        turns_without_a_yield(backoff)
        now[0] += 0.002  # the backoff is over
    assert len(yields) == 4
    lost[0] = 0.0001  # a peer that reads and sleeps again: short yields
    loop.soon.pop()()
    loop.soon.pop()()  # that one was short: the next empty poll yields again
    assert len(yields) == 6
    lost[0] = 0.004
    loop.soon.pop()()  # a long one again: the backoff starts from its shortest
    turns_without_a_yield(0.01)
    now[0] += 0.002
    loop.soon.pop()()
    assert len(yields) == 8
