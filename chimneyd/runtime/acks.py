"""Acknowledgement news for the sockets that wait for it, polled in one callback; and the news
of a death for the sockets nobody reads, polled in another.

A send completes only when the peer has acknowledged its bytes (spec §4.1); the kernel knows
(`SIOCOUTQ`), so one callback polls every socket that waits, and tells its owner when its
acknowledged offset moves.

A peer's RST is told (spec §5.1) when uvloop's read meets it; a socket nobody reads (reading
paused for back-pressure, or after the peer's FIN) would never tell it. Back-pressure pauses the
reading of data, not the news of the connection's death (design): those sockets sit in one
`select.poll` set, asked every `death_interval` in one poll(2) for the events the kernel always
reports (POLLERR, POLLHUP), and only a socket with one is looked at further.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .wire import WireSocket


class AckWatcher:
    """Polls the sockets that wait for acknowledgements, all in one callback.

    First check on the next loop turn (loopback ACKs are usually back by then). Again on the
    next turn while news keeps coming (a peer reading a stream), or for `spin` seconds after a
    socket starts waiting (a peer that answers one send at a time); after that, once a check
    finds nothing new, after `interval`. uvloop's timers count whole milliseconds and round a
    shorter delay to none, so a poll every turn with no end to it is a busy loop: it burned a
    core while a peer did not read (and took the core a sink on the same CPU needs).

    A poll in that while which finds nothing new gives the CPU up (`yield_cpu`, sched_yield)
    before the next turn: a peer on the same core cannot read, and so acknowledge, while we
    spin. On an otherwise idle core it returns at once. A yield that kept us off the CPU
    longer than `yield_limit` most likely gave it to something that does not sleep (a
    CPU-bound process on our core takes a whole time slice: 4 ms here): no yields then for
    `yield_backoff`, twice as long after each such yield in a row, up to `yield_backoff_max`.

    A socket gets a `WireAcked` event when its acknowledged offset (or FIN state) differs from
    what it last reported, so an owner that asks to watch after its bytes were already
    acknowledged still hears of it.

    A socket that waits longer than `stall` is asked whether the kernel still has a connection:
    after the peer's FIN the transport no longer reads, so an RST that answers our later data
    would otherwise go unnoticed and the data would wait for an ACK for ever.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval: float = 0.001,
        stall: float = 0.05,
        spin: float = 0.0005,
        yield_cpu: Callable[[], None] = os.sched_yield,
        monotonic: Callable[[], float] = time.monotonic,
        yield_limit: float = 0.001,
        yield_backoff: float = 0.01,
        yield_backoff_max: float = 1.0,
        death_interval: float = 0.1,
    ) -> None:
        self.loop = loop
        self.interval = interval
        self.stall = stall
        self.spin = spin
        self.yield_cpu = yield_cpu
        self.monotonic = monotonic  # uvloop's own clock counts whole milliseconds
        self.yield_limit = yield_limit
        self.yield_backoff = yield_backoff
        self.yield_backoff_max = yield_backoff_max
        self.backoff = 0.0  # after the last yield: none if it was short
        # polls on every turn until then
        self.spin_until = 0.0
        self.no_yield_until = 0.0
        self.waiting: dict[WireSocket, float] = {}
        self._scheduled = False
        self.held: dict[WireSocket, float] = {}  # stall_peer fault: no ack news until then
        # the sockets nobody reads, by fd, and the same fds in a poll set asked for nothing:
        # poll(2) still reports POLLERR (an RST, a timeout) and POLLHUP (state CLOSE, or both
        # halves shut). Cost per such socket: a dict entry here and in the set, and one
        # tcp_poll in the kernel each `death_interval` (~0.1 µs); no timer of its own, no
        # syscall while nothing happens to it.
        self.death_interval = death_interval
        self.unread: dict[int, WireSocket] = {}
        self._unread_poll = select.poll()
        self._death_timer: asyncio.TimerHandle | None = None

    def add(self, wire: WireSocket) -> None:
        if wire not in self.waiting:
            self.waiting[wire] = self.loop.time()
            self.spin_until = self.monotonic() + self.spin
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._poll)

    def discard(self, wire: WireSocket) -> None:
        self.waiting.pop(wire, None)
        self.held.pop(wire, None)
        self.reading(wire)

    def not_reading(self, wire: WireSocket) -> None:
        """`wire` reads no more (paused, or after the peer's FIN): watch it for its death."""
        fd = wire.fd
        if fd < 0 or self.unread.get(fd) is wire:
            return
        # a socket gone before without a word would have left its fd here: the new one
        # takes its place (register modifies an fd already in the set)
        self.unread[fd] = wire
        self._unread_poll.register(fd, 0)
        if self._death_timer is None:
            self._death_timer = self.loop.call_later(self.death_interval, self._scan_unread)

    def reading(self, wire: WireSocket) -> None:
        """`wire` reads again, or is gone: uvloop's read tells its death now, or nobody asks."""
        fd = wire.fd
        if self.unread.get(fd) is wire:
            self._forget_unread(fd)

    def _forget_unread(self, fd: int) -> None:
        del self.unread[fd]
        self._unread_poll.unregister(fd)

    def _scan_unread(self) -> None:
        """One poll(2) over every socket nobody reads; a socket with POLLERR or POLLHUP is
        asked whether the kernel still has its connection (`kernel_alive`)."""
        self._death_timer = None
        dead = []
        for fd, events in self._unread_poll.poll(0):
            wire = self.unread.get(fd)
            if wire is None or wire.closed:
                if wire is not None:
                    self._forget_unread(fd)
                continue
            if not wire.kernel_alive():
                self._forget_unread(fd)
                dead.append(wire)
            elif events & (select.POLLHUP | select.POLLNVAL):
                # both halves shut gracefully (or CLOSE with no error): HUP stays set for
                # good, so asking again each time would cost syscalls for nothing. What can
                # still come (an RST answering our FIN) the acknowledgement watch finds.
                # NVAL: the fd is no longer open, nothing to watch.
                self._forget_unread(fd)
        for wire in dead:
            self.waiting.pop(wire, None)
            self.held.pop(wire, None)
            wire.lost_by_kernel()
        if self.unread:
            self._death_timer = self.loop.call_later(self.death_interval, self._scan_unread)

    def _poll(self) -> None:
        self._scheduled = False
        now = self.loop.time()
        closed = []
        moved: list[tuple[WireSocket, int, bool]] = []
        dead = []
        for wire, since in self.waiting.items():
            if wire.closed:
                closed.append(wire)
                continue
            until = self.held.get(wire)
            if until is not None:
                if now < until:
                    continue
                del self.held[wire]
            # what the kernel says is read once and handed on: each reading is a syscall
            acked, fin = wire.ack_state()
            if acked != wire.notified_acked or fin != wire.notified_fin:
                moved.append((wire, acked, fin))
            elif now - since > self.stall:
                self.waiting[wire] = now
                if not wire.kernel_alive():
                    dead.append(wire)
        for wire in closed:
            del self.waiting[wire]
        for wire, acked, fin in moved:
            del self.waiting[wire]
            wire.notify_acked(acked, fin)
        for wire in dead:
            self.waiting.pop(wire, None)
            wire.lost_by_kernel()
        if self.waiting:
            self._scheduled = True
            if moved:
                self.loop.call_soon(self._poll)  # more is likely on its way
            elif (t := self.monotonic()) < self.spin_until:
                if t >= self.no_yield_until:
                    self._yield(t)
                self.loop.call_soon(self._poll)
            else:
                self.loop.call_later(self.interval, self._poll)

    def _yield(self, t: float) -> None:
        """Nothing yet: a peer on this core (a sink, a client) runs first. One core shared
        with the bench's sink: bulk sends 1.70 -> 1.97 GB/s (medians of 77 and 98 runs). With
        a CPU-bound process on the core, every yield lost a time slice (one send at a time
        fell from 0.11 to 4.0 ms): long ones stop the yields for a while, and a short one ends
        that. The bench's sink, reading a whole write, once in ~1,000 yields takes over 1 ms:
        a backoff of 1 s there cost most of the gain, hence one that starts short."""
        self.yield_cpu()
        took = self.monotonic() - t
        if took > self.yield_limit:
            self.backoff = min(max(2 * self.backoff, self.yield_backoff), self.yield_backoff_max)
            self.no_yield_until = t + took + self.backoff
        else:
            self.backoff = 0.0
