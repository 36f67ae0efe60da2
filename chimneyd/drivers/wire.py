"""The wire as the driver layers see it: one real TCP connection's socket (design: emulating the wire).

The socket belongs to the connection, not to a layer. Exactly one layer owns its received bytes
at a time (the host, or the NIC while offloaded); ownership changes by `set_owner`, never by a
new socket. Every event carries the stream offset of its first byte, so data that reaches a layer
by two roads (the wire and `NdisOffloadTcpForward`, or the chimney and the ordinary path) is put
back in order by offset, as TCP sequence numbers would.

`runtime/wire.py` implements this over a uvloop transport; tests use an in-memory pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

SEQ_MOD = 1 << 32


@dataclass(slots=True)
class TcpInfo:
    """The parts of the kernel's `TCP_INFO` the delegated state is made from."""

    state: int = 1  # TCP_ESTABLISHED
    rtt_us: int = 0
    rttvar_us: int = 0
    snd_cwnd: int = 10
    snd_ssthresh: int = 0x7FFFFFFF
    snd_mss: int = 65483
    rcv_space: int = 65535
    retransmits: int = 0
    total_retrans: int = 0
    unacked: int = 0


class WireOwner(Protocol):
    """A layer that can own a wire's received bytes; events are posted to its inbox."""

    def WireData(self, ctx: Any, offset: int, data: bytes) -> None: ...
    def WireEof(self, ctx: Any, offset: int) -> None: ...
    def WireReset(self, ctx: Any, reason: str) -> None: ...
    def WireAcked(self, ctx: Any, acked: int) -> None: ...


class WirePort(Protocol):
    """One connection's socket. Offsets count bytes from the start of each direction."""

    local: tuple[str, int]
    remote: tuple[str, int]
    isn: int  # our initial send sequence number
    irs: int  # the peer's initial sequence number
    bytes_written: int  # offset after the last byte handed to the socket
    bytes_read: int  # offset after the last byte read from it
    eof_written: bool
    eof_seen: bool
    closed: bool

    home_ctx: Any  # the host's context (TCB): the socket's owner whenever no target owns it

    def set_home(self, layer: Any, ctx: Any) -> None:
        """Make `layer`/`ctx` the owner, and the owner `set_owner(None, None)` returns to."""
        ...

    def set_owner(self, layer: Any, ctx: Any) -> None:
        """Route data/EOF/reset/ack events to `layer.WireXxx(ctx, ...)`; None: back home."""
        ...

    def write(self, views: list[memoryview]) -> None: ...
    def write_eof(self) -> None: ...
    def abort(self) -> None:
        """Close with RST (SO_LINGER {1, 0})."""
        ...

    def close(self) -> None: ...
    def acked(self) -> int:
        """Offset up to which the peer has acknowledged our bytes."""
        ...

    def fin_acked(self) -> bool: ...
    def watch_acks(self) -> None:
        """Ask for one `WireAcked` event when the acknowledged offset moves."""
        ...

    def tcp_info(self) -> TcpInfo: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def seq(initial: int, offset: int) -> int:
    """The 32-bit sequence number of the byte at stream `offset` (the SYN takes one)."""
    return (initial + 1 + offset) % SEQ_MOD


def offset_of(initial: int, sequence: int, near: int) -> int:
    """The stream offset of `sequence`, taking the one closest to offset `near`."""
    base = seq(initial, near)
    delta = (sequence - base + (1 << 31)) % SEQ_MOD - (1 << 31)
    return near + delta
