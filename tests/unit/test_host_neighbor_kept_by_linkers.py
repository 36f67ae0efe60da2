"""A neighbor on its way out (invalidated, spec §3.5) with nothing of the host's under it,
kept from its terminate only by an initiate still below that names it as a linker (spec §3.1),
stands for its next hop no more: a connection new to that next hop goes under a fresh
neighbor at once, as it does when the old one is being terminated (`offload.current`), and
does not wait for that initiate — which a NIC may hold until its RESUME (spec §5.5).

The shape: two paths moved under a second neighbor (spec §3.4 (b)); a new connection's
initiate, linking it under that neighbor and the first path, held below; the first path moved
back; the second neighbor invalidated through the second path's connection, which goes up,
and the second path with it. Nothing the host holds hangs under the second neighbor, but the
held initiate names it. A connection new to the second path then waited, its offload
unanswered, until the held initiate came back."""

from __future__ import annotations

import pytest

from chimneyd.drivers.mux.mux import CORRUPT_RETRY_MAX
from chimneyd.ndis.lifecycle import Phase
from tests.unit.test_host_next_hop_interleavings import HOPS, TeamWalk
from tests.unit.test_host_terminate_waits_held_initiate import OneNic, _neighbor


@pytest.mark.parametrize("new", ["connection", "move"])
@pytest.mark.parametrize("im", [False, True], ids=["nic", "pass-through-im"])
def test_a_new_connection_does_not_wait_for_an_initiate_keeping_an_invalidated_neighbor(
    im: bool, new: str
) -> None:
    """`new`: a connection new to the second path, or the first neighbor's path moved to the
    second neighbor's next hop (spec §3.4 (b)): it goes under a fresh neighbor too."""
    one = OneNic(im)
    rig, host = one.rig, one.host
    one.connect(2)  # keeps the first neighbor offloaded
    one.connect(1)
    one.connect(1)
    one.connect(3)
    one.move(1, 1)  # the first path (127.0.0.1) under a second neighbor
    one.move(3, 1)  # the second path (127.0.0.3) too
    rig.run()
    one.connect(1, run=False)  # its initiate links under the second neighbor and first path
    held = rig.hold_below("MiniportInitiateOffload")
    one.move(1, 0)  # the first path back under the first neighbor
    rig.run()
    one.ask(host.app_invalidate, 3, "neighbor")  # the second neighbor, on its way out
    rig.run()
    old = _neighbor(host.all_objects(), HOPS[1])
    assert old is not None and old.lifecycle.phase is Phase.INVALIDATED
    assert old.pending_ops == 1  # the held initiate
    if new == "connection":
        one.connect(3)  # the second path again: under the second neighbor's next hop
    else:
        one.move(0, 1)
        rig.run()
    answered = one.replies[-1]
    assert answered.done and answered.error is None, "it waited for the held initiate"
    fresh = _neighbor(list(host.objects.values()), HOPS[1])
    assert fresh is not None and fresh is not old
    assert fresh.lifecycle.phase is Phase.OFFLOADED
    rig.release(held)
    # the old neighbor goes once the initiate naming it is back (spec §3.1)
    assert old.lifecycle.phase is Phase.IDLE and id(old) not in host.leaving
    one.answered_and_drained()


def test_through_a_team() -> None:
    """The same through a teaming MUX, the initiate held on its way to the MUX."""
    walk = TeamWalk()
    rig, host = walk.rig, walk.rig.host
    walk.do("connect", 1, None)  # keeps the first neighbor offloaded
    walk.do("connect", 0, None)
    walk.do("connect", 0, None)
    walk.do("connect", 2, None)
    rig.run()
    walk.do("move", 1, 1)
    walk.do("move", 3, 1)
    rig.run()
    walk.do("connect", 0, None)
    held = rig.hold_below("MiniportInitiateOffload")
    walk.do("move", 1, 0)
    rig.run()
    walk.do("invalidate", 3, "neighbor")
    rig.run()
    old = _neighbor(host.all_objects(), HOPS[1])
    assert old is not None and old.lifecycle.phase is Phase.INVALIDATED
    walk.do("connect", 2, None)
    rig.run()
    what, offloaded = walk.replies[-1]
    assert what == "offload"
    assert offloaded.done and offloaded.error is None, "it waited for the held initiate"
    rig.release(held)
    assert id(old) not in host.leaving
    rig.advance(CORRUPT_RETRY_MAX)
    walk.answered_and_drained()
