"""The cached TCP variables on the real socket (spec §2.2, §3.4): what the target honours.

At offload and at every update the target copies the cached variables into the connection and
applies the ones Linux has a knob for to the connection's socket (design: the socket is the
wire): keepalive (`TCP_FLAG_KEEP_ALIVE_ENABLED`, `KaTimeout`, `KaInterval`, `KaProbeCount` →
SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT), Nagle (`TCP_FLAG_NAGLING_ENABLED` →
TCP_NODELAY off), the retransmission limit (`MaxRT` → TCP_USER_TIMEOUT), `TtlOrHopLimit`
(IP_TTL / IPV6_UNICAST_HOPS) and `TosOrTrafficClass` (IP_TOS / IPV6_TCLASS). `InitialRcvWnd`
bounds the bytes the target holds for the connection (its receive window, the back-pressure
limit), at most `engine.rx_buffer_bytes`; an update that sets `TCP_FLAG_UPDATE_RCV_WND` also
sets SO_RCVBUF, so the window the kernel advertises follows it. `RcvIndicationSize` is read by
the delivery algorithm (spec §4.3).

Not applied, for want of a knob: `FlowLabel` (Linux gives a connected TCP socket no flow label
of its own choosing without a flow-label lease) and `UserPriority` (802.1p: loopback frames
carry no VLAN tag). They are kept, and returned by a query, like every cached variable.

Only what differs from what the socket already has is applied, so an offload with the host's
defaults costs no system call; a fresh socket has Linux's defaults (keepalive off, TTL 64,
TOS 0, no user timeout) and TCP_NODELAY on (`runtime/wire.py` sets it at connect).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chimneyd.ndis.blocks import (
    TCP_FLAG_KEEP_ALIVE_ENABLED,
    TCP_FLAG_KEEP_ALIVE_RESTART,
    TCP_FLAG_MAX_RT_RESTART,
    TCP_FLAG_NAGLING_ENABLED,
    TCP_FLAG_UPDATE_RCV_WND,
    TcpOffloadStateCached,
    TcpOffloadStateDelegated,
)

from ..delegated import TICKS_PER_SECOND, ULONG_MAX, ms_to_ticks, total_rt_ticks
from ..wire import SocketOption, TcpInfo
from .contexts import TcpContext

if TYPE_CHECKING:
    from .target import OffloadTarget

Opt = SocketOption
#: `MaxRT` "unlimited" (spec §2.2).
MAX_RT_UNLIMITED = 0xFFFFFFFF
#: Linux's limits: MAX_TCP_KEEPIDLE / MAX_TCP_KEEPINTVL (seconds), MAX_TCP_KEEPCNT.
MAX_KEEP_SECONDS = 32767
MAX_KEEPCNT = 127
#: What a socket has before anyone sets an option (see the module docstring).
_FRESH: dict[SocketOption, int] = {
    Opt.SO_KEEPALIVE: 0,
    Opt.TCP_KEEPIDLE: 7200,  # Linux's TCP_KEEPALIVE_TIME, TCP_KEEPALIVE_INTVL, TCP_KEEPALIVE_PROBES
    Opt.TCP_KEEPINTVL: 75,
    Opt.TCP_KEEPCNT: 9,
    Opt.TCP_NODELAY: 1,
    Opt.TCP_USER_TIMEOUT: 0,
    Opt.IP_TTL: 64,
    Opt.IPV6_UNICAST_HOPS: 64,
    Opt.IP_TOS: 0,
    Opt.IPV6_TCLASS: 0,
}
#: Applied in this order: keepalive values before SO_KEEPALIVE turns the timer on with them.
_ORDER = (
    Opt.TCP_KEEPIDLE,
    Opt.TCP_KEEPINTVL,
    Opt.TCP_KEEPCNT,
    Opt.SO_KEEPALIVE,
    Opt.TCP_NODELAY,
    Opt.TCP_USER_TIMEOUT,
    Opt.IP_TTL,
    Opt.IPV6_UNICAST_HOPS,
    Opt.IP_TOS,
    Opt.IPV6_TCLASS,
)


def _seconds(ticks: int) -> int:
    """A tick count as whole seconds for TCP_KEEPIDLE/INTVL, rounded up (never 0)."""
    return max(1, -(-ticks // TICKS_PER_SECOND))


def socket_options(
    t: OffloadTarget, cached: TcpOffloadStateCached, ipv6: bool
) -> dict[SocketOption, int] | None:
    """The options `cached` asks of the socket; None if a value is one Linux cannot take."""
    if any(
        not 0 <= v <= ULONG_MAX
        for v in (
            cached.Flags,
            cached.InitialRcvWnd,
            cached.RcvIndicationSize,
            cached.KaProbeCount,
            cached.KaTimeout,
            cached.KaInterval,
            cached.MaxRT,
        )
    ):
        return None
    want: dict[SocketOption, int] = {}
    want[Opt.SO_KEEPALIVE] = 1 if cached.Flags & TCP_FLAG_KEEP_ALIVE_ENABLED else 0
    # the values follow the cached variables whether keepalive is on or not, so turning it on
    # later finds them in place; 0 is Linux's default
    for option, ticks in (
        (Opt.TCP_KEEPIDLE, cached.KaTimeout),
        (Opt.TCP_KEEPINTVL, cached.KaInterval),
    ):
        seconds = _seconds(ticks) if ticks else _FRESH[option]
        if seconds > MAX_KEEP_SECONDS:
            return None
        want[option] = seconds
    if cached.KaProbeCount > MAX_KEEPCNT:
        return None
    want[Opt.TCP_KEEPCNT] = cached.KaProbeCount or _FRESH[Opt.TCP_KEEPCNT]
    want[Opt.TCP_NODELAY] = 0 if cached.Flags & TCP_FLAG_NAGLING_ENABLED else 1
    # MaxRT: 0 = the global limit (TcpMaximumRetransmissions: `engine.user_timeout_ms`, 0 = the
    # kernel's own); "unlimited" has no Linux value: the kernel's own limit is the nearest
    if cached.MaxRT == 0:
        want[Opt.TCP_USER_TIMEOUT] = t.user_timeout_ms
    elif cached.MaxRT == MAX_RT_UNLIMITED:
        want[Opt.TCP_USER_TIMEOUT] = 0
    elif cached.MaxRT > 0x7FFFFFFF:
        return None
    else:
        want[Opt.TCP_USER_TIMEOUT] = cached.MaxRT * 1000 // TICKS_PER_SECOND  # ticks -> ms
    ttl = cached.TtlOrHopLimit or _FRESH[Opt.IP_TTL]  # 0: Linux's default
    if not 1 <= ttl <= 255:
        return None
    want[Opt.IPV6_UNICAST_HOPS if ipv6 else Opt.IP_TTL] = ttl
    if not 0 <= cached.TosOrTrafficClass <= 255:
        return None
    want[Opt.IPV6_TCLASS if ipv6 else Opt.IP_TOS] = cached.TosOrTrafficClass
    return want


def _is_ipv6(c: TcpContext) -> bool:
    return len(c.path.const.SourceAddress) == 16


def apply(
    t: OffloadTarget,
    c: TcpContext,
    new: TcpOffloadStateCached,
    old: TcpOffloadStateCached | None = None,
) -> bool:
    """Make `new` the connection's cached variables and apply them to its socket; `old` is what
    the socket has now (None: a socket fresh to the chimney, at offload). False, with nothing
    changed, if a value is out of Linux's range; False too if the kernel refused an option
    (the update then fails its block, spec §3.4)."""
    ipv6 = _is_ipv6(c)
    want = socket_options(t, new, ipv6)
    if want is None:
        return False
    have = _FRESH if old is None else (socket_options(t, old, ipv6) or _FRESH)
    wire = c.wire
    ok = True
    for option in _ORDER:
        value = want.get(option)
        if value is None:
            continue
        if have.get(option, _FRESH.get(option)) != value:
            ok = wire.set_option(option, value) and ok
    now = t.ndis.clock()
    restart_ka = bool(new.Flags & TCP_FLAG_KEEP_ALIVE_RESTART)
    max_rt_restart = bool(new.Flags & TCP_FLAG_MAX_RT_RESTART)
    if old is not None and (max_rt_restart or new.MaxRT not in (0, old.MaxRT)):
        # spec §2.2, §3.4: reset TotalRT (a new non-zero MaxRT does too); with the flag, the
        # keepalive probe count when KaProbeCount is updated and the keepalive timer when
        # KaTimeout or KaInterval are. The kernel's own clock of the user timeout is not reset.
        info = wire.tcp_info()
        c.rt_reset = (wire.acked(), total_rt_ticks(info))
    if old is not None and max_rt_restart:
        info = wire.tcp_info()
        if new.KaProbeCount != old.KaProbeCount:
            c.ka_probes_base = info.probes
        if (new.KaTimeout, new.KaInterval) != (old.KaTimeout, old.KaInterval):
            restart_ka = True
    if restart_ka and want[Opt.SO_KEEPALIVE] and old is not None:
        # Linux restarts its keepalive timer for a full idle time when keepalive is turned on
        ok = wire.set_option(Opt.SO_KEEPALIVE, 0) and ok
        ok = wire.set_option(Opt.SO_KEEPALIVE, 1) and ok
        c.ka_restart_ns = now
    if old is None:
        c.rcv_bound = _bound(t, new.InitialRcvWnd)
    elif new.Flags & TCP_FLAG_UPDATE_RCV_WND:
        # a new receive window (spec §2.2): the target's bound, and the kernel's buffer so the
        # window it advertises follows
        c.rcv_bound = _bound(t, new.InitialRcvWnd)
        if new.InitialRcvWnd:
            ok = wire.set_option(Opt.SO_RCVBUF, min(new.InitialRcvWnd, 0x7FFFFFFF)) and ok
    c.user_timeout_set = want[Opt.TCP_USER_TIMEOUT] != 0
    c.cached = new
    return ok


def _bound(t: OffloadTarget, initial_rcv_wnd: int) -> int:
    """The bytes the target holds for a connection: its receive window, at most the NIC's
    memory per connection (`engine.rx_buffer_bytes`); 0 means no window was given."""
    if initial_rcv_wnd <= 0:
        return t.rx_buffer_bytes
    return min(initial_rcv_wnd, t.rx_buffer_bytes)


def release(c: TcpContext) -> None:
    """At terminate: the host carries the connection on with the kernel's own retransmission
    limit, not the target's (spec §8: the limit is an offload parameter)."""
    if c.user_timeout_set and not c.wire.closed:
        c.wire.set_option(Opt.TCP_USER_TIMEOUT, 0)
    c.user_timeout_set = False


def adjust_delegated(
    t: OffloadTarget, c: TcpContext, d: TcpOffloadStateDelegated, info: TcpInfo | None
) -> None:
    """The delegated counters and timers the host reset or restarted by an update (spec §3.4,
    §8), which the kernel's own counters do not know of."""
    if info is None:
        return
    if c.rt_reset is not None:
        una, spent = c.rt_reset
        if c.wire.acked() == una and d.TotalRT >= spent:
            d.TotalRT -= spent  # still retransmitting the segment it was reset on
        else:
            c.rt_reset = None
    if c.ka_probes_base:
        if d.KeepAliveProbeCount >= c.ka_probes_base:
            d.KeepAliveProbeCount -= c.ka_probes_base
        else:
            c.ka_probes_base = 0  # the peer answered: the kernel's count started again
    if c.ka_restart_ns and info.keepalive and d.KeepAliveTimeoutDelta >= 0:
        since_ms = (t.ndis.clock() - c.ka_restart_ns) // 1_000_000
        left_ms = info.keepidle_s * 1000 - since_ms
        if left_ms <= 0:
            c.ka_restart_ns = 0
        else:
            d.KeepAliveTimeoutDelta = max(d.KeepAliveTimeoutDelta, ms_to_ticks(left_ms))
