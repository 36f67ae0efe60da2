"""Property: the layer above hears of each upload a teaming MUX or its NICs want exactly once
(spec §4.8, §5.2, §5.5).

Random team actions (test_host_next_hop_interleavings' `TEAM_ACTIONS` but its next-hop
changes: offloads, updates, invalidates, uploads, closes, NICs failing, taken out, failing the
MUX's calls, rebalances) among the I/O that makes the MUX ask for an upload itself: sends,
some held below by a peer that does not acknowledge yet, sends the MUX fails (a `fail_next`
fault, with no upload status or with one), a bug the MUX raises on in a send, forward or
terminate (failed as the engine fails a call a layer could not serve), forwards, and the
NICs' own requests (`TcpIndicateRetrieve`, mandatory or optional reasons). Then:

- no offload of a connection hears two mandatory requests that say only "upload it" (the
  reasons that say why, `TimeoutExpiration`, `InvalidState`, `HardwareFailure`, always go
  up, `MuxIm._news`);
- with every NIC back and every peer acknowledging, nothing is left that the MUX or a NIC
  wants up and the layer above was not told of: no MUX connection and no NIC connection
  waits for an upload, and the MUX is not paused above;
- or, with one NIC failed for good (its peers maybe not acknowledging any more), no
  connection is left on it and the MUX is not paused above: each was asked up at once, a
  connection whose own request waits behind sends below that NIC too;

and at last every request is answered and every table drains."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimneyd.drivers.base import PlantedBug, RaiseNext
from chimneyd.drivers.mux.mux import CORRUPT_RETRY_MAX
from chimneyd.drivers.mux.objects import MuxConnection
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpUploadReason as R
from chimneyd.testing.factories import fail_next
from tests.unit.test_host_next_hop_interleavings import (
    CONN,
    CONNECT,
    TEAM,
    TEAM_ACTIONS,
    TEAM_NIC,
    TeamWalk,
)

#: how the MUX fails a send: no upload status (it asks for the upload itself), or one
STATUSES = (S.NDIS_STATUS_FAILURE, S.NDIS_STATUS_REQUEST_UPLOAD, S.NDIS_STATUS_UPLOAD_IN_PROGRESS)
#: the NICs' own requests: mandatory, optional, and reasons that always go up
REASONS = (R.UploadRequested, R.LowActivity, R.ReceivedUrgentData, R.TimeoutExpiration)
#: reasons that say why the connection comes back, and go up whatever came before
ALWAYS = frozenset({"TimeoutExpiration", "InvalidState", "HardwareFailure"})
STATUS = st.integers(0, len(STATUSES) - 1)
#: `one_of` picks its branches alike: offloads, failovers and rebalances named again, or they
#: would be rare among `TEAM_ACTIONS`'s many kinds
OWN_ACTIONS = st.one_of(
    # next-hop changes are test_host_next_hop_interleavings' own: the MUX's requests do not
    # meet them here
    TEAM_ACTIONS.filter(lambda action: action[0] not in ("move", "move_mtu")),
    CONNECT,
    # offloaded before anything else goes: most connections of a walk are uploaded or closed
    # soon, and the I/O below needs offloaded ones
    st.tuples(st.just("connect_run"), st.integers(0, 2), st.none()),
    st.tuples(st.just("connect_run"), st.integers(0, 2), st.none()),
    st.tuples(st.sampled_from(["fail_nic", "nic_down"]), TEAM_NIC, st.none()),
    st.tuples(st.just("rebalance"), st.none(), st.none()),
    st.tuples(st.just("run"), st.none(), st.none()),
    st.tuples(st.just("reoffload"), CONN, st.none()),
    # the MUX fails a send (and asks for the upload), a few deliveries go, the NIC asks too
    st.tuples(
        st.just("fail_then_ask"),
        CONN,
        st.tuples(st.integers(0, len(REASONS) - 1), st.integers(0, 6)),
    ),
    st.tuples(st.just("held_fail"), CONN, STATUS),  # a send held below, then one the MUX fails
    st.tuples(st.just("held_fail"), CONN, STATUS),
    st.tuples(st.just("mux_fail_send"), STATUS, st.integers(0, 2)),
    st.tuples(st.just("send"), CONN, st.integers(1, 3)),
    st.tuples(st.just("hold_acks"), CONN, st.none()),
    st.tuples(st.just("ack"), CONN, st.none()),
    st.tuples(st.just("nic_ask"), CONN, st.integers(0, len(REASONS) - 1)),
    st.tuples(
        st.just("mux_raise"),
        st.sampled_from(
            ["MiniportTerminateOffload", "MiniportTcpOffloadForward", "MiniportTcpOffloadSend"]
        ),
        st.integers(0, 2),
    ),
    st.tuples(st.just("forward"), CONN, st.none()),
)
_FORWARDABLE = frozenset({Phase.OFFLOADED, Phase.UPLOAD_SUGGESTED, Phase.UPLOAD_REQUESTED})


class OwnAsksWalk(TeamWalk):
    """`TeamWalk` with the I/O and faults above; it counts the requests each offload hears."""

    def __init__(self) -> None:
        super().__init__()
        self.wires: dict[int, Any] = {}
        # conn -> the mandatory "upload it" requests its current offload heard
        self.heard: dict[int, int] = {}
        self.twice: list[tuple[int, str]] = []
        host, events = self.rig.host, self.rig.events

        def emit(conn: int, event: str, info: dict[str, Any]) -> None:
            events.append((conn, event, dict(info)))
            if event == "offloaded":
                self.heard[conn] = 0
            elif event in ("uploaded", "closed"):
                self.heard.pop(conn, None)
            elif (
                event == "TcpIndicateRetrieve"
                and info["mandatory"]
                and info["reason"] not in ALWAYS
                and conn in self.heard
            ):
                self.heard[conn] += 1
                if self.heard[conn] > 1:
                    self.twice.append((conn, info["reason"]))

        host.emit = emit
        # a bug the MUX raised on: the call fails as the engine fails one a layer could not
        # serve (`Layer.fail_unserved`), and the deliveries go on
        scheduler = self.rig.scheduler
        run_one = scheduler.run_one

        def run_one_served() -> bool:
            try:
                return run_one()
            except PlantedBug:
                failed = scheduler.log[-1]
                assert failed.layer.fail_unserved(failed.handler, failed.args), failed
                return True

        scheduler.run_one = run_one_served  # type: ignore[method-assign]

    def do(self, action: str, a: Any, b: Any) -> None:
        rig, mux, host = self.rig, self.mux, self.rig.host
        if action in ("connect", "connect_run"):
            super().do("connect", a, b)
            conn = self.conns[-1]
            self.wires[conn] = host.tcbs[conn].wire
            if action == "connect_run":
                rig.run()
        elif action == "mux_fail_send":
            fail_next(mux, "MiniportTcpOffloadSend", STATUSES[a], skip=b)
        elif action == "mux_raise":
            mux.arm_fault(RaiseNext(1000 + len(self.replies), a, 1, b))
        elif action == "reoffload":  # the application offloads an uploaded one again
            idle = [c for c in self.conns if self._phase(c) is Phase.IDLE]
            if idle:
                self.ask("offload", host.app_offload, idle[a % len(idle)], None)
        elif action in ("hold_acks", "ack"):
            if self.conns:
                self._on_conn(action, self.conns[a % len(self.conns)], b)
        elif action in ("held_fail", "send", "nic_ask", "forward", "fail_then_ask"):
            # on an offloaded connection: most of a walk's are uploaded or closed soon
            live = [c for c in self.conns if self._phase(c) in _FORWARDABLE]
            if live:
                self._on_conn(action, live[a % len(live)], b)
        else:
            super().do(action, a, b)

    def _phase(self, conn: int) -> Phase | None:
        tcb = self.rig.host.tcbs.get(conn)
        return None if tcb is None else tcb.lifecycle.phase

    def _on_conn(self, action: str, conn: int, b: Any) -> None:
        rig, mux, host = self.rig, self.mux, self.rig.host
        wire = self.wires[conn]
        tcb = host.tcbs.get(conn)
        if action == "held_fail":  # a send below, unacknowledged, then one the MUX fails
            wire.auto_ack = False
            self.ask("send", host.app_send, conn, b"b" * 100)
            rig.run()
            fail_next(mux, "MiniportTcpOffloadSend", STATUSES[b])
            self.ask("send", host.app_send, conn, b"f" * 100)
        elif action == "send":
            self.ask("send", host.app_send, conn, b"s" * (100 * b))
        elif action == "fail_then_ask":
            reason, steps = b
            fail_next(mux, "MiniportTcpOffloadSend", S.NDIS_STATUS_FAILURE)
            self.ask("send", host.app_send, conn, b"f" * 100)
            self.do("step", steps, None)
            self._on_conn("nic_ask", conn, reason)
        elif action == "hold_acks":
            wire.auto_ack = False
        elif action == "ack":
            wire.auto_ack = True
            wire.ack()
        elif tcb is None or tcb.handle is None:
            return
        elif action == "forward":
            if tcb.lifecycle.phase in _FORWARDABLE:
                rig.forward(conn, (0, 0x10))  # a pure ACK, as the host forwards one (spec §4.6)
        elif action == "nic_ask":  # the NIC's own request
            entry = tcb.handle.miniport_offload_context
            if isinstance(entry, MuxConnection) and entry.id in mux.table:
                nic = rig.targets[mux.lowers[entry.lower.id].name]
                for ctx in nic.connections():
                    if ctx.upper.owner is entry:
                        nic.retrieve(ctx, REASONS[b])

    def clear_faults(self) -> None:
        for nic in self.rig.targets.values():
            nic.fail_next.clear()
        self.mux.fail_next.clear()

    def acknowledge(self, on: bool) -> None:
        for wire in self.wires.values():
            wire.auto_ack = on
            if on and not wire.closed:
                wire.ack()

    def nothing_wanted_up(self) -> None:
        """Every NIC in service, everything delivered: what the MUX or a NIC wants up, the
        layer above has been told of, and has uploaded."""
        rig, mux = self.rig, self.mux
        assert rig.problems() == []
        wanted = [
            (c.id, c.lifecycle.phase.name, c.asked)
            for c in mux.connections()
            if c.lifecycle.phase is Phase.UPLOAD_REQUESTED
        ]
        wanted += [
            (name, ctx.id, ctx.lifecycle.phase.name)
            for name, nic in rig.targets.items()
            for ctx in nic.connections()
            if ctx.lifecycle.phase in (Phase.UPLOAD_REQUESTED, Phase.INVALIDATED)
        ]
        assert wanted == [], wanted
        assert not mux.paused_above and not rig.host.paused, mux.leftovers()


def _walk(actions: list[tuple[str, Any, Any]]) -> OwnAsksWalk:
    walk = OwnAsksWalk()
    for action, a, b in actions:
        walk.do(action, a, b)
    walk.rig.run()
    assert walk.rig.problems() == []
    walk.clear_faults()
    return walk


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OWN_ACTIONS, min_size=10, max_size=60))
def test_each_upload_is_heard_once_and_none_is_lost(actions: list[tuple[str, Any, Any]]) -> None:
    walk = _walk(actions)
    rig, mux = walk.rig, walk.mux
    for i in sorted(walk.failed):
        rig.targets[TEAM[i]].recover_adapter()
        rig.run()
    for i in sorted(walk.down):
        mux.lower_up(mux.lower_list()[i].binding)
        rig.run()
    walk.acknowledge(True)
    rig.run()
    rig.advance(CORRUPT_RETRY_MAX)
    walk.nothing_wanted_up()
    assert walk.twice == [], walk.twice
    walk.answered_and_drained()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OWN_ACTIONS, min_size=10, max_size=60), TEAM_NIC, st.booleans())
def test_a_nic_failed_for_good_keeps_no_connection_and_no_pause(
    actions: list[tuple[str, Any, Any]], gone: int, acks: bool
) -> None:
    walk = _walk(actions)
    rig, mux = walk.rig, walk.mux
    walk.acknowledge(acks)  # the peers may stop acknowledging: sends stay below
    if gone not in walk.failed:
        rig.targets[TEAM[gone]].fail_adapter()
        rig.run()
    for i in sorted(walk.failed - {gone}):
        rig.targets[TEAM[i]].recover_adapter()
        rig.run()
    for i in sorted(walk.down):
        mux.lower_up(mux.lower_list()[i].binding)
        rig.run()
    rig.advance(CORRUPT_RETRY_MAX)
    assert rig.problems() == []
    left = [
        (c.id, c.lifecycle.phase.name, c.asked, c.below)
        for c in mux.connections()
        if mux.lowers[c.lower.id].name == TEAM[gone]
    ]
    assert left == [], left
    assert not mux.paused_above, mux.leftovers()
    walk.acknowledge(True)
    rig.targets[TEAM[gone]].recover_adapter()
    rig.run()
    rig.advance(CORRUPT_RETRY_MAX)
    walk.nothing_wanted_up()
    assert walk.twice == [], walk.twice
    walk.answered_and_drained()
