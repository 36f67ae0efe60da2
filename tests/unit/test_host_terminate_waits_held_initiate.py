"""A neighbor an initiate in flight names as a linker is not terminated before that initiate
completes (spec §3.1: a neighbor or path goes only once nothing depends on it; §2.3: a
linker's new state hangs under the object it names).

The shape: connections on a path, the path moved under a second neighbor (a next-hop change,
spec §3.4 (b)), a new connection's initiate linking it under that neighbor and path held below
(by a teaming MUX while a NIC comes back, spec §5.5, or by a plain NIC paused by its failure),
and meanwhile the path moved back under the first neighbor. Nothing the host holds hangs under
the second neighbor any more — but the held initiate still names it. Terminated at once, its
terminate overtook the initiate: every layer let the neighbor's handle go, and the initiate's
linker then named a dead object. Through the MUX, the initiate's completion reached the host
for a handle with no owner and the host crashed (`offload.complete`); on a plain NIC, with or
without a pass-through IM above it, the NIC took the linker for a new offload and crashed.
Either way the connection's offload was never answered, and it stayed OFFLOADING for good."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.drivers.host.tcb import HostObject
from chimneyd.drivers.mux.mux import CORRUPT_RETRY_MAX
from chimneyd.ndis.blocks import new_neighbor_block
from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_next_hop_interleavings import (
    HOPS,
    NICS,
    TEAM,
    TeamWalk,
    _check_drained,
    _check_team,
    _check_tree,
)

#: found by a random walk (`test_mux_own_asks_interleavings`); "fail_nic" again is the RESUME
MUX_HELD: list[tuple[str, Any, Any]] = [
    ("connect", 0, None),
    ("connect", 0, None),
    ("connect", 0, None),
    ("move", 0, 1),  # the path under a second neighbor
    ("fail_nic", 0, None),
    ("connect", 1, None),
    ("connect", 0, None),  # held at nic0's failure below the MUX
    ("fail_nic", 0, None),  # nic0's RESUME: the MUX reads its capabilities again
    ("batch", None, None),  # the host's initiate of the last connection: held by the MUX
    ("move", 0, 0),  # the path back under the first: nothing the host holds is under the second
]


def _neighbor(objects: list[HostObject], next_hop: bytes) -> HostObject | None:
    return next((o for o in objects if o.block_kind == "neighbor" and o.key[2] == next_hop), None)


def test_a_neighbor_waits_for_an_initiate_the_mux_holds_that_links_under_it() -> None:
    walk = TeamWalk()
    rig, host = walk.rig, walk.rig.host
    for action, a, b in MUX_HELD:
        walk.do(action, a, b)
    rig.run()
    assert rig.problems() == []
    assert walk.replies[-1][0] == "move" and walk.replies[-1][1].error is None
    # the last offload was answered, and its connection offloaded under the path, which is
    # under the first neighbor, at the host and at every NIC (spec §2.3)
    what, offloaded = walk.replies[-2]
    assert what == "offload" and offloaded.done and offloaded.error is None, offloaded
    last = host.tcbs[walk.conns[-1]]
    assert last.lifecycle.phase is Phase.OFFLOADED
    assert last.path is not None and last.path.parent is not None
    assert last.path.parent.key[2] == HOPS[0]
    # the second neighbor went once the initiate completed: nothing depends on it
    assert _neighbor(host.all_objects(), HOPS[1]) is None
    _check_team(rig, set())
    for i in sorted(walk.failed):
        rig.targets[TEAM[i]].recover_adapter()
        rig.run()
    rig.advance(CORRUPT_RETRY_MAX)
    walk.answered_and_drained()


class OneNic:
    """host → [pass-through IM →] nic0 (and nic1), connections on two paths, the first path's
    connection kept offloaded under the first neighbor throughout."""

    def __init__(self, im: bool) -> None:
        self.im = im
        self.rig = HostRig(NICS, im=im)  # nic1 unused: the tree check reads both
        self.host = self.rig.host
        self.conns: list[int] = []
        self.replies: list[Reply] = []

    def connect(self, remote: int, run: bool = True) -> None:
        conn, wire = self.rig.open(remote=(f"127.0.0.{remote}", 80))
        wire.auto_ack = True
        self.conns.append(conn)
        reply = Reply()
        self.replies.append(reply)
        self.host.app_offload(conn, "nic0", reply)
        if run:
            self.rig.run()

    def ask(self, request: Any, conn: int, *args: Any) -> Reply:
        reply = Reply()
        self.replies.append(reply)
        request(self.conns[conn], *args, reply)
        return reply

    def move(self, conn: int, hop: int) -> None:
        self.ask(self.host.app_update_object, conn, "path", {"NextHop": HOPS[hop]})

    def answered_and_drained(self) -> None:
        rig, host = self.rig, self.host
        assert rig.problems() == []
        for reply in self.replies:
            assert reply.done and reply.error is None, reply
        _check_tree(rig, self.im)
        for conn in self.conns:
            rig.call(host.app_close, conn)
        rig.run()
        assert rig.problems() == []
        assert not any(host.leftovers().values()), host.leftovers()
        _check_drained(rig)
        assert not rig.contexts("nic0")


@pytest.mark.parametrize("hold", ["in-transit", "paused-nic"])
@pytest.mark.parametrize("im", [False, True], ids=["nic", "pass-through-im"])
def test_a_neighbor_waits_for_an_initiate_held_below_that_links_under_it(
    im: bool, hold: str
) -> None:
    """The same shape on one NIC, behind a pass-through IM or not; the initiate held on its
    way to the NIC (`in-transit`), or by the NIC itself, which holds initiates from its
    failure (OFFLOAD_PAUSE) until it works again (spec §5.5) and takes the updates and
    terminates meanwhile (`paused-nic`)."""
    one = OneNic(im)
    rig, host = one.rig, one.host
    one.connect(2)  # a path that stays under the first neighbor, keeping it offloaded
    for _ in range(3):
        one.connect(1)
    one.move(1, 1)  # the second path under a second neighbor
    rig.run()
    one.connect(1, run=False)  # its initiate: neighbor 2 (linker) → path (linker) → it (new)
    if hold == "in-transit":
        held = rig.hold_below("MiniportInitiateOffload")
    else:
        host.after_batch()
        rig.targets["nic0"].fail_adapter()
    one.move(1, 0)  # the path back under the first neighbor: nothing else under the second
    rig.run()
    assert rig.problems() == []
    last = host.tcbs[one.conns[-1]]
    assert last.lifecycle.phase is Phase.OFFLOADING  # still held below
    # the second neighbor is still offloaded: the held initiate names it
    second = _neighbor(host.all_objects(), HOPS[1])
    assert second is not None, "the second neighbor went with an initiate naming it below"
    assert second.lifecycle.phase is Phase.OFFLOADED
    assert second.handle is not None and second.handle.owner is second
    if hold == "in-transit":
        rig.release(held)
    else:
        rig.targets["nic0"].recover_adapter()
        rig.run()
    assert rig.problems() == []
    assert last.lifecycle.phase is Phase.OFFLOADED
    assert last.path is not None and last.path.parent is not None
    assert last.path.parent.key[2] == HOPS[0]
    # ... and went once it completed: nothing depends on it now
    assert _neighbor(host.all_objects(), HOPS[1]) is None
    one.answered_and_drained()


@pytest.mark.parametrize("im", [False, True], ids=["nic", "pass-through-im"])
def test_a_path_waits_for_an_initiate_held_below_that_links_under_it(im: bool) -> None:
    """A path: every other connection on it closes while an initiate linking a new one under
    it is held below. The connection in flight counts as the path's dependent from its
    initiate on (`HostStack.ref`): the path, and its neighbor, stay until it is offloaded."""
    one = OneNic(im)
    rig, host = one.rig, one.host
    for _ in range(3):
        one.connect(1)
    one.connect(1, run=False)
    held = rig.hold_below("MiniportInitiateOffload")
    for conn in (0, 1, 2):
        rig.call(host.app_close, one.conns[conn])
    assert rig.problems() == []
    last = host.tcbs[one.conns[-1]]
    assert last.lifecycle.phase is Phase.OFFLOADING and last.path is not None
    assert last.path.lifecycle.phase is Phase.OFFLOADED
    assert last.path.parent is not None
    assert last.path.parent.lifecycle.phase is Phase.OFFLOADED
    rig.release(held)
    assert last.lifecycle.phase is Phase.OFFLOADED
    one.conns = one.conns[3:]
    one.answered_and_drained()


def test_a_neighbor_waits_for_an_update_held_below_that_names_it() -> None:
    """An update: the second neighbor's ARP update held below while the last path under it
    moves back under the first. The update names it (spec §3.4 (a)): it goes only once that
    update is back."""
    one = OneNic(False)
    rig, host = one.rig, one.host
    one.connect(2)  # keeps the first neighbor offloaded
    one.connect(1)
    one.move(1, 1)
    rig.run()
    mac = bytes.fromhex("020000000199")
    one.ask(host.app_update_object, 1, "neighbor", {"DlDestinationAddress": mac})
    held = rig.hold_below("MiniportUpdateOffload")
    one.move(1, 0)  # the path's move names the first neighbor and the path, not this one
    rig.run()
    assert rig.problems() == []
    assert one.replies[-1].done and one.replies[-1].error is None, one.replies[-1]
    second = _neighbor(host.all_objects(), HOPS[1])
    assert second is not None, "the second neighbor went with an update naming it below"
    assert second.lifecycle.phase is Phase.OFFLOADED
    rig.release(held)
    assert _neighbor(host.all_objects(), HOPS[1]) is None
    one.answered_and_drained()


def test_an_initiate_completion_naming_a_handle_let_go_still_settles_the_rest() -> None:
    """A layer below that completes an initiate with a block naming a handle the host has
    let go (its terminate completed: spec §9 item 8 says nothing may come for it after) has
    broken the contract, and the host says so (`ChimneyProtocolError`) — but only once it has
    settled every other block of the tree: the connection it offloaded is answered and
    offloaded, its objects counted as they should be, and the stack drains. Before, the host
    raised at that block, and every block after it stayed as it was: the connection
    OFFLOADING for good, its offload and its close never answered."""
    one = OneNic(False)
    rig, host = one.rig, one.host
    one.connect(1)
    one.connect(1, run=False)  # linked under the first one's neighbor and path
    held = rig.hold_below("ProtocolInitiateOffloadComplete")
    layer, fn, (binding, root) = held
    # a stray first block, of a neighbor the host has let go
    stray = new_neighbor_block(NdisOffloadHandle(host.name, None))
    stray.status = S.NDIS_STATUS_SUCCESS
    stray.next_block = root
    with pytest.raises(ChimneyProtocolError, match="let go"):
        rig.release((layer, fn, (binding, stray)))
    rig.run()
    last = host.tcbs[one.conns[-1]]
    assert last.lifecycle.phase is Phase.OFFLOADED
    one.answered_and_drained()
