"""Two paths moved crosswise through a teaming MUX (spec §3.4 (b)) while every NIC of the team
fails in turn (spec §5.5): path 1 from neighbor A to B and back to A, path 2 from A to B. Each
path's copies on the NICs failed by then stay under the other neighbor's copy there (a failed
NIC's copies are left to the failover, `relink`). The host then terminates each neighbor with
the path it has under it: each neighbor's copies have the other's path copy under them. The
MUX sends each terminate's connections and paths at once and holds back only those neighbor
copies until what hangs under them has gone (spec §3.1: dependents first), so both terminates
complete; waiting with the whole tree, each waited for the other and the connections stayed
uploading for ever."""

from __future__ import annotations

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_next_hop_interleavings import HOPS, _check_drained, _teamed_rig


def _cross() -> tuple[HostRig, MuxIm, list[int], list[Reply]]:
    """The crossing moves, with every NIC failed by the end (none back yet): the host's
    connections, and its requests' replies."""
    rig, mux = _teamed_rig()
    host = rig.host
    conns: list[int] = []
    replies: list[Reply] = []

    def connect(i: int) -> None:
        conn, wire = rig.open(remote=(f"127.0.0.{i + 1}", 80))
        wire.auto_ack = True
        conns.append(conn)
        reply = Reply()
        replies.append(reply)
        host.app_offload(conn, None, reply)

    def move(i: int, hop: int) -> None:
        reply = Reply()
        replies.append(reply)
        host.app_update_object(conns[i % len(conns)], "path", {"NextHop": HOPS[hop]}, reply)

    for _ in range(4):
        connect(0)
    rig.targets["nic1"].fail_adapter()
    connect(0)
    connect(1)
    move(0, 1)  # path 127.0.0.1 → B
    connect(0)
    rig.targets["nic0"].fail_adapter()
    move(0, 0)  # back → A
    move(5, 1)  # path 127.0.0.2 → B
    rig.targets["nic2"].fail_adapter()
    rig.run()
    return rig, mux, conns, replies


def _recover_and_close(rig: HostRig, mux: MuxIm, conns: list[int], replies: list[Reply]) -> None:
    """Every NIC back: every request answered, every connection up or offloaded again; then
    every connection closed, and every table and gauge empty."""
    host = rig.host
    for name in ("nic0", "nic1", "nic2"):
        rig.targets[name].recover_adapter()
        rig.run()
    assert all(r.done for r in replies), replies
    assert all(host.tcbs[c].state in ("host", "offloaded") for c in conns), {
        c: host.tcbs[c].state for c in conns
    }
    assert not mux.deferred, mux.leftovers()
    assert not mux.held_terminates, mux.leftovers()
    for conn in conns:
        rig.call(host.app_close, conn)
    rig.run()
    assert rig.problems() == []
    assert not any(host.leftovers().values()), host.leftovers()
    assert not any(mux.leftovers().values()), mux.leftovers()
    _check_drained(rig)


def test_crossing_moves_while_every_nic_fails_do_not_deadlock_the_uploads() -> None:
    _recover_and_close(*_cross())


def test_the_other_neighbors_terminate_does_not_wait_for_a_failed_nics_resume() -> None:
    """nic2 failed while the move of path 1 back to A had a copy of A on its way there: nic2
    holds it until its RESUME, and A's terminate completes only after that copy has gone
    (spec §9 item 8). Its connections and path go below at once all the same, so B's
    terminate, which waited for path 1's copies under B's, completes before any RESUME: path
    2's connection is up."""
    rig, mux, conns, replies = _cross()
    path2 = conns[5]
    assert rig.host.tcbs[path2].state == "host", {c: rig.host.tcbs[c].state for c in conns}
    assert len(mux.held_terminates) == 1 and not mux.deferred, mux.leftovers()
    _recover_and_close(rig, mux, conns, replies)
