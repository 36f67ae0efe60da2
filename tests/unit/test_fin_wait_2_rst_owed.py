"""The RST a FIN_WAIT_2 timeout owes the peer (docs/spec.md §8): when it goes and what the
application reads before it. The promise at any timeout: the application reads
every byte the peer sent, then the timeout, once; the peer gets the RST at the expiry while
reading the socket is on, else once those bytes are out of the kernel (or at `tcp.close`).

The wires read as `WireSocket` does (`lazy_reads`): once reading resumes, what the kernel held
comes a read at a time, in later rounds. The application's requests come as the engine's do,
through the host's inbox (`_pipelined`): two reads asked at once are both queued before the
socket's next read. The real host stack over the target, on MemoryWires, with the invariant
checker on; the rig's `ManualClock`."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.testing.factories import make_passthrough_on, make_target
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_fin_wait_2_back_pressure import CHUNKS, _peer_sends_more_than_is_read
from tests.unit.test_host_fin_wait_2 import _host_in_fin_wait_2
from tests.unit.test_target_fin_wait_2_timer import (
    FIN_WAIT_2_S,
    TIMED_OUT,
    _in_fin_wait_2,
    _kernel_heard_nothing_since,
    _retrieves,
)

TOPOLOGIES = ["direct", "through_an_im", "through_the_team"]


def _team_in_fin_wait_2(**host_options: Any) -> tuple[HostRig, int, Any]:
    """As deploy/teaming.toml: host → filter0 (a pass-through IM) → team0 (a MUX) → nic0,
    nic1; an offloaded connection whose FIN the peer acknowledged (FIN_WAIT_2), at clock 0."""
    rig = HostRig((), host_options=host_options or None)
    filter0 = make_passthrough_on(rig.ndis, rig.clock.timers(rig.ndis.post), "filter0")
    rig.ndis.bind(rig.host, filter0)
    timers = rig.clock.timers(rig.ndis.post)
    mux = MuxIm("team0", rig.ndis, timers, "round-robin")
    timers.bind(mux)
    rig.ndis.bind(filter0, mux)
    for name in ("nic0", "nic1"):
        nic = make_target(rig.ndis, rig.clock.timers(rig.ndis.post), rig.wires.find, name)
        rig.targets[name] = nic
        rig.ndis.bind(mux, nic)
    rig.run()
    conn, wire = rig.open()
    rig.offload(conn)
    rig.half_close(conn, wire)
    (ctx,) = _contexts(rig)
    assert ctx.tcp is TcpState.FIN_WAIT_2
    return rig, conn, wire


def _offloaded_in_fin_wait_2(topology: str, **host_options: Any) -> tuple[HostRig, int, Any]:
    if topology == "through_the_team":
        return _team_in_fin_wait_2(**host_options)
    return _in_fin_wait_2(topology == "through_an_im", **host_options)


def _contexts(rig: HostRig) -> list[Any]:
    """The live TCP contexts of every target."""
    return [c for t in rig.targets.values() for c in t.connections()]


def _closed_and_drained(rig: HostRig, conn: int) -> None:
    """`tcp.close`, then every layer's tables back to zero, no timer left, nothing queued."""
    close = rig.call(rig.host.app_close, conn)
    assert close.value is True and close.error is None, close
    assert rig.problems() == []
    for layer in [rig.host, *rig.targets.values()]:
        assert all(v == 0 for v in layer.leftovers().values()), layer.leftovers()
    assert rig.clock.pending == 0, "a timer left armed"


def _pipelined(rig: HostRig, conn: int, n: int, max_bytes: int = 1 << 16) -> list[Reply]:
    """`n` reads asked at once, queued in the host's inbox as the engine queues requests
    (`Engine.start_recv`), then run until idle."""
    replies = [Reply() for _ in range(n)]
    for reply in replies:
        rig.ndis.post(rig.host, rig.host.app_recv, (conn, max_bytes, False, reply))
    rig.run()
    return replies


def _reads_every_byte_then_the_timeout_pipelined(rig: HostRig, conn: int, wire: Any) -> bytes:
    """Read two at a time until the timeout: every byte, in order, then the timeout once, then
    the same error for every later read; the peer was sent the RST."""
    got = b""
    for _ in range(4 * len(CHUNKS)):
        replies = _pipelined(rig, conn, 2)
        for i, r in enumerate(replies):
            assert r.done, r
            if r.error is None:
                assert r.value, "an end of stream the peer never sent"
                got += r.value
                continue
            assert TIMED_OUT in str(r.error), r
            later = _pipelined(rig, conn, 1)[0]
            assert later.error is not None and later.value is None, later
            assert all(x.error is not None for x in replies[i:]), replies
            assert wire.reset_sent, "the peer was not told"
            return got
    raise AssertionError(f"no timeout read after {got!r}")


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_the_target_s_expiry_with_reading_on_resets_the_peer_at_the_expiry(topology: str) -> None:
    """Offloaded, the target reading (nothing held in the kernel): the RST goes with the
    upload the expiry asks for, as before, not once the application happens to read."""
    rig, conn, wire = _offloaded_in_fin_wait_2(topology)
    wire.peer_send(b"half closed")
    rig.run()
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S + 1)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"], rig.events
    assert _contexts(rig) == []
    assert not rig.host.tcbs[conn].read_paused
    assert wire.reset_sent, "the peer was not reset at the expiry"
    r = rig.call(rig.host.app_recv, conn, 64, False)
    assert r.value == b"half closed", r
    r = rig.call(rig.host.app_recv, conn, 64, False)
    assert r.error is not None and TIMED_OUT in str(r.error), r
    _closed_and_drained(rig, conn)


def test_the_host_s_expiry_two_reads_at_once_lose_no_byte_the_kernel_held() -> None:
    """Carried by the host, reading stopped under back-pressure at the expiry. The application
    asks for two reads at once: the first takes what the host holds and lets reading resume,
    the second comes before the socket's next read. It must wait for the kernel's bytes, not
    read the timeout and send the RST that drops them."""
    rig, conn, wire = _host_in_fin_wait_2(rx_buffer_bytes=4)
    wire.lazy_reads = True
    sent = _peer_sends_more_than_is_read(rig, wire)
    assert rig.host.tcbs[conn].read_paused
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S + 1)
    assert not wire.reset_sent
    assert _reads_every_byte_then_the_timeout_pipelined(rig, conn, wire) == sent
    _closed_and_drained(rig, conn)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_the_target_s_expiry_two_reads_at_once_lose_no_byte_the_kernel_held(
    topology: str,
) -> None:
    """As above, the target's buffer full and its reading stopped at the expiry."""
    rig, conn, wire = _offloaded_in_fin_wait_2(topology, rx_buffer_bytes=4)
    wire.lazy_reads = True
    (ctx,) = _contexts(rig)
    ctx.rcv_bound = 8
    sent = _peer_sends_more_than_is_read(rig, wire)
    assert ctx.paused
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S + 1)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"], rig.events
    assert _reads_every_byte_then_the_timeout_pipelined(rig, conn, wire) == sent
    _closed_and_drained(rig, conn)


def test_bytes_the_target_read_after_its_expiry_are_no_read_s_wait() -> None:
    """The peer sends once the target's timer expired, before the terminate (held behind a
    query, spec §3.1): the target reads the bytes of a connection it holds dead and processes
    none (spec §4.5). The socket has read past what the host is ever given, so no read may
    wait for those bytes: the application reads what the target held, then the timeout."""
    rig, conn, wire = _in_fin_wait_2()
    wire.peer_send(b"before")
    rig.run()
    _query, held = rig.query_held_below(conn)  # the terminate waits behind it
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S + 1)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"], rig.events
    wire.peer_send(b"after the expiry")
    rig.run()
    rig.release(held)
    assert _contexts(rig) == [] and wire.reset_sent
    first = rig.call(rig.host.app_recv, conn, 64, False)
    assert first.value == b"before", first
    for _ in range(2):
        r = rig.call(rig.host.app_recv, conn, 64, False)
        assert r.done, "a read waits for bytes no one will give"
        assert r.error is not None and TIMED_OUT in str(r.error), r
    _closed_and_drained(rig, conn)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_the_target_s_expiry_closed_unread_resets_the_peer_at_the_close(topology: str) -> None:
    """Timed out by the target with its reading stopped and the host's too: the RST is owed
    after the upload, and the application closes without reading: the peer gets it then,
    and every layer's tables are back to zero."""
    rig, conn, wire = _offloaded_in_fin_wait_2(topology, rx_buffer_bytes=4)
    wire.lazy_reads = True
    (ctx,) = _contexts(rig)
    ctx.rcv_bound = 8
    _peer_sends_more_than_is_read(rig, wire)
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S + 1)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"], rig.events
    assert _contexts(rig) == [] and rig.host.tcbs[conn].read_paused
    assert not wire.reset_sent, "the RST went with bytes still in the kernel"
    _closed_and_drained(rig, conn)
    assert wire.reset_sent, "the peer was not told at the close"
