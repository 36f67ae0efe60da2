"""Property: whatever asks a connection up at a teaming MUX, the MUX is paused above while one
it asked up is still on its way (spec §3.8, §5.5), and at rest it is paused exactly then, with
the host paused exactly when it is.

test_mux_own_asks_interleavings' actions (offloads, updates, invalidates, uploads, closes,
NICs failing, taken out, failing the MUX's calls, rebalances, the MUX's own requests, its
bugs) and next-hop changes among them, with NICs failing their updates: a move one NIC fails
and another cannot undo leaves a path copy under another neighbor's copy, whose connections
the MUX asks up itself (`failover.strays`); and terminates the MUX fails as corrupt
(`MuxIm.fail_unserved_terminate`). After every delivery the early-resume walks' rule holds
(`_check_held`: not paused above, nothing asked up is still on its way but in a terminate
held for a neighbor copy); after each full run, `_check_quiet`. Then every NIC comes back,
nothing is left paused, every request is answered and every table drains."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chimneyd.drivers.mux.mux import CORRUPT_RETRY_MAX
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from tests.unit.test_host_next_hop_interleavings import MOVE, TEAM, TEAM_NIC
from tests.unit.test_mux_early_resume_interleavings import _check_held, _check_quiet
from tests.unit.test_mux_own_asks_interleavings import OWN_ACTIONS, OwnAsksWalk

#: a NIC fails its next update, or the one after (a move's undo, `relink._undo`)
FAIL_UPDATE = st.tuples(st.just("fail_update"), TEAM_NIC, st.integers(0, 1))
ACTIONS = st.one_of(OWN_ACTIONS, MOVE, MOVE, FAIL_UPDATE, FAIL_UPDATE)

#: test_mux_relink_pause's scenario in a walk: two connections on one path (nic0, nic1), a
#: move nic1 fails and nic0 cannot undo
STRAY: list[tuple[str, Any, Any]] = [
    ("connect_run", 0, None),
    ("connect_run", 0, None),
    ("fail_update", 0, 1),
    ("fail_update", 1, 0),
    ("move", 0, 1),
]
#: a failover's connection whose terminate the MUX raises on (failed as corrupt). The host
#: terminates it again at once (spec §3.7 step 4), so the walk does not tell whether the
#: pause waited for that terminate (test_mux_corrupt_pause does); it keeps the path walked
MUX_CORRUPT: list[tuple[str, Any, Any]] = [
    ("connect_run", 0, None),
    ("mux_raise", "MiniportTerminateOffload", 0),
    ("nic_down", 0, None),
    ("run", None, None),
]


class PauseWalk(OwnAsksWalk):
    """`OwnAsksWalk`, and a NIC failing an update (`FAIL_UPDATE`); the early-resume rule
    checked after every delivery, not only between actions (`_check_held`)."""

    def __init__(self) -> None:
        super().__init__()
        scheduler, mux = self.rig.scheduler, self.mux
        run_one = scheduler.run_one

        def run_one_checked() -> bool:
            ran = run_one()
            _check_held(mux)
            return ran

        scheduler.run_one = run_one_checked  # type: ignore[method-assign]

    def do(self, action: str, a: Any, b: Any) -> None:
        if action == "fail_update":
            nic = self.rig.targets[TEAM[a]]
            fail_next(nic, "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE, skip=b)
        else:
            super().do(action, a, b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ACTIONS, min_size=5, max_size=50))
@example(STRAY)
@example(MUX_CORRUPT)
def test_the_mux_is_paused_while_what_it_asked_up_is_on_its_way(
    actions: list[tuple[str, Any, Any]],
) -> None:
    walk = PauseWalk()
    rig, mux = walk.rig, walk.mux
    for action, a, b in actions:
        walk.do(action, a, b)
        _check_held(mux)
        if action == "run":
            _check_quiet(rig, mux)
    rig.run()
    assert rig.problems() == []
    _check_quiet(rig, mux)
    walk.clear_faults()
    for i in sorted(walk.failed):
        rig.targets[TEAM[i]].recover_adapter()
        rig.run()
    for i in sorted(walk.down):
        mux.lower_up(mux.lower_list()[i].binding)
        rig.run()
    walk.acknowledge(True)
    rig.run()
    rig.advance(CORRUPT_RETRY_MAX)
    _check_quiet(rig, mux)
    assert not mux.paused_above, mux.leftovers()
    walk.answered_and_drained()
