"""The cached TCP variables reach the socket: at offload and by update (spec §2.2, §3.4), with no
socket — the MemoryWire records every option the target sets."""

from __future__ import annotations

import dataclasses

from chimneyd.drivers.wire import SocketOption as Opt
from chimneyd.ndis.blocks import (
    TCP_FLAG_KEEP_ALIVE_ENABLED,
    TCP_FLAG_KEEP_ALIVE_RESTART,
    TCP_FLAG_MAX_RT_RESTART,
    TCP_FLAG_NAGLING_ENABLED,
    TCP_FLAG_UPDATE_RCV_WND,
    OffloadBlock,
    TcpOffloadStateCached,
    TcpOffloadStateConst,
    TcpOffloadStateDelegated,
    walk,
)
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing import MemoryWire, Stack
from chimneyd.testing.factories import loopback_target_stack
from chimneyd.testing.hostrig import HostRig

KEEPALIVE = TCP_FLAG_KEEP_ALIVE_ENABLED


class Conn:
    """One connection offloaded by the protocol stub, with the cached variables it gives."""

    def __init__(self, cached: TcpOffloadStateCached | None = None, **options: object) -> None:
        self.st: Stack = loopback_target_stack(**options)
        self.wire: MemoryWire = self.st.wires.open()
        self.wire.set_home(self.st.top, "host")
        top = self.top = self.st.top
        self.tree = tree = top.connection_tree([])
        path = tree.root.dependent_block_list
        assert path is not None
        block = path.add_dependent(top.tcp_block(self.wire))
        if cached is not None:
            block.cached = cached
        assert block.offload_handle is not None
        self.handle = block.offload_handle
        tree.tcp.append(self.handle)
        top.initiate(tree.root)
        self.st.run()
        self.status = top.state_completions[-1].statuses[-1]

    def _tree(self, **state: object) -> OffloadBlock:
        root = self.top.reference_tree(self.tree)
        for block in walk(root):
            if block.offload_handle is self.handle:
                for name, value in state.items():
                    setattr(block, name, value)
        return root

    def update(self, **changes: int) -> S:
        """`NdisUpdateOffload` with the connection's cached variables changed by `changes`."""
        ctx = self.handle.miniport_offload_context
        cached = dataclasses.replace(ctx.cached, **changes)  # type: ignore[union-attr]
        self.top.update(self._tree(cached=cached))
        self.st.run()
        return S(self.top.state_completions[-1].statuses[-1])

    def query(self) -> TcpOffloadStateDelegated:
        self.top.query(self._tree(delegated=TcpOffloadStateDelegated()))
        self.st.run()
        root = self.top.state_completions[-1].root
        (block,) = [b for b in walk(root) if b.offload_handle is self.handle]
        assert block.delegated is not None
        return block.delegated  # type: ignore[no-any-return]


def test_an_offload_with_the_default_variables_sets_no_option() -> None:
    c = Conn()
    assert c.status == S.NDIS_STATUS_SUCCESS
    assert c.wire.option_log == []  # a fresh socket already has them: no system call


def test_keepalive_values_handed_down_at_offload_go_on_the_socket() -> None:
    cached = TcpOffloadStateCached(
        Flags=KEEPALIVE, KaTimeout=30_000, KaInterval=5_000, KaProbeCount=4, TtlOrHopLimit=33
    )
    c = Conn(cached)
    assert c.status == S.NDIS_STATUS_SUCCESS
    # ticks (ms) become seconds; the values go on before keepalive is turned on with them
    assert c.wire.option_log == [
        (Opt.TCP_KEEPIDLE, 30),
        (Opt.TCP_KEEPINTVL, 5),
        (Opt.TCP_KEEPCNT, 4),
        (Opt.SO_KEEPALIVE, 1),
        (Opt.IP_TTL, 33),
    ]


def test_update_applies_what_changed_and_only_that() -> None:
    c = Conn()
    status = c.update(Flags=TCP_FLAG_NAGLING_ENABLED, TtlOrHopLimit=7, TosOrTrafficClass=0x10)
    assert status == S.NDIS_STATUS_SUCCESS
    assert c.wire.option_log == [(Opt.TCP_NODELAY, 0), (Opt.IP_TTL, 7), (Opt.IP_TOS, 0x10)]
    assert c.update(Flags=0) == S.NDIS_STATUS_SUCCESS  # Nagle off again: TCP_NODELAY on
    assert c.wire.option_log[-1] == (Opt.TCP_NODELAY, 1) and len(c.wire.option_log) == 4
    # a query returns the cached variables as the target now holds them
    assert c.handle.miniport_offload_context.cached.TtlOrHopLimit == 7  # type: ignore[union-attr]


def test_keepalive_on_off_and_restart() -> None:
    c = Conn()
    assert c.update(Flags=KEEPALIVE, KaTimeout=2_500) == S.NDIS_STATUS_SUCCESS
    assert c.wire.options[Opt.SO_KEEPALIVE] == 1 and c.wire.options[Opt.TCP_KEEPIDLE] == 3
    c.wire.option_log.clear()
    # restart: Linux re-arms its keepalive timer for a full idle time when keepalive goes on
    assert c.update(Flags=KEEPALIVE | TCP_FLAG_KEEP_ALIVE_RESTART) == S.NDIS_STATUS_SUCCESS
    assert c.wire.option_log == [(Opt.SO_KEEPALIVE, 0), (Opt.SO_KEEPALIVE, 1)]
    assert c.update(Flags=0) == S.NDIS_STATUS_SUCCESS
    assert c.wire.options[Opt.SO_KEEPALIVE] == 0


def test_a_value_linux_cannot_take_fails_the_update_and_changes_nothing() -> None:
    c = Conn()
    assert c.update(Flags=KEEPALIVE, KaProbeCount=500) == S.NDIS_STATUS_FAILURE
    assert c.update(TtlOrHopLimit=300) == S.NDIS_STATUS_FAILURE
    assert c.wire.option_log == []
    ctx = c.handle.miniport_offload_context
    assert ctx.cached.KaProbeCount == 0  # type: ignore[union-attr]
    # the target carries on normally (spec §3.4)
    (nbl,) = c.top.send(c.handle, b"still here")
    c.st.run()
    c.wire.ack()
    c.st.run()
    assert nbl.status == S.NDIS_STATUS_SUCCESS


def test_a_new_receive_window_moves_the_back_pressure_bound() -> None:
    c = Conn()
    c.top.receive_policy = lambda nbl: (S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0)
    # without the flag, a changed InitialRcvWnd is not a new window (spec §2.2)
    assert c.update(InitialRcvWnd=8) == S.NDIS_STATUS_SUCCESS
    c.wire.peer_send(b"0123456789")
    c.st.run()
    assert c.wire.reading
    assert c.update(InitialRcvWnd=8, Flags=TCP_FLAG_UPDATE_RCV_WND) == S.NDIS_STATUS_SUCCESS
    assert not c.wire.reading  # 10 bytes held, the window is 8: TCP flow control holds the peer
    assert c.wire.options[Opt.SO_RCVBUF] == 8
    assert c.query().RcvWnd == 0


def test_max_rt_is_the_user_timeout_and_the_engine_default_applies_at_offload() -> None:
    c = Conn(user_timeout_ms=1500)
    assert c.wire.options == {Opt.TCP_USER_TIMEOUT: 1500}
    assert c.update(MaxRT=4000) == S.NDIS_STATUS_SUCCESS
    assert c.wire.options[Opt.TCP_USER_TIMEOUT] == 4000  # ticks are ms
    assert c.update(MaxRT=0xFFFFFFFF) == S.NDIS_STATUS_SUCCESS  # "unlimited": the kernel's own
    assert c.wire.options[Opt.TCP_USER_TIMEOUT] == 0
    assert c.update(MaxRT=0) == S.NDIS_STATUS_SUCCESS
    assert c.wire.options[Opt.TCP_USER_TIMEOUT] == 1500
    # at upload the host carries on with the kernel's own limit
    c.top.terminate(c.top.reference_tree(c.tree, state="delegated"))
    c.st.run()
    assert c.wire.option_log[-1] == (Opt.TCP_USER_TIMEOUT, 0)


def test_max_rt_restart_resets_total_rt() -> None:
    c = Conn()
    (nbl,) = c.top.send(c.handle, b"x" * 100)
    c.st.run()
    # the kernel has been retransmitting the first unacknowledged segment
    c.wire.info = dataclasses.replace(
        c.wire.info, retransmits=2, backoff=2, rto_us=800_000, last_data_sent_ms=150
    )
    before = c.query().TotalRT
    assert before > 0
    assert c.update(Flags=TCP_FLAG_MAX_RT_RESTART) == S.NDIS_STATUS_SUCCESS
    assert c.query().TotalRT == 0
    c.wire.info = dataclasses.replace(c.wire.info, last_data_sent_ms=250)
    assert c.query().TotalRT == 100  # counted again from the restart
    c.wire.ack()
    c.st.run()
    assert nbl.status == S.NDIS_STATUS_SUCCESS


def test_the_host_marks_a_new_window_and_sends_restart_flags_once() -> None:
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    reply = rig.call(rig.host.app_update, conn, {"InitialRcvWnd": 4096})
    assert reply.value == {"status": "NDIS_STATUS_SUCCESS"}
    assert wire.options[Opt.SO_RCVBUF] == 4096  # the host set TCP_FLAG_UPDATE_RCV_WND
    reply = rig.call(rig.host.app_update, conn, {"Flags": KEEPALIVE | TCP_FLAG_KEEP_ALIVE_RESTART})
    assert reply.value == {"status": "NDIS_STATUS_SUCCESS"}
    wire.option_log.clear()
    rig.call(rig.host.app_update, conn, {"RcvIndicationSize": 100})
    assert wire.option_log == []  # the restart was asked once, not again with every update
    assert rig.host.tcbs[conn].cached.Flags == KEEPALIVE  # type: ignore[union-attr]
    rig.call(rig.host.app_close, conn)
    assert rig.problems() == []


def test_a_query_answers_every_state_class_it_asks_for() -> None:
    """A query may ask for any class of state (spec §3.3): asked for the constant and cached
    variables as well as the delegated, the target fills each with what it holds now (the
    cached ones as the last update left them); the pointers of the delegated union mean
    nothing in an answer and are cleared."""
    c = Conn()
    assert c.update(TtlOrHopLimit=9, KaTimeout=4_000) == S.NDIS_STATUS_SUCCESS
    c.top.query(
        c._tree(
            const=TcpOffloadStateConst(),
            cached=TcpOffloadStateCached(),
            delegated=TcpOffloadStateDelegated(SendDataHead=NetBufferList.for_data(b"x")),
        )
    )
    c.st.run()
    completion = c.top.state_completions[-1]
    assert completion.op == "Query" and completion.statuses[-1] == S.NDIS_STATUS_SUCCESS
    (block,) = [b for b in walk(completion.root) if b.offload_handle is c.handle]
    assert block.const is not None and block.cached is not None and block.delegated is not None
    assert (block.const.LocalPort, block.const.RemotePort) == (c.wire.local[1], c.wire.remote[1])
    assert (block.cached.TtlOrHopLimit, block.cached.KaTimeout) == (9, 4_000)
    assert block.delegated.SendDataHead is None
    assert block.delegated.RcvNxt == c.query().RcvNxt  # as a delegated-only query reads it
