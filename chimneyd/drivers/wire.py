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
from enum import Enum
from typing import Any, Protocol


class SocketOption(Enum):
    """The socket options a layer may set on a connection's socket, by their Linux names
    (`runtime/wire.py` maps each to its level and number)."""

    SO_KEEPALIVE = "SO_KEEPALIVE"
    TCP_KEEPIDLE = "TCP_KEEPIDLE"  # seconds
    TCP_KEEPINTVL = "TCP_KEEPINTVL"  # seconds
    TCP_KEEPCNT = "TCP_KEEPCNT"
    TCP_NODELAY = "TCP_NODELAY"
    TCP_USER_TIMEOUT = "TCP_USER_TIMEOUT"  # ms; 0: the kernel's own retransmission limit
    SO_RCVBUF = "SO_RCVBUF"  # bytes (the kernel doubles it for its bookkeeping)
    IP_TTL = "IP_TTL"
    IPV6_UNICAST_HOPS = "IPV6_UNICAST_HOPS"
    IP_TOS = "IP_TOS"
    IPV6_TCLASS = "IPV6_TCLASS"


@dataclass(slots=True)
class TcpInfo:
    """The parts of the kernel's `TCP_INFO` (and of a few socket options) the delegated state
    is made from, in the kernel's own units. None: this kernel does not report the field."""

    state: int = 1  # TCP_ESTABLISHED
    ca_state: int = 0  # congestion-avoidance state: 0 Open, 1 Disorder, 2 CWR, 3 Recovery, 4 Loss
    retransmits: int = 0  # RTO retransmissions of the oldest unacknowledged segment
    probes: int = 0  # zero-window or keepalive probes sent without an answer
    backoff: int = 0  # exponential backoff of the retransmit / probe timer
    options: int = 0  # TCPI_OPT_* bits negotiated (1 timestamps, 2 SACK, 4 window scaling)
    snd_wscale: int = 0
    rcv_wscale: int = 0
    rto_us: int = 0  # retransmit timeout, backoff included (µs)
    snd_mss: int = 65483
    unacked: int = 0  # segments in flight
    sacked: int = 0  # segments SACKed (with SACK) or duplicate ACKs seen (without)
    last_data_sent_ms: int = 0  # ms since we last sent data
    last_data_recv_ms: int = 0  # ms since the peer last sent data
    last_ack_recv_ms: int = 0  # ms since the peer's last ACK
    rtt_us: int = 0  # smoothed RTT (µs); 0: no sample yet
    rttvar_us: int = 0  # RTT mean deviation (µs)
    snd_ssthresh: int = 0x7FFFFFFF  # segments; 0x7FFFFFFF: not yet set (TCP_INFINITE_SSTHRESH)
    snd_cwnd: int = 10  # segments
    rcv_space: int = 65535  # our receive-buffer estimate (bytes): not a window
    total_retrans: int = 0  # segments retransmitted over the connection's life
    notsent_bytes: int | None = None  # written but not yet sent (Linux 4.6+)
    snd_wnd: int | None = None  # the peer's advertised window, scaled, bytes (Linux 5.4+)
    rcv_wnd: int | None = None  # the window we advertise, scaled, bytes (Linux 6.2+)
    # not in TCP_INFO: TCP_TIMESTAMP (the connection's timestamp clock now, ms unless
    # TCPI_OPT_USEC_TS) and the keepalive settings (SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT)
    ts_val: int | None = None
    keepalive: bool = False
    keepidle_s: int = 7200
    keepintvl_s: int = 75
    keepcnt: int = 9
    snd_buf: int | None = None  # SO_SNDBUF: the kernel's send buffer (bytes, as it keeps it)


class WireOwner(Protocol):
    """A layer that can own a wire's received bytes; events are posted to its inbox."""

    def WireData(self, ctx: Any, offset: int, data: bytes) -> None: ...
    def WireEof(self, ctx: Any, offset: int) -> None: ...
    def WireReset(self, ctx: Any, reason: str) -> None: ...
    def WireTimeout(self, ctx: Any, reason: str) -> None:
        """The kernel gave up on the connection (ETIMEDOUT): its retransmit or zero-window
        probe limit (TCP_USER_TIMEOUT) or keepalive probes ran out. Not a reset: no RST came."""
        ...

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

    home: Any  # the host's layer: the socket's owner whenever no target owns it (None: forgotten)
    home_ctx: Any  # the host's context (TCB): the socket's owner whenever no target owns it

    def set_home(self, layer: Any, ctx: Any) -> None:
        """Make `layer`/`ctx` the owner, and the owner `set_owner(None, None)` returns to."""
        ...

    def set_owner(self, layer: Any, ctx: Any) -> None:
        """Route data/EOF/reset/ack events to `layer.WireXxx(ctx, ...)`; None: back home."""
        ...

    def disown(self) -> None:
        """The connection is closed and forgotten: drop the owner and home (their contexts
        point back at this socket, a cycle that kept both for the collector). What the socket
        would still tell nobody hears."""
        ...

    def write(self, views: list[memoryview]) -> None: ...
    def write_eof(self) -> None: ...
    def abort(self) -> None:
        """Close with RST (SO_LINGER {1, 0}). What the kernel holds of the peer's bytes goes
        with the connection, unread: nothing is processed after an abort (spec §4.5)."""
        ...

    def abort_after_reading(self) -> None:
        """`abort`, the bytes the kernel holds read first when reading is on: told (`WireData`,
        to the owner's inbox, after this returns) before the RST drops them. For the RST a
        FIN_WAIT_2 timeout owes the peer, whose application reads every byte, then the timeout
        (spec §8). With reading stopped they are lost, as with `abort`."""
        ...

    def close(self) -> None:
        """Close and release the socket at once: gracefully (the kernel sends what it holds,
        then our FIN) when every byte written reached the kernel, else with RST, since bytes
        that never will must not be followed by a FIN (the peer would take a cut stream for a
        whole one)."""
        ...

    def acked(self) -> int:
        """Offset up to which the peer has acknowledged our bytes (spec §4.1): never a byte
        the kernel did not take; once closed, the offset as it was when the socket went."""
        ...

    def fin_acked(self) -> bool:
        """Our FIN was sent and the peer acknowledged it (spec §4.5). Never true on a socket
        closed (reset, or by us) before that."""
        ...

    def watch_acks(self) -> None:
        """Ask for one `WireAcked` event when the acknowledged offset moves."""
        ...

    def tcp_info(self) -> TcpInfo: ...
    def send_room(self) -> tuple[int, int]:
        """What a send backlog is sized from (spec §5.3), cheaper than `tcp_info`: the
        congestion window in bytes (snd_cwnd times snd_mss) and the kernel's send buffer
        (SO_SNDBUF); (0, 0) once the socket is gone."""
        ...

    def set_option(self, option: SocketOption, value: int) -> bool:
        """setsockopt on the connection's socket; False if the kernel refused it (or the socket
        is gone). Options belong to the socket: they stay when the owner changes."""
        ...

    def pause_reading(self) -> None:
        """Stop reading the peer's bytes (back-pressure). The news of the connection's death
        still comes: a peer's RST is told as `WireReset` while paused (within a bounded time on
        a real socket), and the bytes not yet read are lost with the connection."""
        ...

    def resume_reading(self) -> None: ...


#: [EMU] spec §4.7, §5.2: the mark of the kernel's timeout on the ordinary receive path. A
#: target that meets the timeout after the host's terminate began (the connection is the
#: host's) indicates it up that path as an empty segment at the stream's end with TH_RST and
#: this bit, beyond the TCP flag byte, so no real segment carries it. Every IM relays it like
#: any other indication (`NdisMIndicateReceiveNetBufferLists`), so it reaches the host in
#: order, after every segment the target indicated before it (spec §3.6.4), where the host
#: takes it for the timeout (`host.receive.ordinary_path`), not for the peer's RST, which
#: reads as "connection reset". A layer that knows no mark sees an RST: the connection dead.
TIMEOUT_MARK = 0x100


def may_read_again(held: int, bound: int) -> bool:
    """Back-pressure's other edge (design): the owner stopped reading the socket once it held
    `bound` bytes, and reads again when it holds less than half of that, or nothing: at a
    bound of 1 (the smallest receive window, spec §2.2) half is 0, and "fewer than 0" would
    never come."""
    return held < (bound + 1) // 2
