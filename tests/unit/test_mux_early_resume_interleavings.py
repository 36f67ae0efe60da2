"""Property: what a teaming MUX does after it RESUMEd above while a terminate it holds for a
failed NIC's neighbor copy is still out (`failover.evacuated`, `MuxIm.evacuating_held`).

A sequence that leaves such a terminate held on nic2 (test_host_next_hop_interleavings'
CROSSING: one, with its connections uploaded; TWO_HELD here: two, one with a connection nic2
found corrupt) or one that held one for a while (HELD_CORRUPT) runs to the end, nic0 and nic1
come back, and nic2 stays failed: the MUX has RESUMEd above. Random team actions follow (offloads, next-hop changes, updates,
invalidates, uploads, closes, nic0 and nic1 failing, taken out, failing the MUX's calls, and
rebalances), nic2 still out. After each one, and at each quiescent point:

- the connections the pause does not wait for are asked-up ones (`evacuating`) of a
  terminate the MUX holds (`held_terminates`), whose part on their NIC is back: none of
  them is still being uploaded below (spec §5.5: RESUME once the uploads are done);
- a MUX not paused above has nothing else asked up: no RESUME went up while a connection
  was still on its way up;
- once everything is delivered the MUX is paused exactly while a connection is on its way
  up, and the host is paused exactly when the MUX is (the PAUSE and RESUME it saw
  alternate: a second PAUSE or a lost RESUME would leave the two apart);

then nic0 and nic1 come back, the MUX is not paused, nic2 comes back at last, every request
is answered, and every table drains (spec §9 item 8)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chimneyd.drivers.mux.mux import CORRUPT_RETRY_MAX, MuxIm
from chimneyd.drivers.mux.objects import MuxConnection
from chimneyd.ndis.lifecycle import Phase
from chimneyd.testing.hostrig import HostRig
from tests.unit.test_host_next_hop_interleavings import (
    ACTIONS,
    CROSSING,
    HELD_CORRUPT,
    TEAM,
    TeamWalk,
)

#: Two neighbors' terminates held for copies on nic2, one with a connection nic2 found corrupt
#: (spec §3.7), once nic0 and nic1 are back: found by a search over moves, offloads and NIC
#: failures ending with nic2's (CROSSING leaves one, with no corrupt connection; HELD_CORRUPT's
#: has completed by then). Since the host terminates connections in a call of their own,
#: before their path and neighbor (`terminate.flush_terminates`), it leaves one, naming no
#: connection: kept as a walk that once did (the MUX's side: test_mux_held_pause)
TWO_HELD: list[tuple[str, Any, Any]] = [
    ("move", 1, 2),
    ("connect", 2, None),
    ("move", 1, 1),
    ("fail_nic", 1, None),
    ("fail_team", 2, "MiniportTerminateOffload"),
    ("connect", 1, None),
    ("connect", 2, None),
    ("fail_nic", 0, None),
    ("move", 0, 2),
    ("move", 1, 1),
    ("fail_nic", 2, None),
]
#: the NICs that come back; nic2 holds the held terminate's copy and stays failed
BACK = st.integers(0, 1)
TAIL_ACTIONS = st.one_of(
    ACTIONS,
    st.tuples(st.just("fail_nic"), BACK, st.none()),  # UPLOAD_ALL; again: RESUME
    st.tuples(st.just("nic_down"), BACK, st.none()),  # taken out; again: put back
    st.tuples(st.just("rebalance"), st.none(), st.none()),
    st.tuples(
        st.just("fail_team"),
        BACK,
        st.sampled_from(
            [
                "MiniportUpdateOffload",
                "MiniportInitiateOffload[neighbor]",
                "MiniportTerminateOffload",
            ]
        ),
    ),
    st.tuples(st.just("run"), st.none(), st.none()),
)


def _check_held(mux: MuxIm) -> None:
    """The early RESUME's bookkeeping, at any point: see the module's docstring."""
    assert mux.evacuating_held <= mux.evacuating, mux.leftovers()
    held_conns = {
        obj
        for call in mux.held_terminates
        for _, _, obj in call.links
        if isinstance(obj, MuxConnection)
    }
    for conn in mux.evacuating_held:
        assert conn in held_conns, (conn, mux.leftovers())
        # its NIC's part of the terminate is back: uploaded, or found corrupt (spec §3.7)
        assert conn.lifecycle.phase in (Phase.TERMINATED, Phase.FAILED), (
            conn,
            conn.lifecycle.phase,
        )
    if not mux.paused_above:
        assert mux.evacuating <= mux.evacuating_held, (
            sorted((c.id, c.lifecycle.phase.name) for c in mux.evacuating - mux.evacuating_held),
            mux.leftovers(),
        )


def _check_quiet(rig: HostRig, mux: MuxIm) -> None:
    """Everything delivered: paused exactly while a connection is on its way up, and the host
    paused exactly when the MUX is."""
    _check_held(mux)
    uploading = mux.evacuating - mux.evacuating_held
    assert mux.paused_above == bool(uploading), (
        sorted((c.id, c.lifecycle.phase.name) for c in uploading),
        mux.leftovers(),
    )
    assert bool(rig.host.paused) == mux.paused_above, (rig.host.paused, mux.paused_above)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([CROSSING, HELD_CORRUPT, TWO_HELD]),
    st.lists(TAIL_ACTIONS, max_size=40),
)
@example(CROSSING, [("connect", 1, None), ("move", 7, 2), ("rebalance", None, None)])
@example(HELD_CORRUPT, [("fail_nic", 0, None), ("run", None, None), ("fail_nic", 0, None)])
@example(TWO_HELD, [])
def test_after_an_early_resume_the_pause_and_held_tables_stay_coherent(
    prefix: list[tuple[str, Any, Any]], tail: list[tuple[str, Any, Any]]
) -> None:
    walk = TeamWalk()
    rig, mux = walk.rig, walk.mux
    failed, down = walk.failed, walk.down

    def act(action: str, a: Any, b: Any) -> None:
        walk.do(action, a, b)
        if action == "run":
            _check_quiet(rig, mux)

    for action, a, b in prefix:
        act(action, a, b)
    rig.run()
    for i in sorted(failed - {2}):  # nic0 and nic1 back; nic2 stays failed
        act("fail_nic", i, None)
        rig.run()
    for nic in rig.targets.values():
        nic.fail_next.clear()
    _check_quiet(rig, mux)
    assert not mux.paused_above, mux.leftovers()  # the early RESUME
    if prefix is TWO_HELD:  # what the search found it for, with the host's old trees
        assert len(mux.held_terminates) == 1, mux.leftovers()
        assert not mux.evacuating_held, mux.leftovers()  # no connection waits for nic2
    for action, a, b in tail:
        act(action, a, b)
        _check_held(mux)
    rig.run()
    assert rig.problems() == []
    _check_quiet(rig, mux)
    for nic in rig.targets.values():
        nic.fail_next.clear()
    for i in sorted(failed - {2}):
        act("fail_nic", i, None)
        rig.run()
    for i in sorted(down):
        act("nic_down", i, None)
        rig.run()
    rig.advance(CORRUPT_RETRY_MAX)
    assert rig.problems() == []
    _check_quiet(rig, mux)
    assert not mux.paused_above, mux.leftovers()
    # nic2 back at last: every request answered, then everything closed and drained
    rig.targets[TEAM[2]].recover_adapter()
    rig.run()
    rig.advance(CORRUPT_RETRY_MAX)
    _check_quiet(rig, mux)
    walk.answered_and_drained()
