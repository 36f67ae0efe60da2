"""Property: random interleavings of next-hop changes (spec §3.4 (b)) of a few paths, with
ARP and MTU updates (§3.4 (a)), invalidates (§3.5), connections offloaded, uploaded and
closed, and a target failing an update or an initiate, all with the deliveries below cut short
at random points, keep the host's rules: every request answered once, with a contract code;
no spec §9 invariant broken; every offloaded connection's path hangs, at the target, under
the neighbor the host has it under; and once every connection is closed, the host's tables
are empty (its route cache within its bound)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
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


def _step(rig: HostRig, n: int) -> None:
    """Deliver up to `n` queued deliveries, then the host's end-of-drain batch."""
    for _ in range(n):
        if not rig.scheduler.queue:
            break
        rig.scheduler.run_one()
    rig.host.after_batch()


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
@given(st.lists(ACTIONS, min_size=1, max_size=60), st.booleans())
def test_moves_among_updates_invalidates_closes_and_failures(
    actions: list[tuple[str, Any, Any]], im: bool
) -> None:
    """On two NICs, each behind a pass-through IM (`im`) or not."""
    rig = HostRig(NICS, im=im, host_options={"object_cache_cap": CAP})
    host = rig.host
    conns: list[int] = []
    replies: list[tuple[str, Reply]] = []

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
    assert host.stats.offloads_active == 0
    for nic in NICS:
        assert not rig.contexts(nic)
