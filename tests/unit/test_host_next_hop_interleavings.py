"""Property: random interleavings of next-hop changes (spec §3.4 (b)) of a few paths, with
ARP and MTU updates (§3.4 (a)), invalidates (§3.5), connections offloaded, uploaded and
closed, and a target failing an update or an initiate, all with the deliveries below cut short
at random points, keep the host's rules: every request answered once, with a contract code;
no spec §9 invariant broken; every offloaded connection's path hangs, at the target, under
the neighbor the host has it under; and once every connection is closed, the host's tables
are empty (its route cache within its bound). On two NICs (each behind a pass-through IM or
not), and on a teaming MUX of three whose NICs fail and come back meanwhile."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chimneyd.drivers.mux.mux import CORRUPT_RETRY_MAX, MuxIm
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, make_target
from chimneyd.testing.hostrig import HostRig, Reply

HOPS = (bytes(6), bytes.fromhex("02000000002b"), bytes.fromhex("02000000002c"))
PATHS = 3
CAP = 2  # the route cache's bound, small enough to be hit
#: error codes of the RPC contract a host request may answer with
CODES = {"INVALID_PARAMS", "NOT_FOUND", "INVALID_STATE", "NDIS_STATUS"}
CONN = st.integers(0, 15)
NICS = ("nic0", "nic1")
CONNECT = st.tuples(st.just("connect"), st.integers(0, PATHS - 1), st.sampled_from(NICS))
MOVE = st.tuples(st.just("move"), CONN, st.integers(0, len(HOPS) - 1))
ACTIONS = st.one_of(
    CONNECT,
    CONNECT,
    MOVE,
    MOVE,
    MOVE,
    st.tuples(st.just("move_mtu"), CONN, st.integers(0, len(HOPS) - 1)),
    st.tuples(st.just("arp"), CONN, st.none()),
    st.tuples(st.just("mtu"), CONN, st.none()),
    st.tuples(st.just("invalidate"), CONN, st.sampled_from(["neighbor", "path", "tcp"])),
    st.tuples(st.just("upload"), CONN, st.none()),
    st.tuples(st.just("close"), CONN, st.none()),
    st.tuples(
        st.just("fail"),
        st.sampled_from(NICS),
        st.sampled_from(
            [
                "MiniportUpdateOffload",
                "MiniportInitiateOffload[neighbor]",
                "MiniportInitiateOffload",
            ]
        ),
    ),
    st.tuples(st.just("step"), st.integers(0, 6), st.none()),
    st.tuples(st.just("batch"), st.none(), st.none()),
)
#: a NIC failing (UPLOAD_ALL, spec §5.5); again: its RESUME
FAIL_NIC = st.tuples(st.just("fail_nic"), st.sampled_from(NICS), st.none())


def _step(rig: HostRig, n: int) -> None:
    """Deliver up to `n` queued deliveries, then the host's end-of-drain batch."""
    for _ in range(n):
        if not rig.scheduler.queue:
            break
        rig.scheduler.run_one()
    rig.host.after_batch()


def _check_drained(rig: HostRig) -> None:
    """Every layer's gauges back to zero (the RPC contract's `stack.stats`): no offload, no
    handle or context table entry, no NBL held."""
    for name, s in rig.ndis.stats().items():
        for gauge in ("offloads_active", "handles", "outstanding_nbls"):
            assert s[gauge] == 0, f"{name}.{gauge} = {s[gauge]}"


def _check_tree(rig: HostRig, im: bool) -> None:
    """Each connection the target holds hangs under the neighbor its host connection's path
    hangs under at the host, once nothing is below (spec §2.3: the trees agree); through an
    IM, whose entries stand between, the IM's entry of each names the host's handle."""
    host = rig.host
    for ctx in [c for nic in NICS for c in rig.contexts(nic)]:
        path_upper, neighbor_upper = ctx.path.upper, ctx.path.neighbor.upper
        tcb = ctx.upper.owner
        if im:
            tcb = tcb.upper.owner
            path_upper, neighbor_upper = path_upper.owner.upper, neighbor_upper.owner.upper
        if tcb.lifecycle.phase is not Phase.OFFLOADED or tcb.path is None:
            continue
        neighbor = tcb.path.parent
        assert neighbor is not None
        assert neighbor.handle is not None, (tcb.conn_id, neighbor)
        assert path_upper is tcb.path.handle
        assert neighbor_upper is neighbor.handle, (
            f"conn {tcb.conn_id}: the target has its path under another neighbor than the host"
            f" ({neighbor.key})"
        )
        assert host.objects.get(neighbor.key) is neighbor
    for obj in host.objects.values():
        # a handle lends a connection's trace for one call only (spec §3.4 chimneyd)
        assert obj.handle is None or obj.handle.trace is None, obj


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(ACTIONS, FAIL_NIC), min_size=10, max_size=60), st.booleans())
def test_moves_among_updates_invalidates_closes_and_failures(
    actions: list[tuple[str, Any, Any]], im: bool
) -> None:
    """On two NICs, each behind a pass-through IM (`im`) or not."""
    rig = HostRig(NICS, im=im, host_options={"object_cache_cap": CAP})
    host = rig.host
    conns: list[int] = []
    replies: list[tuple[str, Reply]] = []
    failed: set[str] = set()

    def ask(what: str, request: Any, conn: int, *args: Any) -> None:
        reply = Reply()
        replies.append((what, reply))
        request(conn, *args, reply)

    for action, a, b in actions:
        if action == "connect":
            conn, wire = rig.open(remote=(f"127.0.0.{a + 1}", 80))
            wire.auto_ack = True
            conns.append(conn)
            ask("offload", host.app_offload, conn, b)
            continue
        if action == "fail_nic":
            if a in failed:
                failed.discard(a)
                rig.targets[a].recover_adapter()
            else:
                failed.add(a)
                rig.targets[a].fail_adapter()
            continue
        if action == "fail":
            fail_next(rig.targets[a], b, S.NDIS_STATUS_FAILURE)
            continue
        if action == "step":
            _step(rig, a)
            continue
        if action == "batch":
            host.after_batch()
            continue
        if not conns:
            continue
        conn = conns[a % len(conns)]
        if action == "move":
            ask(action, host.app_update_object, conn, "path", {"NextHop": HOPS[b]})
        elif action == "move_mtu":
            changes = {"NextHop": HOPS[b], "PathMtu": 1200 + len(replies)}
            ask(action, host.app_update_object, conn, "path", changes)
        elif action == "arp":
            mac = b"\x02\x00\x00\x00\x01" + bytes([len(replies) % 256])
            ask(action, host.app_update_object, conn, "neighbor", {"DlDestinationAddress": mac})
        elif action == "mtu":
            ask(action, host.app_update_object, conn, "path", {"PathMtu": 1300 + len(replies)})
        elif action == "invalidate":
            ask(action, host.app_invalidate, conn, b)
        elif action == "upload":
            ask(action, host.app_upload, conn)
        else:
            ask(action, host.app_close, conn)
    rig.run()
    assert rig.problems() == []
    for name in failed:  # a failed NIC holds its initiates until its RESUME (spec §5.5)
        rig.targets[name].recover_adapter()
        rig.run()
    _check_tree(rig, im)
    for what, reply in replies:
        assert reply.done, (what, reply)
        if reply.error is not None:
            assert reply.error.symbol in CODES, (what, reply)
    for conn in conns:
        rig.call(host.app_close, conn)
    rig.run()
    assert rig.problems() == []
    assert not any(host.leftovers().values()), host.leftovers()
    _check_drained(rig)
    for nic in NICS:
        assert not rig.contexts(nic)


TEAM = ("nic0", "nic1", "nic2")
TEAM_NIC = st.integers(0, len(TEAM) - 1)
TEAM_ACTIONS = st.one_of(
    ACTIONS,
    st.tuples(st.just("fail_nic"), TEAM_NIC, st.none()),  # UPLOAD_ALL; again: RESUME
    st.tuples(st.just("nic_down"), TEAM_NIC, st.none()),  # taken out; again: put back
    st.tuples(st.just("rebalance"), st.none(), st.none()),  # connections moved between NICs
    st.tuples(
        st.just("fail_team"),
        TEAM_NIC,
        # a terminate failed: the NIC found the copies corrupt (spec §3.7), some of them
        # maybe held back by a neighbor's terminate, or under another neighbor's copy
        st.sampled_from(
            [
                "MiniportUpdateOffload",
                "MiniportInitiateOffload[neighbor]",
                "MiniportTerminateOffload",
            ]
        ),
    ),
)


def _teamed_rig() -> tuple[HostRig, MuxIm]:
    """host → team0 (a teaming MUX) → nic0..nic2, on MemoryWires."""
    rig = HostRig((), host_options={"object_cache_cap": CAP})
    timers = rig.clock.timers(rig.ndis.post)
    mux = MuxIm("team0", rig.ndis, timers, "round-robin")
    timers.bind(mux)
    rig.ndis.bind(rig.host, mux)
    for name in TEAM:
        nic = make_target(rig.ndis, rig.clock.timers(rig.ndis.post), rig.wires.find, name)
        rig.targets[name] = nic
        rig.ndis.bind(mux, nic)
    rig.run()
    return rig, mux


def _check_team(rig: HostRig, out: set[str]) -> None:
    """Each NIC's connection, on a NIC in service, whose MUX copies are offloaded, hangs
    under a copy of the neighbor the host has its path under (spec §2.3)."""
    by_wire = {id(t.wire): t for t in rig.host.tcbs.values()}
    for name in TEAM:
        if name in out:
            continue
        for ctx in rig.contexts(name):
            tcb = by_wire[id(ctx.wire)]
            copy = ctx.path.upper.owner  # the MUX's copy of the path there
            if (
                tcb.lifecycle.phase is not Phase.OFFLOADED
                or tcb.path is None
                or copy.lifecycle.phase is not Phase.OFFLOADED
                or ctx.upper.owner.lifecycle.phase is not Phase.OFFLOADED
            ):
                continue
            neighbor = tcb.path.parent
            assert neighbor is not None
            assert ctx.path.neighbor.upper.owner.vobj.upper is neighbor.handle, (
                f"conn {tcb.conn_id} on {name}: under another neighbor than {neighbor.key}"
            )


#: Two paths moved crosswise while every NIC fails in turn: path 0 from neighbor A to B and
#: back to A, path 1 from A to B. Each one's copies on the NICs failed by then stay under the
#: other neighbor's copy there, and the host terminates each neighbor with the path it has
#: under it: the MUX holds back only those neighbor copies (`MuxIm._terminate`). Random
#: lists rarely come this way, so the property always tries it.
CROSSING: list[tuple[str, Any, Any]] = [
    *[("connect", 0, None)] * 4,
    ("fail_nic", 1, None),
    ("connect", 0, None),
    ("connect", 1, None),
    ("move", 0, 1),
    ("connect", 0, None),
    ("fail_nic", 0, None),
    ("move", 0, 0),
    ("move", 5, 1),
    ("fail_nic", 2, None),
]


#: A neighbor's terminate that holds back its copy on nic2 (another neighbor's path copy is
#: still under it there, left by a move while nic2 had failed) and whose own path and
#: connections there nic2 finds corrupt (spec §3.7): that copy then stays under them until
#: the host terminates them again, which it does once the terminate has completed. Waiting
#: for the copy, the terminate never completed and its connections stayed uploading.
HELD_CORRUPT: list[tuple[str, Any, Any]] = [
    ("connect", 2, None),
    *[("connect", 0, None)] * 4,
    ("fail_nic", 1, None),
    ("connect", 0, None),
    ("connect", 1, None),
    ("connect", 0, None),
    ("fail_nic", 0, None),
    ("fail_nic", 2, None),
    ("move", 6, 1),
    ("arp", 1, None),
    ("fail_team", 2, "MiniportTerminateOffload"),
    ("arp", 3, None),
]


#: A path left on nic1 under another neighbor's copy (its NIC had failed during the move),
#: found corrupt there (spec §3.7) in the terminate of its own neighbor, which has no copy on
#: nic1 to fail with it: that neighbor lives on with the path, and its terminate must fail
#: too (spec §9 item 10), not complete as if nothing of it were left below.
STRAY_CORRUPT: list[tuple[str, Any, Any]] = [
    ("connect", 0, None),
    ("close", 2, None),
    ("connect", 0, None),
    ("fail_nic", 2, None),
    ("upload", 4, None),
    ("connect", 0, None),
    ("fail_nic", 1, None),
    ("fail_team", 0, "MiniportTerminateOffload"),
    ("fail_team", 1, "MiniportTerminateOffload"),
    ("move", 1, 2),
]


class TeamWalk:
    """A teaming rig driven by `TEAM_ACTIONS`: the connections it opened, every request's
    reply, and the NICs failed (spec §5.5) or taken out, for the team properties."""

    def __init__(self) -> None:
        self.rig, self.mux = _teamed_rig()
        self.conns: list[int] = []
        self.replies: list[tuple[str, Reply]] = []
        self.failed: set[int] = set()
        self.down: set[int] = set()

    def ask(self, what: str, request: Any, conn: int, *args: Any) -> None:
        reply = Reply()
        self.replies.append((what, reply))
        request(conn, *args, reply)

    def do(self, action: str, a: Any, b: Any) -> None:
        rig, mux, host = self.rig, self.mux, self.rig.host
        if action == "connect":
            # up to PATHS paths: two moved crosswise while NICs fail leave each one's copies on
            # the failed NICs under the other's neighbor copies (`MuxIm._terminate`)
            conn, wire = rig.open(remote=(f"127.0.0.{a + 1}", 80))
            wire.auto_ack = True
            self.conns.append(conn)
            self.ask("offload", host.app_offload, conn, None)
        elif action == "fail_team":
            fail_next(rig.targets[TEAM[a]], b, S.NDIS_STATUS_FAILURE)
        elif action == "fail_nic":
            nic = rig.targets[TEAM[a]]
            if a in self.failed:
                self.failed.discard(a)
                nic.recover_adapter()
            else:
                self.failed.add(a)
                nic.fail_adapter()
        elif action == "nic_down":
            binding = mux.lower_list()[a].binding
            if a in self.down:
                self.down.discard(a)
                mux.lower_up(binding)
            else:
                self.down.add(a)
                mux.lower_down(binding)
        elif action == "rebalance":
            mux.rebalance()
        elif action == "step":
            _step(rig, a)
        elif action == "batch":
            host.after_batch()
        elif action == "run":
            rig.run()
        elif action == "fail" or not self.conns:
            return
        else:
            conn = self.conns[a % len(self.conns)]
            if action in ("move", "move_mtu"):
                changes: dict[str, Any] = {"NextHop": HOPS[b]}
                if action == "move_mtu":
                    changes["PathMtu"] = 1200 + len(self.replies)
                self.ask(action, host.app_update_object, conn, "path", changes)
            elif action == "arp":
                mac = b"\x02\x00\x00\x00\x01" + bytes([len(self.replies) % 256])
                changes = {"DlDestinationAddress": mac}
                self.ask(action, host.app_update_object, conn, "neighbor", changes)
            elif action == "mtu":
                mtu = {"PathMtu": 1300 + len(self.replies)}
                self.ask(action, host.app_update_object, conn, "path", mtu)
            elif action == "invalidate":
                self.ask(action, host.app_invalidate, conn, b)
            elif action == "upload":
                self.ask(action, host.app_upload, conn)
            else:
                self.ask(action, host.app_close, conn)

    def answered_and_drained(self) -> None:
        """Every request answered (with a contract code when refused); then every connection
        closed, and every table of every layer empty."""
        rig, host, mux = self.rig, self.rig.host, self.mux
        for what, reply in self.replies:
            assert reply.done, (what, reply)
            if reply.error is not None:
                assert reply.error.symbol in CODES, (what, reply)
        for conn in self.conns:
            rig.call(host.app_close, conn)
        rig.advance(CORRUPT_RETRY_MAX)
        assert rig.problems() == []
        assert not any(host.leftovers().values()), host.leftovers()
        assert not any(mux.leftovers().values()), mux.leftovers()
        _check_drained(rig)
        for name in TEAM:
            assert not rig.contexts(name), name


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TEAM_ACTIONS, min_size=10, max_size=60))
@example(CROSSING)
@example(HELD_CORRUPT)
@example(STRAY_CORRUPT)
def test_moves_through_a_team_among_failures_and_returns(
    actions: list[tuple[str, Any, Any]],
) -> None:
    """The same over a teaming MUX of three NICs, which NICs fail and recover (spec §5.5) or
    are taken out and put back, and fail the MUX's own calls of a move."""
    walk = TeamWalk()
    rig, mux = walk.rig, walk.mux
    for action, a, b in actions:
        walk.do(action, a, b)
    rig.run()
    assert rig.problems() == []
    _check_team(rig, {TEAM[i] for i in walk.failed | walk.down})
    # the end: every NIC back in service, and every connection closed
    for nic in rig.targets.values():
        nic.fail_next.clear()
    for i in walk.failed:
        rig.targets[TEAM[i]].recover_adapter()
        rig.run()
    for i in walk.down:
        mux.lower_up(mux.lower_list()[i].binding)
        rig.run()
    rig.advance(CORRUPT_RETRY_MAX)
    walk.answered_and_drained()
