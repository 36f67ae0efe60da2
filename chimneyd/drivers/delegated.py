"""The TCP delegated state from the kernel's `TCP_INFO`, in the spec's units (spec §2.2, §8).

The real socket is the wire and the peer (design: "emulating the wire"), so what a TOE would
keep in its TCB — windows, RTT, congestion state, timers — is what the kernel keeps for the
socket. The host hands it down at offload; the target hands it back in query answers and at
terminate. Both fill it here, from the same reading.

Units (spec §8): times are ticks of `TICKS_PER_SECOND`. The emulator declares the spec's
default, 1000 ticks a second (1 tick = 1 ms), the finest the spec allows (10, 100 or 1000):
the kernel's timers (`tcpi_rto`, `tcpi_last_*`, TCP_TIMESTAMP) are milliseconds or finer.
Windows are bytes. `SRtt` goes as 8x and `RttVar` as 4x their value in ticks, each a USHORT.
Timer deltas: -1 = not running, 0 = expired (the host fires it at once) (spec §3.3, §3.6.3).

Sequence numbers (`RcvNxt`, `SndUna`, `SndNxt`, `SndMax`), `RcvWnd` and the backlog sizes are
the callers' own bookkeeping (byte counters of the connection's layers); they fill those first:
`SndUna`/`SndMax` say whether data is outstanding and `RcvNxt` gives `SendWL1`.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

from chimneyd.ndis.blocks import TIMER_NOT_RUNNING, TcpOffloadStateDelegated
from chimneyd.ndis.status import TcpOffloadConnectionState

from .tcp import SEQ_MOD
from .wire import TcpInfo

#: The emulator's tick (spec §8 `TicksPerSecond`: 10, 100 or 1000; default 1000).
TICKS_PER_SECOND = 1000

ULONG_MAX = 0xFFFFFFFF
USHORT_MAX = 0xFFFF
UCHAR_MAX = 0xFF

#: `tcpi_snd_ssthresh` before the first loss: "not set" (Linux TCP_INFINITE_SSTHRESH).
TCP_INFINITE_SSTHRESH = 0x7FFFFFFF
#: Linux's bounds on the retransmit and zero-window-probe timers (TCP_RTO_MIN, TCP_RTO_MAX).
TCP_RTO_MIN_MS = 200
TCP_RTO_MAX_MS = 120_000
#: `tcpi_options` bits (include/uapi/linux/tcp.h).
TCPI_OPT_TIMESTAMPS = 0x01
TCPI_OPT_USEC_TS = 0x40  # the timestamp clock counts µs (Linux 6.7, route option tcp_usec_ts)

#: Where a `DelegatedSnapshot` came from (the three moments the host learns the state).
SOURCES = ("offload", "query", "upload")


def _clamp(value: int, top: int) -> int:
    return min(max(value, 0), top)


def ms_to_ticks(ms: float, tps: int = TICKS_PER_SECOND) -> int:
    """A duration in ms as whole ticks, rounded up: a timer with time left is not expired."""
    return -(-int(ms * tps) // 1000)


def tick_clock(clock_ns: int, tps: int = TICKS_PER_SECOND) -> int:
    """A monotonic clock (ns) as a 32-bit tick counter (ULONG, wraps after weeks: spec §8)."""
    return (clock_ns * tps // 1_000_000_000) % SEQ_MOD


def srtt_x8(rtt_us: int, tps: int = TICKS_PER_SECOND) -> int:
    """`SRtt`: 8x the smoothed RTT in ticks (USHORT). Rounded, not truncated; a measured RTT is
    never 0, which a TCP reads as "no sample yet" (RFC 6298 §2): loopback's ~30 µs is 1."""
    return _scaled_rtt(rtt_us, 8, tps)


def rttvar_x4(rttvar_us: int, tps: int = TICKS_PER_SECOND) -> int:
    """`RttVar`: 4x the RTT variation in ticks (USHORT), rounded like `SRtt`."""
    return _scaled_rtt(rttvar_us, 4, tps)


def _scaled_rtt(us: int, scale: int, tps: int) -> int:
    if us <= 0:
        return 0
    return _clamp(max(1, (us * scale * tps + 500_000) // 1_000_000), USHORT_MAX)


def cwnd_bytes(info: TcpInfo) -> int:
    """`CWnd` in bytes (ULONG): the kernel counts segments of `tcpi_snd_mss`."""
    return _clamp(info.snd_cwnd * max(info.snd_mss, 1), ULONG_MAX)


def ssthresh_bytes(info: TcpInfo) -> int:
    """`SsThresh` in bytes (ULONG); "not set yet" becomes the largest ULONG."""
    if info.snd_ssthresh >= TCP_INFINITE_SSTHRESH:
        return ULONG_MAX
    return _clamp(info.snd_ssthresh * max(info.snd_mss, 1), ULONG_MAX)


def snd_wnd_bytes(info: TcpInfo) -> int:
    """`SndWnd` in bytes: the peer's advertised window (`tcpi_snd_wnd`, Linux 5.4+). Older
    kernels hide it; then the congestion window stands in for it — the peer allowed at least
    what the kernel keeps in flight, and a made-up 0 would stop a target sending."""
    if info.snd_wnd is not None:
        return _clamp(info.snd_wnd, ULONG_MAX)
    return cwnd_bytes(info)


def _peer_idle_ms(info: TcpInfo) -> int:
    """ms since anything arrived from the peer (what Linux's keepalive timer measures)."""
    return min(info.last_data_recv_ms, info.last_ack_recv_ms)


def _probe_interval_ms(info: TcpInfo) -> int:
    """Linux's zero-window probe interval: max(RTO, RTO_MIN) << backoff, at most RTO_MAX."""
    base = max(info.rto_us // 1000, TCP_RTO_MIN_MS)
    return min(base << min(info.backoff, 16), TCP_RTO_MAX_MS)


def _rto_elapsed_ms(info: TcpInfo) -> int:
    """ms since the kernel last (re)armed the retransmit timer, from what TCP_INFO shows.

    Linux arms it when a send finds nothing in flight, and re-arms it on every ACK of new data
    and at every retransmission. After an RTO, the retransmission was the last data sent. Else
    the last ACK re-armed it, unless that ACK emptied the flight and a later send armed it: an
    ACK older than one RTO would have let the timer expire (and `retransmits` count it), so in
    that case the timer dates from the last send."""
    rto_ms = info.rto_us // 1000
    sent, acked = info.last_data_sent_ms, info.last_ack_recv_ms
    if info.retransmits or (acked > sent and acked >= rto_ms):
        return sent
    return acked


def retransmit_state(
    info: TcpInfo, outstanding: int, tps: int = TICKS_PER_SECOND
) -> tuple[int, int, int]:
    """(`RetransmitTimeoutDelta`, `RetransmitCount`, `SndWndProbeCount`) (spec §8).

    Data in flight: the time left on the retransmit timer. Data held back by the peer's window
    (nothing in flight, bytes queued): the persist timer, which the spec keeps in the same
    fields (spec §8 "persist"), with `SndWndProbeCount` the probe round. Bytes still on their
    way into the kernel: a timer that starts when they are sent, one full RTO. Nothing
    outstanding: -1."""
    rto_ms = info.rto_us // 1000
    if info.unacked:
        left = rto_ms - _rto_elapsed_ms(info)
        return ms_to_ticks(max(0, left), tps), _clamp(info.retransmits, UCHAR_MAX), 0
    if info.notsent_bytes:
        # Linux arms the zero-window probe timer whenever bytes wait with none in flight; each
        # answer to a probe (or any ACK) re-arms it
        left = _probe_interval_ms(info) - info.last_ack_recv_ms
        return (
            ms_to_ticks(max(0, left), tps),
            _clamp(info.probes, UCHAR_MAX),
            _clamp(info.backoff, UCHAR_MAX),
        )
    if outstanding:
        return ms_to_ticks(rto_ms, tps), 0, 0
    return TIMER_NOT_RUNNING, 0, 0


def total_rt_ticks(info: TcpInfo, tps: int = TICKS_PER_SECOND) -> int:
    """`TotalRT`: time spent retransmitting the current segment, in ticks (ULONG; the DDI's
    TCP_OFFLOAD_STATE_DELEGATED page: "total time … spent retransmitting the current TCP
    segment"). Linux does not keep it; from `retransmits` RTOs, the backed-off RTO they ended
    on and the time since the last one it is the sum of the intervals between them."""
    n = info.retransmits
    if n <= 0:
        return 0
    base_ms = (info.rto_us // 1000) >> min(info.backoff, 16)
    spent = info.last_data_sent_ms
    for k in range(1, min(n, 32)):
        spent += min(base_ms << k, TCP_RTO_MAX_MS)
    return _clamp(ms_to_ticks(spent, tps), ULONG_MAX)


def keepalive_state(info: TcpInfo, in_flight: bool, tps: int = TICKS_PER_SECOND) -> tuple[int, int]:
    """(`KeepAliveTimeoutDelta`, `KeepAlive.ProbeCount`) from the socket's SO_KEEPALIVE and
    TCP_KEEPIDLE/INTVL: the next probe is due `idle + probes x interval` after the peer was
    last heard from (Linux `tcp_keepalive_timer`). -1 with keepalive off. While data is
    outstanding Linux sends no keepalive (the retransmit timer watches the peer), and
    `tcpi_probes` counts window probes instead: no keepalive probes then."""
    if not info.keepalive:
        return TIMER_NOT_RUNNING, 0
    probes = 0 if in_flight else info.probes
    due_ms = (info.keepidle_s + probes * info.keepintvl_s) * 1000
    left = due_ms - _peer_idle_ms(info)
    return ms_to_ticks(max(0, left), tps), _clamp(probes, UCHAR_MAX)


def timestamps(info: TcpInfo, now_ticks: int, tps: int = TICKS_PER_SECOND) -> tuple[int, int, int]:
    """(`TsRecent`, `TsRecentAge`, `TsTime`) (spec §8 "Timestamps").

    `TsTime` is the connection's timestamp clock now: TCP_TIMESTAMP, the value the kernel puts
    in TSval (ms ticks; µs with TCPI_OPT_USEC_TS), else the emulator's monotonic tick clock.
    `TsRecentAge`: ticks since the peer's last segment, the last one that could update
    TS.Recent; 0 without timestamps. `TsRecent`, the peer's last TSval, is kept by the kernel
    but not exposed (only TCP_REPAIR reads it): 0."""
    if info.ts_val is not None:
        ts = info.ts_val // 1000 if info.options & TCPI_OPT_USEC_TS else info.ts_val
        ts_time = ts % SEQ_MOD
    else:
        ts_time = now_ticks % SEQ_MOD
    if not info.options & TCPI_OPT_TIMESTAMPS:
        return 0, 0, ts_time
    return 0, _clamp(ms_to_ticks(_peer_idle_ms(info), tps), ULONG_MAX), ts_time


def fill_from_kernel(
    d: TcpOffloadStateDelegated,
    info: TcpInfo | None,
    now_ticks: int,
    tps: int = TICKS_PER_SECOND,
) -> None:
    """Fill `d`'s kernel-kept variables from `info` (None: the socket is gone — every timer
    stops, the rest is left as it was). `d`'s sequence numbers are the caller's, filled first."""
    if info is None:
        d.RetransmitTimeoutDelta = TIMER_NOT_RUNNING
        d.KeepAliveTimeoutDelta = TIMER_NOT_RUNNING
        return
    outstanding = (d.SndMax - d.SndUna) % SEQ_MOD
    d.SndWnd = snd_wnd_bytes(info)  # bytes
    # bytes; the kernel's max_window is not in TCP_INFO: the largest window seen by us
    d.MaxSndWnd = max(d.MaxSndWnd, d.SndWnd)
    # the peer's segments up to RcvNxt are in: the next one (SEG.SEQ >= RcvNxt) may update the
    # window (RFC 793 SND.WL1); the kernel's snd_wl1 is not in TCP_INFO
    d.SendWL1 = d.RcvNxt
    d.CWnd = cwnd_bytes(info)  # bytes
    d.SsThresh = ssthresh_bytes(info)  # bytes
    d.SRtt = srtt_x8(info.rtt_us, tps)  # 8 x ticks
    d.RttVar = rttvar_x4(info.rttvar_us, tps)  # 4 x ticks
    d.TsRecent, d.TsRecentAge, d.TsTime = timestamps(info, now_ticks, tps)  # -, ticks, TS clock
    d.TotalRT = total_rt_ticks(info, tps)  # ticks
    # duplicate ACKs: without SACK Linux counts them in `sacked`; with SACK that counts the
    # segments the duplicate ACKs reported. Either way 0 outside loss recovery.
    d.DupAckCount = _clamp(info.sacked, UCHAR_MAX)
    # ticks, count, round
    d.RetransmitTimeoutDelta, d.RetransmitCount, d.SndWndProbeCount = retransmit_state(
        info, outstanding, tps
    )
    in_flight = bool(info.unacked or info.notsent_bytes or outstanding)
    d.KeepAliveTimeoutDelta, d.KeepAliveProbeCount = keepalive_state(info, in_flight, tps)  # ticks


#: The fields of a snapshot: every delegated variable but `State` and the three pointers.
_INTS = tuple(
    f.name
    for f in dataclasses.fields(TcpOffloadStateDelegated)
    if f.name not in ("State", "SendDataHead", "SendDataTail", "BufferedData")
)
#: the timer deltas are signed: TIMER_NOT_RUNNING is -1 (spec §3.3)
_SIGNED = frozenset({"KeepAliveTimeoutDelta", "RetransmitTimeoutDelta"})
# source (index in SOURCES), State, at_ns, then the variables: 32-bit as the spec types them
# (ULONG, USHORT, UCHAR), or 64-bit each should a value not fit
_NARROW = struct.Struct("<BBq" + "".join("i" if n in _SIGNED else "I" for n in _INTS))
_WIDE = struct.Struct("<BBq" + "q" * len(_INTS))


class DelegatedSnapshot(bytes):
    """The delegated variables as the host last learnt them (no NBL pointers), and where and
    when: at offload (what the host handed down), a query answer, or an upload.

    Packed into one bytes object: the host keeps one per connection for the connection's life,
    and as a dataclass of thirty fields, with the ints it held, it was ~600 bytes of every idle
    offloaded connection. Variables read as attributes of a `TcpOffloadStateDelegated`
    (pointers None); each read unpacks (tcp.info and query answers only)."""

    __slots__ = ()

    def _fields(self) -> tuple[int, ...]:
        return (_NARROW if len(self) == _NARROW.size else _WIDE).unpack(self)

    @property
    def source(self) -> str:
        return SOURCES[self[0]]

    @property
    def at_ns(self) -> int:
        """The NDIS clock (monotonic ns, the clock of trace hops' `t_ns`) when it was taken."""
        return self._fields()[2]

    def state(self) -> TcpOffloadStateDelegated:
        """The variables as a `TcpOffloadStateDelegated` of their own."""
        _, state, _, *values = self._fields()
        d = TcpOffloadStateDelegated(State=TcpOffloadConnectionState(state))
        for name, value in zip(_INTS, values, strict=True):
            setattr(d, name, value)
        return d

    def as_map(self) -> dict[str, Any]:
        return self.state().as_map()

    def __getattr__(self, name: str) -> Any:
        """A delegated variable (`snap.SendBacklogSize`), as `TcpOffloadStateDelegated` has it."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.state(), name)


def snapshot(d: TcpOffloadStateDelegated, source: str, at_ns: int) -> DelegatedSnapshot:
    """A copy of `d` without its pointers (which must not be kept alive), labelled."""
    assert source in SOURCES, source
    head = (SOURCES.index(source), d.State, at_ns)
    values = [getattr(d, name) for name in _INTS]
    try:
        return DelegatedSnapshot(_NARROW.pack(*head, *values))
    except struct.error:
        return DelegatedSnapshot(_WIDE.pack(*head, *values))


def provenance(
    d: TcpOffloadStateDelegated | DelegatedSnapshot | None, now_ns: int
) -> dict[str, Any]:
    """`tcp.info`'s keys beside `delegated`: where the snapshot came from and how old it is."""
    if not isinstance(d, DelegatedSnapshot):
        return {"delegated_source": None, "delegated_at_ms": None, "delegated_age_ms": None}
    return {
        "delegated_source": d.source,
        "delegated_at_ms": d.at_ns // 1_000_000,
        "delegated_age_ms": max(0, now_ns - d.at_ns) // 1_000_000,
    }


__all__ = [
    "TICKS_PER_SECOND",
    "DelegatedSnapshot",
    "fill_from_kernel",
    "provenance",
    "snapshot",
    "tick_clock",
]
