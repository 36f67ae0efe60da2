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
from tests.unit.test_host_next_hop_interleavings import (
    CROSSING,
    HELD_CORRUPT,
    TEAM,
    TEAM_ACTIONS,
    TEAM_NIC,
    TeamWalk,
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
    walk = TeamWalk()
    rig, mux, host = walk.rig, walk.mux, walk.rig.host
    for action, a, b in actions:
        walk.do(action, a, b)
    rig.run()
    assert rig.problems() == []
    # every NIC back in service but `gone`, which fails now if it had not (spec §5.5) and
    # stays failed; the MUX's corrupt copies retried meanwhile
    for nic in rig.targets.values():
        nic.fail_next.clear()
    if gone not in walk.failed:
        rig.targets[TEAM[gone]].fail_adapter()
        rig.run()
    for i in walk.failed - {gone}:
        rig.targets[TEAM[i]].recover_adapter()
        rig.run()
    for i in walk.down:
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
    walk.answered_and_drained()
