"""The in-memory WirePort and the manual clock behave as the real socket and loop timers do."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.drivers.tcp import offset_of, seq
from chimneyd.drivers.wire import WirePort
from chimneyd.ndis.broker import Layer, Ndis
from chimneyd.testing import ManualClock, MemoryWire, RecordingScheduler, WireDirectory


class Owner(Layer):
    """A layer that records the wire events delivered to it."""

    def __init__(self, name: str, ndis: Ndis) -> None:
        super().__init__(name, ndis)
        self.events: list[tuple[str, Any, tuple[Any, ...]]] = []

    def WireData(self, ctx: Any, offset: int, data: bytes) -> None:
        self.events.append(("WireData", ctx, (offset, data)))

    def WireEof(self, ctx: Any, offset: int) -> None:
        self.events.append(("WireEof", ctx, (offset,)))

    def WireReset(self, ctx: Any, reason: str) -> None:
        self.events.append(("WireReset", ctx, (reason,)))

    def WireAcked(self, ctx: Any, acked: int) -> None:
        self.events.append(("WireAcked", ctx, (acked,)))


def _setup() -> tuple[RecordingScheduler, MemoryWire, Owner, Owner]:
    scheduler = RecordingScheduler()
    ndis = Ndis(clock=lambda: 0, deliver=scheduler)
    host, nic = Owner("host", ndis), Owner("nic", ndis)
    wire = MemoryWire(ndis.post)
    wire.set_home(host, "tcb")
    return scheduler, wire, host, nic


def test_it_is_a_wireport() -> None:
    _, wire, _, _ = _setup()
    port: WirePort = wire  # mypy checks the protocol; this checks the attributes exist
    assert port.isn != port.irs and port.bytes_written == port.bytes_read == 0


def test_events_go_to_the_owner_through_the_scheduler_not_at_once() -> None:
    scheduler, wire, host, nic = _setup()
    wire.peer_send(b"abc")
    assert host.events == []  # posted, not called
    scheduler.run()
    assert host.events == [("WireData", "tcb", (0, b"abc"))]
    wire.set_owner(nic, "ctx")
    wire.peer_send(b"de")
    wire.peer_fin()
    scheduler.run()
    assert nic.events == [("WireData", "ctx", (3, b"de")), ("WireEof", "ctx", (5,))]
    assert wire.bytes_read == 5 and wire.eof_seen
    wire.set_owner(None, None)  # back home
    assert wire.owner is host and wire.owner_ctx == "tcb"
    assert [d.handler for d in scheduler.log] == ["WireData", "WireData", "WireEof"]


def test_events_before_any_owner_wait_for_one() -> None:
    scheduler = RecordingScheduler()
    ndis = Ndis(clock=lambda: 0, deliver=scheduler)
    wire = MemoryWire(ndis.post)
    wire.peer_send(b"early")
    owner = Owner("host", ndis)
    wire.set_home(owner, 1)
    scheduler.run()
    assert owner.events == [("WireData", 1, (0, b"early"))]


def test_sends_are_acknowledged_only_when_the_test_says() -> None:
    _, wire, _, _ = _setup()
    wire.write([memoryview(b"hello"), memoryview(b" world")])
    assert wire.bytes_written == 11 and wire.peer_received == b"hello world"
    assert wire.acked() == 0 and wire.unacked == 11 and wire.tcp_info().unacked == 11
    wire.ack(5)
    assert wire.acked() == 5
    with pytest.raises(ValueError):
        wire.ack(4)  # acknowledgements never go backwards
    with pytest.raises(ValueError):
        wire.ack(12)  # nor past what was written
    wire.ack()
    assert wire.acked() == 11 and not wire.fin_acked()


def test_watch_acks_gives_one_event_when_the_ack_moves() -> None:
    scheduler, wire, host, _ = _setup()
    wire.write([memoryview(b"x" * 10)])
    wire.watch_acks()
    scheduler.run()
    assert host.events == []  # nothing moved yet
    wire.ack(4)
    wire.ack(6)  # a second move with no new watch: no second event
    scheduler.run()
    assert host.events == [("WireAcked", "tcb", (4,))]
    wire.watch_acks()  # it moved since the last report: at once
    scheduler.run()
    assert host.events[-1] == ("WireAcked", "tcb", (6,))


def test_fin_is_acknowledged_with_everything_before_it() -> None:
    scheduler, wire, host, _ = _setup()
    wire.write([memoryview(b"data")])
    wire.write_eof()
    wire.write([memoryview(b"late")])  # after our FIN the socket drops writes
    assert wire.peer_received == b"data" and wire.dropped_writes == 1
    wire.ack(4)
    assert not wire.fin_acked()
    wire.watch_acks()
    wire.ack()
    scheduler.run()
    assert wire.fin_acked() and host.events == [("WireAcked", "tcb", (4,))]


def test_auto_ack_acknowledges_every_write_and_fin() -> None:
    _, wire, _, _ = _setup()
    wire.auto_ack = True
    wire.write([memoryview(b"abc")])
    wire.write_eof()
    assert wire.acked() == 3 and wire.fin_acked()


def test_pause_holds_peer_bytes_until_resume() -> None:
    scheduler, wire, host, _ = _setup()
    wire.pause_reading()
    assert wire.peer_send(b"ab") == 0
    assert wire.peer_send(b"cd") == 2
    wire.peer_fin()
    scheduler.run()
    assert host.events == [] and wire.bytes_read == 0  # still in the "kernel"
    wire.resume_reading()
    scheduler.run()
    assert host.events == [
        ("WireData", "tcb", (0, b"ab")),
        ("WireData", "tcb", (2, b"cd")),
        ("WireEof", "tcb", (4,)),
    ]
    with pytest.raises(ValueError):
        wire.peer_send(b"after fin")


def test_a_reset_while_paused_is_told_and_the_unread_bytes_go_with_it() -> None:
    """As the real socket (tests/integration/test_wire_after_the_peer.py): back-pressure holds
    the peer's bytes, not the news of its RST; what the kernel held unread is lost."""
    scheduler, wire, host, _ = _setup()
    wire.peer_send(b"read")
    wire.pause_reading()
    wire.peer_send(b"held")
    wire.peer_reset()
    wire.resume_reading()
    scheduler.run()
    assert host.events == [("WireData", "tcb", (0, b"read")), ("WireReset", "tcb", ("ECONNRESET",))]


def test_peer_reset_reports_once_and_closes() -> None:
    scheduler, wire, host, _ = _setup()
    wire.write([memoryview(b"unacked")])
    wire.peer_reset()
    scheduler.run()
    assert host.events == [("WireReset", "tcb", ("ECONNRESET",))]
    assert wire.closed and wire.reset_received and wire.tcp_info().state == 7
    # as the real socket: once closed, the last acknowledged offset stands (nothing of the
    # unacknowledged bytes counts as delivered)
    assert wire.acked() == 0 < wire.bytes_written


def test_no_fin_is_acknowledged_by_a_reset_or_a_close() -> None:
    """As the real socket: a FIN is acknowledged only if the peer acknowledged it; a socket
    closed by the peer's RST, or by us, before that says no, and one acknowledged before
    says yes for ever (spec §4.5: a graceful disconnect succeeds only then)."""
    _, wire, _, _ = _setup()
    wire.write_eof()
    wire.peer_reset()
    assert not wire.fin_acked()
    _, wire, _, _ = _setup()
    wire.write_eof()
    wire.close()
    assert not wire.fin_acked()
    _, wire, _, _ = _setup()
    wire.write_eof()
    wire.ack()
    wire.peer_reset()
    assert wire.fin_acked()


def test_abort_sends_rst_and_reports_nothing_to_us() -> None:
    scheduler, wire, host, _ = _setup()
    wire.abort()
    scheduler.run()
    assert wire.reset_sent and wire.closed and host.events == []
    wire.write([memoryview(b"x")])
    assert wire.dropped_writes == 1


def test_sequence_numbers_wrap_around_offsets() -> None:
    _, wire, _, _ = _setup()
    far = 1 << 20
    assert seq(wire.isn, far) < wire.isn  # the default ISN is near 2**32: it wraps
    assert offset_of(wire.isn, seq(wire.isn, far), far - 10) == far


def test_directory_finds_wires_by_the_target_key() -> None:
    scheduler = RecordingScheduler()
    ndis = Ndis(clock=lambda: 0, deliver=scheduler)
    wires = WireDirectory(ndis.post)
    a, b = wires.open(), wires.open()
    assert a.local[1] != b.local[1]
    assert wires.find(*a.key) is a and wires.find(*b.key) is b
    assert wires.find(b"\x7f\x00\x00\x01", 1, b"\x7f\x00\x00\x01", 80) is None


def test_manual_timers_fire_in_due_order_and_cancel() -> None:
    clock = ManualClock()
    timers = clock.timers()
    fired: list[tuple[str, int]] = []
    timers.call_later(0.5, lambda: fired.append(("b", clock())))
    timers.call_later(0.1, lambda: fired.append(("a", clock())))
    gone = timers.call_later(0.2, lambda: fired.append(("never", clock())))
    gone.cancel()
    assert clock.advance(0.3) == 1
    assert fired == [("a", 100_000_000)]
    assert clock.advance(1) == 1 and fired[-1] == ("b", 500_000_000)
    assert clock() == 1_300_000_000 and clock.pending == 0


def test_bound_timers_are_delivered_to_their_layer() -> None:
    scheduler = RecordingScheduler()
    clock = ManualClock()
    ndis = Ndis(clock=clock, deliver=scheduler)
    layer = Owner("nic", ndis)
    timers = clock.timers(ndis.post)
    timers.bind(layer)
    fired: list[int] = []
    timers.call_later(0.01, fired.append, 7)
    clock.advance(0.02)
    assert fired == []  # in the layer's inbox, not run by the clock
    scheduler.run()
    assert fired == [7] and scheduler.log[-1].layer is layer
