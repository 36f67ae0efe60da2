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
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_next_hop_interleavings import (
    ACTIONS,
    CODES,
    CROSSING,
    HELD_CORRUPT,
    HOPS,
    TEAM,
    _check_drained,
    _teamed_rig,
)

#: Two neighbors' terminates held for copies on nic2, one with a connection nic2 found corrupt
#: (spec §3.7), once nic0 and nic1 are back: found by a search over moves, offloads and NIC
#: failures ending with nic2's (CROSSING leaves one, with no corrupt connection; HELD_CORRUPT's
#: has completed by then)
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

    def act(action: str, a: Any, b: Any) -> None:
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
            _check_quiet(rig, mux)
        elif action == "fail" or not conns:
            return
        else:
            conn = conns[a % len(conns)]
            if action in ("move", "move_mtu"):
                changes: dict[str, Any] = {"NextHop": HOPS[b]}
                if action == "move_mtu":
                    changes["PathMtu"] = 1200 + len(replies)
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
    if prefix is TWO_HELD:  # what the search found it for
        assert len(mux.held_terminates) == 2, mux.leftovers()
        assert any(c.lifecycle.phase is Phase.FAILED for c in mux.evacuating_held)
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
