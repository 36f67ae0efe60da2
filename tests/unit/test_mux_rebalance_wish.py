"""A rebalance honours the host's placement wish [EMU] (docs/architecture.md, "A pin and the
host's reasons reach the placement"): it plans no connection onto a NIC the wish excludes.

The wish (the NIC `tcp.connect`'s `target` pinned, the NICs a `host_event` withholds) keeps
the connection off those NICs at every offload (`Placement.choose`). A rebalance that planned
a connection onto one asked it up, PAUSEd the team for it and counted the move; at the
re-offload the plan was dropped (the host's wish then still withholds the NIC) and the policy
put the connection back. A connection pinned to its NIC is not moved at all: the application
chose that NIC, and a rebalance is the MUX's own choice (spec §5.5), not a NIC's failure."""

from __future__ import annotations

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.ndis.blocks import PlacementWish, walk
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import teamed_target_stack
from chimneyd.testing.records import OffloadTree
from chimneyd.testing.stack import Stack
from tests.unit.mux_rig import mux_of
from tests.unit.test_mux_rebalance_plans import (
    _asked,
    _drain,
    _entry,
    _offload_again,
    _per_nic,
    _terminate,
)

#: keeps the connection off nic0 (a `host_event` withholds it)
AVOID_NIC0: PlacementWish = (None, frozenset({"nic0"}))
AVOID_NIC1: PlacementWish = (None, frozenset({"nic1"}))
AVOID_NIC2: PlacementWish = (None, frozenset({"nic2"}))


def _team(
    policy: str, nics: int, wishes: list[PlacementWish | None]
) -> tuple[Stack, MuxIm, OffloadTree]:
    """A team of `nics` NICs with one connection per wish, offloaded in one initiate."""
    st = teamed_target_stack(nics=nics, policy=policy)
    tree = st.top.connection_tree([st.wires.open() for _ in wishes])
    blocks = {id(b.offload_handle): b for b in walk(tree.root)}
    for handle, wish in zip(tree.tcp, wishes, strict=True):
        blocks[id(handle)].wish = wish  # on the initiate's request (`OffloadBlock.wish`)
    st.top.initiate(tree.root)
    st.run()
    return st, mux_of(st), tree


def _nics(tree: OffloadTree) -> list[str]:
    return [_entry(h).lower.lower.name for h in tree.tcp]


def _plans(mux: MuxIm) -> dict[object, str]:
    return {key: lo.name for key, lo in mux.placement.moves.items()}


def test_connections_avoiding_the_idle_nic_are_not_moved_onto_it() -> None:
    """Three connections avoid nic0, all on nic1: no plan, nothing asked up, no PAUSE."""
    st, mux, tree = _team("round-robin", 2, [AVOID_NIC0] * 3)
    assert _nics(tree) == ["nic1"] * 3
    mux.rebalance()
    st.run()
    assert _plans(mux) == {}
    assert _asked(st) == []
    assert not mux.paused_above
    _drain(st, tree, list(tree.tcp))


def test_connections_pinned_to_their_nic_are_not_moved() -> None:
    """Three connections pinned to nic0 (active-standby would put them there anyway): a
    rebalance moves none of them to the idle nic1."""
    st, mux, tree = _team("active-standby", 2, [("nic0", frozenset())] * 3)
    assert _nics(tree) == ["nic0"] * 3
    mux.rebalance()
    st.run()
    assert _plans(mux) == {}
    assert _asked(st) == []
    assert not mux.paused_above
    _drain(st, tree, list(tree.tcp))


def test_only_a_connection_free_to_go_is_moved() -> None:
    """Active-standby: four connections on nic0, three of them pinned there. Only the free
    one is planned onto nic1 (one move), and it lands there."""
    pinned: PlacementWish = ("nic0", frozenset())
    st, mux, tree = _team("active-standby", 2, [None, pinned, pinned, pinned])
    assert _nics(tree) == ["nic0"] * 4
    free = tree.tcp[0]
    mux.rebalance()
    st.run()
    assert _plans(mux) == {_entry(free).key: "nic1"}
    assert _asked(st) == [free]
    assert mux.paused_above  # until the free one is up
    _terminate(st, tree, [free])
    assert not mux.paused_above
    _offload_again(st, tree, free)
    assert _per_nic(mux) == {"nic0": 3, "nic1": 1}
    assert mux.placement.moves == {}
    _drain(st, tree, list(tree.tcp))


def _offload_one(st: Stack, tree: OffloadTree, wish: PlacementWish | None) -> None:
    """The layer above offloads one more connection under the path, with `wish`."""
    assert tree.neighbor is not None
    root = st.top.neighbor_block(tree.neighbor)
    path = root.add_dependent(st.top.path_block(tree.paths[0]))
    wire = st.wires.open()
    block = path.add_dependent(st.top.tcp_block(wire))
    handle = block.offload_handle
    assert handle is not None
    block.wish = wish
    tree.wires[handle.id] = wire
    tree.tcp.append(handle)
    st.top.initiate(root)
    st.run()
    assert block.status == S.NDIS_STATUS_SUCCESS


def test_a_nic_withheld_since_the_older_offloads_gets_no_plan() -> None:
    """Three NICs, active-standby: four connections offloaded with no wish, all on nic0. The
    host then withholds nic1 (a `host_event`: nothing of the host's was on it), and its next
    offload says so: a rebalance plans none onto nic1, though the older four's own wishes
    did not exclude it; the host would put them back where the policy does."""
    st, mux, tree = _team("active-standby", 3, [None] * 4)
    _offload_one(st, tree, AVOID_NIC1)
    assert _nics(tree) == ["nic0"] * 5
    mux.rebalance()
    st.run()
    plans = _plans(mux)
    assert sorted(plans.values()) == ["nic2", "nic2"], plans
    moved = [h for h in tree.tcp if _entry(h).key in plans]
    _terminate(st, tree, moved)
    for handle in moved:
        _offload_again(st, tree, handle)
    assert _per_nic(mux) == {"nic0": 3, "nic1": 0, "nic2": 2}
    _drain(st, tree, list(tree.tcp))


def test_a_nic_no_longer_withheld_takes_connections_again() -> None:
    """Two NICs, active-standby: four connections offloaded while the host withheld nic1,
    all on nic0; the reason is cleared, and the host's next offload carries no wish. A
    rebalance moves two onto nic1, the older connections' own wishes notwithstanding."""
    st, mux, tree = _team("active-standby", 2, [AVOID_NIC1] * 4)
    _offload_one(st, tree, None)
    assert _nics(tree) == ["nic0"] * 5
    mux.rebalance()
    st.run()
    plans = _plans(mux)
    assert sorted(plans.values()) == ["nic1", "nic1"], plans
    moved = [h for h in tree.tcp if _entry(h).key in plans]
    _terminate(st, tree, moved)
    for handle in moved:
        _offload_again(st, tree, handle)
    assert _per_nic(mux) == {"nic0": 3, "nic1": 2}
    _drain(st, tree, list(tree.tcp))


def test_busiest_nic_barred_from_the_idlest_moves_to_the_next() -> None:
    """Three NICs, active-standby: four connections avoid nic0, so all are on nic1. nic0 is
    idlest but barred to them all; nic2, as idle, takes two, and the team is even where
    the wishes let it be."""
    st, mux, tree = _team("active-standby", 3, [AVOID_NIC0] * 4)
    assert _nics(tree) == ["nic1"] * 4
    mux.rebalance()
    st.run()
    plans = _plans(mux)
    assert sorted(plans.values()) == ["nic2", "nic2"], plans
    moved = [h for h in tree.tcp if _entry(h).key in plans]
    assert set(_asked(st)) == set(moved)
    _terminate(st, tree, moved)
    for handle in moved:
        _offload_again(st, tree, handle)
    assert _per_nic(mux) == {"nic0": 0, "nic1": 2, "nic2": 2}
    _drain(st, tree, list(tree.tcp))


def test_a_leaving_connection_is_planned_only_where_its_wish_lets_it_go() -> None:
    """Three NICs, round robin, three connections avoiding nic2: c0, c2 on nic0, c1 on
    nic1. nic0 is taken out (c0, c2 asked up) and put back; a rebalance plans the two
    leaving ones onto the NICs the fewest stay on, of those they may go to: both nic0 (nic2
    is as idle, but excluded)."""
    st, mux, tree = _team("round-robin", 3, [AVOID_NIC2] * 3)
    c0, c1, c2 = tree.tcp
    assert _nics(tree) == ["nic0", "nic1", "nic0"]
    binding0 = _entry(c0).lower
    mux.lower_down(binding0)
    st.run()
    assert _asked(st) == [c0, c2]
    mux.lower_up(binding0)
    st.run()
    mux.rebalance()
    assert _plans(mux) == {_entry(c0).key: "nic0", _entry(c2).key: "nic0"}
    _terminate(st, tree, [c0, c2])
    _drain(st, tree, [c1])
