"""The delegated state from TCP_INFO, socket-free: units, clamps and the -1/0 timer conventions."""

from __future__ import annotations

import dataclasses
import socket
import struct

import pytest

from chimneyd.drivers import delegated as dl
from chimneyd.drivers.wire import TcpInfo
from chimneyd.ndis.blocks import TIMER_NOT_RUNNING, TcpOffloadStateDelegated
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.runtime.wire import _read_tcp_info

ULONG = 0xFFFFFFFF


def _info(**fields: object) -> TcpInfo:
    """An established connection with a measured RTT, nothing outstanding, keepalive off."""
    base: dict[str, object] = {
        "rto_us": 204_000,
        "snd_mss": 1448,
        "rtt_us": 1000,
        "rttvar_us": 500,
        "snd_cwnd": 10,
        "snd_ssthresh": dl.TCP_INFINITE_SSTHRESH,
        "notsent_bytes": 0,
        "snd_wnd": 65536,
        "rcv_wnd": 65536,
        "ts_val": 123_456,
        "options": 0x07,
    }
    base.update(fields)
    return TcpInfo(**base)  # type: ignore[arg-type]


def _delegated(outstanding: int = 0) -> TcpOffloadStateDelegated:
    """Sequence numbers as a caller fills them, SndUna just below the 32-bit wrap."""
    una = ULONG - 9
    top = (una + outstanding) % (ULONG + 1)
    return TcpOffloadStateDelegated(RcvNxt=1000, SndUna=una, SndNxt=top, SndMax=top)


# --- RTT: 8x and 4x ticks, rounded, never 0 once measured, USHORT -----------------------------


@pytest.mark.parametrize(
    ("rtt_us", "want"),
    [(0, 0), (1, 1), (28, 1), (1000, 8), (1062, 8), (1063, 9), (125_000, 1000), (10**7, 0xFFFF)],
)
def test_srtt_is_8x_ticks_rounded(rtt_us: int, want: int) -> None:
    assert dl.srtt_x8(rtt_us) == want


def test_rtt_in_a_coarser_tick() -> None:
    assert dl.srtt_x8(10_000, tps=100) == 8  # 10 ms = 1 tick of 10 ms
    assert dl.rttvar_x4(5_000, tps=100) == 2
    assert dl.srtt_x8(28, tps=10) == 1  # still "measured"


@pytest.mark.parametrize(
    ("us", "want"), [(0, 0), (11, 1), (250, 1), (1000, 4), (10**7, 40000), (2 * 10**7, 0xFFFF)]
)
def test_rttvar_is_4x_ticks(us: int, want: int) -> None:
    assert dl.rttvar_x4(us) == want


# --- windows in bytes, ULONG ---------------------------------------------------------------------


def test_ssthresh_not_set_is_largest_ulong() -> None:
    assert dl.ssthresh_bytes(_info()) == ULONG


def test_ssthresh_in_bytes_and_clamped_to_ulong() -> None:
    assert dl.ssthresh_bytes(_info(snd_ssthresh=7)) == 7 * 1448
    # the old code: min(ssthresh, 0x3FFFFFFF) * mss, far beyond 32 bits
    big = _info(snd_ssthresh=0x3FFFFFFF, snd_mss=65483)
    assert dl.ssthresh_bytes(big) == ULONG


def test_cwnd_in_bytes_clamped() -> None:
    assert dl.cwnd_bytes(_info()) == 14480
    assert dl.cwnd_bytes(_info(snd_cwnd=1 << 20, snd_mss=65483)) == ULONG


def test_snd_wnd_is_the_peers_window_not_our_receive_space() -> None:
    assert dl.snd_wnd_bytes(_info(snd_wnd=4096, rcv_space=999_999)) == 4096
    assert dl.snd_wnd_bytes(_info(snd_wnd=0)) == 0  # a closed window is a real 0
    # a kernel without tcpi_snd_wnd: the congestion window stands in, never our rcv_space
    assert dl.snd_wnd_bytes(_info(snd_wnd=None, rcv_space=999_999)) == 14480


# --- retransmit and persist timers: -1 not running, 0 expired, else ticks left -------------------


def test_retransmit_timer_not_running_without_outstanding_data() -> None:
    assert dl.retransmit_state(_info(), outstanding=0) == (TIMER_NOT_RUNNING, 0, 0)


def test_retransmit_timer_left_since_the_last_ack() -> None:
    info = _info(unacked=3, last_ack_recv_ms=50, last_data_sent_ms=10)
    assert dl.retransmit_state(info, outstanding=3000) == (154, 0, 0)


def test_retransmit_timer_armed_by_a_send_after_an_old_ack() -> None:
    # the last ACK is older than one RTO and nothing was retransmitted: a send re-armed it
    info = _info(unacked=1, last_ack_recv_ms=60_000, last_data_sent_ms=4)
    assert dl.retransmit_state(info, outstanding=100) == (200, 0, 0)


def test_retransmit_timer_after_rtos_counts_from_the_retransmission() -> None:
    info = _info(
        unacked=2,
        retransmits=2,
        backoff=2,
        rto_us=816_000,
        last_data_sent_ms=16,
        last_ack_recv_ms=900,
    )
    assert dl.retransmit_state(info, outstanding=2000) == (800, 2, 0)


def test_retransmit_timer_due_reads_expired_not_negative() -> None:
    info = _info(unacked=1, last_ack_recv_ms=250, last_data_sent_ms=300, rto_us=204_000)
    assert dl.retransmit_state(info, outstanding=10)[0] == 0


def test_persist_timer_when_the_peers_window_holds_bytes_back() -> None:
    # nothing in flight, bytes queued: the zero-window probe timer, max(RTO, 200 ms) << backoff
    info = _info(snd_wnd=0, notsent_bytes=50_000, probes=1, backoff=2, last_ack_recv_ms=16)
    assert dl.retransmit_state(info, outstanding=50_000) == (816 - 16, 1, 2)
    huge = _info(snd_wnd=0, notsent_bytes=1, backoff=15, rto_us=4_000_000)
    assert dl.retransmit_state(huge, outstanding=1)[0] == dl.TCP_RTO_MAX_MS


def test_bytes_not_yet_in_the_kernel_start_a_full_rto() -> None:
    assert dl.retransmit_state(_info(), outstanding=10) == (204, 0, 0)


def test_total_rt_is_time_retransmitting_the_current_segment() -> None:
    assert dl.total_rt_ticks(_info()) == 0
    # three RTOs from a 200 ms base: 400 + 800 between them, 100 since the last
    info = _info(retransmits=3, backoff=3, rto_us=1_600_000, last_data_sent_ms=100)
    assert dl.total_rt_ticks(info) == 1300


# --- keepalive ---------------------------------------------------------------------------------


def test_keepalive_off_is_not_running() -> None:
    assert dl.keepalive_state(_info(), in_flight=False) == (TIMER_NOT_RUNNING, 0)


def test_keepalive_left_after_the_peer_was_last_heard() -> None:
    info = _info(keepalive=True, keepidle_s=10, last_data_recv_ms=5000, last_ack_recv_ms=3000)
    assert dl.keepalive_state(info, in_flight=False) == (7000, 0)


def test_keepalive_probes_push_the_next_one_by_the_interval() -> None:
    info = _info(
        keepalive=True, keepidle_s=10, keepintvl_s=5, probes=2, last_ack_recv_ms=18_000,
        last_data_recv_ms=18_000,
    )  # fmt: skip
    assert dl.keepalive_state(info, in_flight=False) == (2000, 2)
    # with data in flight tcpi_probes counts window probes, not keepalives
    assert dl.keepalive_state(info, in_flight=True) == (0, 0)


# --- timestamps --------------------------------------------------------------------------------


def test_timestamps_from_the_connections_clock() -> None:
    info = _info(last_data_recv_ms=7, last_ack_recv_ms=3)
    assert dl.timestamps(info, now_ticks=5) == (0, 3, 123_456)
    usec = _info(options=0x07 | dl.TCPI_OPT_USEC_TS, ts_val=123_456_789)
    assert dl.timestamps(usec, now_ticks=5)[2] == 123_456


def test_timestamps_off_leave_ts_recent_unset_and_tstime_from_the_tick_clock() -> None:
    info = _info(options=0x06, ts_val=None, last_ack_recv_ms=9)
    assert dl.timestamps(info, now_ticks=(1 << 32) + 42) == (0, 0, 42)


def test_tick_clock_is_a_wrapping_ulong_of_ms() -> None:
    assert dl.tick_clock(5_000_000) == 5
    assert dl.tick_clock(((1 << 32) + 7) * 1_000_000) == 7
    assert dl.tick_clock(1_000_000_000, tps=100) == 100


# --- the whole fill ----------------------------------------------------------------------------


def test_fill_sets_every_kernel_kept_variable() -> None:
    d = _delegated()
    info = _info(sacked=300, last_data_recv_ms=2)
    dl.fill_from_kernel(d, info, now_ticks=77)
    assert (d.SndWnd, d.MaxSndWnd, d.SendWL1) == (65536, 65536, 1000)
    assert (d.CWnd, d.SsThresh, d.SRtt, d.RttVar) == (14480, ULONG, 8, 2)
    assert (d.TsRecent, d.TsRecentAge, d.TsTime) == (0, 0, 123_456)
    assert (d.TotalRT, d.DupAckCount, d.SndWndProbeCount, d.KeepAliveProbeCount) == (0, 255, 0, 0)
    assert d.RetransmitTimeoutDelta == d.KeepAliveTimeoutDelta == TIMER_NOT_RUNNING
    assert d.RetransmitCount == 0


def test_fill_keeps_the_largest_send_window_seen() -> None:
    d = _delegated()
    d.MaxSndWnd = 1 << 20
    dl.fill_from_kernel(d, _info(snd_wnd=4096), now_ticks=0)
    assert (d.SndWnd, d.MaxSndWnd) == (4096, 1 << 20)


def test_fill_outstanding_by_sequence_numbers_across_the_wrap() -> None:
    d = _delegated(outstanding=20)  # SndUna just below 2^32, SndMax just past it
    dl.fill_from_kernel(d, _info(), now_ticks=0)
    assert d.RetransmitTimeoutDelta == 204


def test_fill_without_a_socket_stops_the_timers_and_keeps_the_rest() -> None:
    d = _delegated()
    d.CWnd, d.RetransmitTimeoutDelta, d.KeepAliveTimeoutDelta = 5, 3, 4
    dl.fill_from_kernel(d, None, now_ticks=0)
    assert (d.CWnd, d.RetransmitTimeoutDelta, d.KeepAliveTimeoutDelta) == (5, -1, -1)


# --- snapshots and their label -----------------------------------------------------------------


def test_snapshot_drops_pointers_and_says_where_and_when() -> None:
    d = _delegated()
    d.CWnd = 14480
    d.BufferedData = d.SendDataHead = d.SendDataTail = NetBufferList.for_data(b"x")
    snap = dl.snapshot(d, "query", 3_500_000_000)
    assert snap.BufferedData is None and snap.SendDataHead is None and snap.SendDataTail is None
    assert snap.as_map() == {**d.as_map()}  # the delegated map itself is unchanged
    assert "source" not in snap.as_map()
    assert dl.provenance(snap, 3_600_000_000) == {
        "delegated_source": "query",
        "delegated_at_ms": 3500,
        "delegated_age_ms": 100,
    }
    assert dl.provenance(None, 1)["delegated_source"] is None
    with pytest.raises(AssertionError):
        dl.snapshot(d, "guess", 0)


# --- the parser over what getsockopt returns ---------------------------------------------------


class _Sock:
    """getsockopt answers of a kernel whose struct tcp_info is `size` bytes long."""

    def __init__(self, size: int, keepalive: int = 0) -> None:
        head = struct.pack("8B24I", 1, 3, 2, 1, 2, 0x47, 0x97, 0, 204_000, *range(1, 24))
        tail = bytearray(236 - len(head))
        struct.pack_into("I", tail, 144 - 104, 777)
        struct.pack_into("II", tail, 228 - 104, 4096, 8192)
        self.buf = (head + bytes(tail))[:size]
        self.keepalive = keepalive

    def getsockopt(self, level: int, name: int, size: int = 0) -> bytes | int:
        if (level, name) == (socket.IPPROTO_TCP, socket.TCP_INFO):
            return self.buf[:size]
        if (level, name) == (socket.SOL_SOCKET, socket.SO_KEEPALIVE):
            return self.keepalive
        return {socket.TCP_KEEPIDLE: 30, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}.get(
            name, 99
        )


def test_parser_reads_the_later_fields_when_the_kernel_has_them() -> None:
    info = _read_tcp_info(_Sock(280, keepalive=1))  # type: ignore[arg-type]
    assert (info.state, info.ca_state, info.retransmits, info.probes, info.backoff) == (
        1,
        3,
        2,
        1,
        2,
    )
    assert (info.options, info.snd_wscale, info.rcv_wscale) == (0x47, 7, 9)
    assert (info.rto_us, info.snd_mss, info.unacked, info.sacked) == (204_000, 2, 4, 5)
    assert (info.last_data_sent_ms, info.last_data_recv_ms, info.last_ack_recv_ms) == (9, 11, 12)
    assert (info.rtt_us, info.rttvar_us, info.snd_ssthresh, info.snd_cwnd) == (15, 16, 17, 18)
    assert (info.rcv_space, info.total_retrans) == (22, 23)
    assert (info.notsent_bytes, info.snd_wnd, info.rcv_wnd) == (777, 4096, 8192)
    assert info.ts_val == 99
    assert (info.keepalive, info.keepidle_s, info.keepintvl_s, info.keepcnt) == (True, 30, 5, 3)


def test_parser_falls_back_cleanly_on_an_older_kernel() -> None:
    info = _read_tcp_info(_Sock(104))  # type: ignore[arg-type]
    assert (info.notsent_bytes, info.snd_wnd, info.rcv_wnd) == (None, None, None)
    assert info.snd_cwnd == 18 and not info.keepalive
    mid = _read_tcp_info(_Sock(232))  # type: ignore[arg-type]
    assert (mid.notsent_bytes, mid.snd_wnd, mid.rcv_wnd) == (777, 4096, None)


@pytest.mark.parametrize(
    "changes",
    [
        {},  # the 32-bit form
        {"KeepAliveTimeoutDelta": TIMER_NOT_RUNNING, "RetransmitTimeoutDelta": 0},
        {"SsThresh": 0xFFFFFFFF, "SendBacklogSize": 0xFFFFFFFF, "TsRecent": 0x80000001},
        {"CWnd": 1 << 40, "RetransmitTimeoutDelta": -(1 << 35)},  # past 32 bits: the wide form
    ],
)
def test_snapshot_reads_back_every_variable(changes: dict[str, int]) -> None:
    d = _delegated()
    for name, value in changes.items():
        setattr(d, name, value)
    snap = dl.snapshot(d, "upload", 2**62)
    want = dataclasses.replace(d, SendDataHead=None, SendDataTail=None, BufferedData=None)
    assert snap.state() == want
    assert snap.as_map() == d.as_map()
    for f in dataclasses.fields(d):
        assert getattr(snap, f.name) == getattr(want, f.name), f.name
    assert (snap.source, snap.at_ns) == ("upload", 2**62)
