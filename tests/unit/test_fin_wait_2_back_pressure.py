"""A FIN_WAIT_2 timeout (docs/spec.md §8) while reading the socket has stopped under
back-pressure: the application's buffer full (the host's), or no receive posted and the
target's buffer full (the target's), so the peer's last bytes wait in the kernel. The promise
is the same as at any timeout: the application reads every byte the peer sent, then the
timeout. The RST that ends the connection would drop what the kernel still holds, so it goes
once the application has read it (or closes).

The wires read as `WireSocket` does (`lazy_reads`): once reading resumes, what the kernel held
comes a read at a time, in later rounds, not inside `resume_reading`. The real host stack over
the target, on MemoryWires, with the invariant checker on; the rig's `ManualClock`."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.testing.hostrig import HostRig
from tests.unit.test_host_fin_wait_2 import _host_in_fin_wait_2
from tests.unit.test_target_fin_wait_2_timer import (
    FIN_WAIT_2_S,
    TIMED_OUT,
    _in_fin_wait_2,
    _kernel_heard_nothing_since,
    _retrieves,
)

CHUNKS = [b"chunk%02d " % i for i in range(10)]


def _peer_sends_more_than_is_read(rig: HostRig, wire: Any) -> bytes:
    for chunk in CHUNKS:
        wire.peer_send(chunk)
        rig.run()
    assert not wire.reading, "reading never stopped"
    return b"".join(CHUNKS)


def _reads_every_byte_then_the_timeout(rig: HostRig, conn: int, wire: Any) -> bytes:
    got = b""
    for _ in range(4 * len(CHUNKS)):
        r = rig.call(rig.host.app_recv, conn, 5, False)
        assert r.done, r
        if r.error is not None:
            assert TIMED_OUT in str(r.error), r
            assert wire.reset_sent, "the peer was not told"
            return got
        assert r.value, "an end of stream the peer never sent"
        got += r.value
    raise AssertionError(f"no timeout read after {got!r}")


@pytest.mark.parametrize("im", [False, True], ids=["direct", "through_an_im"])
def test_the_target_s_expiry_loses_no_byte_the_kernel_held(im: bool) -> None:
    """Offloaded, no receive posted, the target's buffer full: it stops reading, the rest
    waits in the kernel. At the expiry the target asks for the upload (`TimeoutExpiration`)
    and reads again at the terminate; the host, handed back a dead connection, sends its
    RST only once the application has read those bytes too."""
    rig, conn, wire = _in_fin_wait_2(im, rx_buffer_bytes=4)
    wire.lazy_reads = True
    (ctx,) = rig.contexts()
    ctx.rcv_bound = 8  # the target holds 8 bytes at most
    sent = _peer_sends_more_than_is_read(rig, wire)
    assert ctx.paused
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S + 1)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"], rig.events
    assert rig.contexts() == []
    assert _reads_every_byte_then_the_timeout(rig, conn, wire) == sent
    assert rig.problems() == []


@pytest.mark.parametrize("lazy", [False, True], ids=["reads_at_once", "reads_later"])
def test_the_host_s_expiry_loses_no_byte_the_kernel_held(lazy: bool) -> None:
    """Carried by the host, the application's buffer full: the host stops reading. At the
    expiry the RST waits for the application to read what the kernel held."""
    rig, conn, wire = _host_in_fin_wait_2(rx_buffer_bytes=4)
    wire.lazy_reads = lazy
    sent = _peer_sends_more_than_is_read(rig, wire)
    assert rig.host.tcbs[conn].read_paused
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S + 1)
    assert "TcpIndicateAbort" in rig.event_names(conn)
    assert not wire.reset_sent, "the RST went with bytes still in the kernel"
    assert _reads_every_byte_then_the_timeout(rig, conn, wire) == sent
    assert rig.problems() == []


def test_closed_unread_the_rst_goes_at_the_close() -> None:
    """Timed out with bytes unread in the kernel, the application closes without reading:
    the peer gets the RST then."""
    rig, conn, wire = _host_in_fin_wait_2(rx_buffer_bytes=4)
    _peer_sends_more_than_is_read(rig, wire)
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S + 1)
    assert not wire.reset_sent
    close = rig.call(rig.host.app_close, conn)
    assert close.value is True, close
    assert wire.reset_sent
    assert rig.problems() == []
