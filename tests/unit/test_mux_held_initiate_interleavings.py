"""Property: the teaming walk (`test_host_next_hop_interleavings.TeamWalk`: next-hop changes,
ARP and MTU updates, invalidates, connections offloaded, uploaded and closed, NICs failing and
coming back or taken out, rebalances, the MUX's own calls failed) with initiates the MUX sends
to its NICs held on their way there and released later, in any order. An initiate held below
the MUX names the NIC's copies of the objects it links under (spec §2.3): none of them may go
before it reaches its NIC and completes (spec §3.1), whatever the MUX does meanwhile with
what else hangs under them (`MuxIm._terminate_unused`, `Instance.linked`). Every request is
answered, no spec §9 invariant breaks, each connection hangs at its NIC where the host has it,
and once everything is closed every layer's tables are empty."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chimneyd.drivers.mux.mux import CORRUPT_RETRY_MAX
from tests.unit.test_host_next_hop_interleavings import TEAM, TEAM_ACTIONS, TeamWalk, _check_team

HOLD = st.tuples(st.just("hold"), st.integers(0, 3), st.none())
RELEASE = st.tuples(st.just("release"), st.integers(0, 3), st.none())
RUN = st.tuples(st.just("run"), st.none(), st.none())
ACTIONS = st.one_of(TEAM_ACTIONS, HOLD, HOLD, RELEASE, RUN)

#: a fourth connection on the first path goes to nic0 (round robin), linked under nic0's
#: copies of the path and its neighbor, and is held on its way there; the path moves under a
#: second neighbor meanwhile. Before, the MUX terminated nic0's copy of the first neighbor as
#: unused at once, and nic0 then took the held initiate's linker for an object it no longer
#: had (`AttributeError` in the target's initiate)
MOVED_UNDER_HELD: list[tuple[str, Any, Any]] = [
    ("connect", 0, None),
    ("connect", 0, None),
    ("connect", 0, None),
    ("run", None, None),
    ("connect", 0, None),
    ("hold", 0, None),
    ("move", 0, 1),
    ("run", None, None),
    ("release", 0, None),
]
#: the same, the path moved back under the first neighbor before the initiate gets through
#: (the host's shape, `test_host_terminate_waits_held_initiate`, one layer down)
MOVED_BACK_UNDER_HELD = [*MOVED_UNDER_HELD[:7], ("run", None, None), ("move", 0, 0)]
MOVED_BACK_UNDER_HELD += MOVED_UNDER_HELD[7:]
#: a connection on a second path, new to the MUX and linked under nic0's copy of the first
#: neighbor only, held too while the first path moves: the neighbor's copy there is left with
#: nothing but that initiate naming it
NEW_PATH_UNDER_HELD = [
    *MOVED_UNDER_HELD[:6],
    ("connect", 1, None),
    ("hold", 0, None),
    ("move", 0, 1),
    ("run", None, None),
    ("release", 1, None),
    ("release", 0, None),
]


class HeldInitiateWalk(TeamWalk):
    """A `TeamWalk` that can hold the MUX's initiates on their way to a NIC."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Any] = []

    def do(self, action: str, a: Any, b: Any) -> None:
        if action == "hold":
            self.hold()
        elif action == "release":
            if self.held:
                self.rig.scheduler.queue.append(self.held.pop(a % len(self.held)))
        else:
            super().do(action, a, b)

    def hold(self) -> None:
        """Deliver until an initiate from the MUX to a NIC is queued; take it out."""
        queue = self.rig.scheduler.queue
        nics = {id(self.rig.targets[name]) for name in TEAM}
        self.rig.host.after_batch()
        while queue:
            for i, (layer, fn, _args) in enumerate(queue):
                if id(layer) in nics and getattr(fn, "__name__", "") == "MiniportInitiateOffload":
                    self.held.append(queue[i])
                    del queue[i]
                    return
            self.rig.scheduler.run_one()

    def release_all(self) -> None:
        while self.held:
            self.rig.scheduler.queue.append(self.held.pop(0))
            self.rig.run()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ACTIONS, min_size=10, max_size=60))
@example(MOVED_UNDER_HELD)
@example(MOVED_BACK_UNDER_HELD)
@example(NEW_PATH_UNDER_HELD)
def test_initiates_held_below_the_mux_among_moves_and_failures(
    actions: list[tuple[str, Any, Any]],
) -> None:
    walk = HeldInitiateWalk()
    rig, mux = walk.rig, walk.mux
    for action, a, b in actions:
        walk.do(action, a, b)
    rig.run()
    walk.release_all()
    assert rig.problems() == []
    _check_team(rig, {TEAM[i] for i in walk.failed | walk.down})
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
