"""Property: a connection the layer above has had a mandatory upload request for, from its
NIC or from the MUX (`MuxConnection.asked`), is never one the MUX could still ask up
(`ASKABLE`: OFFLOADED, UPLOAD_SUGGESTED, INVALIDATED).

So `MuxIm.retrieve_all` meets a connection it can ask up only when nothing mandatory went up
for it yet: it asks it (spec §5.2), and a connection whose mandatory request went up already
is UPLOAD_REQUESTED (or further on its way, TERMINATING or FAILED), which it only counts
among those on their way up. Why, by the places `asked` becomes ASKED_MANDATORY:

* `MuxIm._news`, for a NIC's retrieve that goes up: a mandatory reason (every reason in
  `_ALWAYS_NEWS` is one), and the relay fires `Event.RETRIEVE` right after
  (`PassThroughIm.ProtocolTcpOffloadEvent`): every live phase goes to UPLOAD_REQUESTED,
  TERMINATING and FAILED stay; a retrieve that comes while the connection is OFFLOADING, or
  its failed terminate is completing, waits in `early`, `_news` judged only when it goes up;
* `retrieve_all` itself, after firing `Event.RETRIEVE`, or on one UPLOAD_REQUESTED;
* `MuxIm._ask_upload`, only on one UPLOAD_REQUESTED;
* `MuxIm.fail_unserved_terminate`, which then leaves it FAILED.

And an offloaded object's phase never goes back into ASKABLE from UPLOAD_REQUESTED,
TERMINATING or FAILED (`lifecycle.PHASES[Role.OFFLOADED_OBJECT]`; the host's own role, in
which a retrieve leaves an invalidated connection INVALIDATED, is not the MUX's). The walks
here check it after every delivery and at each `retrieve_all`: test_mux_pause_coherence's
(the MUX's and the NICs' own requests, failovers, rebalances, strays, terminates failed as
corrupt) and test_mux_held_initiate's (initiates held below the MUX among moves and
failures)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chimneyd.drivers.mux.mux import CORRUPT_RETRY_MAX, MuxIm
from chimneyd.drivers.mux.objects import ASKABLE, ASKED_MANDATORY, MuxConnection
from tests.unit.test_host_next_hop_interleavings import TEAM, TeamWalk
from tests.unit.test_mux_held_initiate_interleavings import ACTIONS as HELD_ACTIONS
from tests.unit.test_mux_held_initiate_interleavings import MOVED_UNDER_HELD, HeldInitiateWalk
from tests.unit.test_mux_pause_coherence_interleavings import ACTIONS as PAUSE_ACTIONS
from tests.unit.test_mux_pause_coherence_interleavings import MUX_CORRUPT, STRAY, PauseWalk

#: each kind of NIC request on an offloaded connection (`REASONS`: mandatory, optional,
#: optional then mandatory, one that always goes up), then a failover and a rebalance that
#: meet it: the random walks seldom draw a NIC's request on a connection still offloaded
NIC_ASKS: list[tuple[str, Any, Any]] = [
    ("connect_run", 0, None),
    ("connect_run", 1, None),
    ("connect_run", 2, None),
    ("connect_run", 0, None),
    ("nic_ask", 0, 0),
    ("nic_ask", 1, 1),
    ("nic_ask", 2, 1),
    ("nic_ask", 2, 2),
    ("nic_ask", 3, 3),
    ("rebalance", None, None),
    ("nic_down", 0, None),
    ("run", None, None),
]


def _askable_yet_asked(entries: list[MuxConnection]) -> list[str]:
    return [
        f"{e.id} {e.lifecycle.phase.name}"
        for e in entries
        if e.asked == ASKED_MANDATORY and e.lifecycle.phase in ASKABLE
    ]


def _watch(walk: TeamWalk, mux: MuxIm) -> None:
    """Check the property after every delivery, and on what each `retrieve_all` is given
    (the MUX calls it in the middle of a delivery)."""
    scheduler = walk.rig.scheduler
    run_one, retrieve_all = scheduler.run_one, mux.retrieve_all

    def run_one_checked() -> bool:
        ran = run_one()
        assert _askable_yet_asked(mux.connections()) == []
        return ran

    def retrieve_all_checked(entries: list[MuxConnection]) -> None:
        assert _askable_yet_asked(entries) == []
        retrieve_all(entries)

    scheduler.run_one = run_one_checked  # type: ignore[method-assign]
    mux.retrieve_all = retrieve_all_checked  # type: ignore[method-assign]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PAUSE_ACTIONS, min_size=5, max_size=50))
@example(STRAY)
@example(MUX_CORRUPT)
@example(NIC_ASKS)
def test_no_askable_connection_was_asked_among_the_muxs_own_asks(
    actions: list[tuple[str, Any, Any]],
) -> None:
    walk = PauseWalk()
    rig, mux = walk.rig, walk.mux
    _watch(walk, mux)
    for action, a, b in actions:
        walk.do(action, a, b)
        assert _askable_yet_asked(mux.connections()) == []
    rig.run()
    assert rig.problems() == []
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
    walk.answered_and_drained()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(HELD_ACTIONS, min_size=10, max_size=60))
@example(MOVED_UNDER_HELD)
def test_no_askable_connection_was_asked_among_held_initiates(
    actions: list[tuple[str, Any, Any]],
) -> None:
    walk = HeldInitiateWalk()
    rig, mux = walk.rig, walk.mux
    _watch(walk, mux)
    for action, a, b in actions:
        walk.do(action, a, b)
        assert _askable_yet_asked(mux.connections()) == []
    rig.run()
    walk.release_all()
    assert rig.problems() == []
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
