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

from chimneyd.testing.hostrig import Reply
from tests.unit.test_host_next_hop_interleavings import HOPS, _check_drained, _teamed_rig


def test_crossing_moves_while_every_nic_fails_do_not_deadlock_the_uploads() -> None:
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
