"""Property: a teaming MUX whose NIC fails and never returns does not keep the layer above
paused. After random interleavings of next-hop changes, updates, invalidates, uploads, closes,
NIC failures and returns, NICs taken out and put back, rebalances and NICs failing the MUX's
calls (test_host_next_hop_interleavings' team actions), every NIC but one comes back and that
one stays failed. Once nothing is left to deliver, the MUX has RESUMEd above (spec §5.5) and
the host starts offloads again: a terminate the MUX holds only for a neighbor copy that NIC
holds the offload of (`MuxCall.held`) waits for it, the pause does not. Then that NIC comes
back too, every request is answered and every table drains (spec §9 item 8: no terminate
completed before its copies are gone)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chimneyd.drivers.mux.mux import CORRUPT_RETRY_MAX
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import Reply
from tests.unit.test_host_next_hop_interleavings import (
    CODES,
    CROSSING,
    HELD_CORRUPT,
    HOPS,
    TEAM,
    TEAM_ACTIONS,
    TEAM_NIC,
    _check_drained,
    _teamed_rig,
)

#: everything delivered (the test's own action)
RUN = ("run", None, None)
#: (actions, the NIC that never returns): random lists, and random lists after the sequences
#: that leave a neighbor's terminate holding back a copy on nic2 (random lists alone rarely
#: come that way), run to the end, with nic2 the one that never returns: what follows may
#: move, fail, corrupt or bring back anything meanwhile
CASES = st.one_of(
    st.tuples(st.lists(TEAM_ACTIONS, min_size=10, max_size=60), TEAM_NIC),
    st.tuples(
        st.builds(
            lambda prefix, tail: [*prefix, RUN, *tail],
            st.sampled_from([CROSSING, HELD_CORRUPT]),
            st.lists(TEAM_ACTIONS, max_size=30),
        ),
        st.just(2),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CASES)
@example((CROSSING, 2))
@example((HELD_CORRUPT, 2))
@example(([*CROSSING, ("fail_team", 2, "MiniportTerminateOffload")], 2))
def test_a_nic_that_never_returns_does_not_keep_the_team_paused(
    case: tuple[list[tuple[str, Any, Any]], int],
) -> None:
    actions, gone = case
    rig, mux = _teamed_rig()
    host = rig.host
    conns: list[int] = []
    replies: list[tuple[str, Reply]] = []
    failed: set[int] = set()
    down: set[int] = set()

    def ask(what: str, request: Any, conn: int, *args: Any) -> None:
        reply = Reply()
        replies.append((what, reply))
        request(conn, *args, reply)

    for action, a, b in actions:
        if action == "connect":
            conn, wire = rig.open(remote=(f"127.0.0.{a + 1}", 80))
            wire.auto_ack = True
            conns.append(conn)
            ask("offload", host.app_offload, conn, None)
        elif action == "fail_team":
            fail_next(rig.targets[TEAM[a]], b, S.NDIS_STATUS_FAILURE)
        elif action == "fail_nic":
            if a in failed:
                failed.discard(a)
                rig.targets[TEAM[a]].recover_adapter()
            else:
                failed.add(a)
                rig.targets[TEAM[a]].fail_adapter()
        elif action == "nic_down":
            binding = mux.lower_list()[a].binding
            if a in down:
                down.discard(a)
                mux.lower_up(binding)
            else:
                down.add(a)
                mux.lower_down(binding)
        elif action == "rebalance":
            mux.rebalance()
        elif action == "step":
            for _ in range(a):
                if not rig.scheduler.queue:
                    break
                rig.scheduler.run_one()
            host.after_batch()
        elif action == "batch":
            host.after_batch()
        elif action == "run":
            rig.run()
        elif action == "fail" or not conns:
            continue
        else:
            conn = conns[a % len(conns)]
            if action in ("move", "move_mtu"):
                changes: dict[str, Any] = {"NextHop": HOPS[b]}
                if action == "move_mtu":
                    changes["PathMtu"] = 1200 + len(replies)
                ask(action, host.app_update_object, conn, "path", changes)
            elif action == "arp":
                mac = b"\x02\x00\x00\x00\x01" + bytes([len(replies) % 256])
                changes = {"DlDestinationAddress": mac}
                ask(action, host.app_update_object, conn, "neighbor", changes)
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
    # every NIC back in service but `gone`, which fails now if it had not (spec §5.5) and
    # stays failed; the MUX's corrupt copies retried meanwhile
    for nic in rig.targets.values():
        nic.fail_next.clear()
    if gone not in failed:
        rig.targets[TEAM[gone]].fail_adapter()
        rig.run()
    for i in failed - {gone}:
        rig.targets[TEAM[i]].recover_adapter()
        rig.run()
    for i in down:
        mux.lower_up(mux.lower_list()[i].binding)
        rig.run()
    rig.advance(CORRUPT_RETRY_MAX)
    assert rig.problems() == []
    assert not mux.paused_above and not host.paused, (
        sorted((c.id, mux.lowers[c.lower.id].name, c.lifecycle.phase.name) for c in mux.evacuating),
        [sorted(map(str, c.held)) for c in mux.held_terminates],
        mux.leftovers(),
    )
    # the NIC returns at last: every request answered, then everything closed and drained
    rig.targets[TEAM[gone]].recover_adapter()
    rig.run()
    rig.advance(CORRUPT_RETRY_MAX)
    for what, reply in replies:
        assert reply.done, (what, reply)
        if reply.error is not None:
            assert reply.error.symbol in CODES, (what, reply)
    for conn in conns:
        rig.call(host.app_close, conn)
    rig.advance(CORRUPT_RETRY_MAX)
    assert rig.problems() == []
    assert not any(host.leftovers().values()), host.leftovers()
    assert not any(mux.leftovers().values()), mux.leftovers()
    _check_drained(rig)
    for name in TEAM:
        assert not rig.contexts(name), name
