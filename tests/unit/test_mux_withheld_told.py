"""The MUX is told of a NIC's condition behind one of the host's reasons at its start and its
end (`MuxIm.lower_withheld`, [EMU]); for a NIC told of, an offload's placement wish, which may
have been built before the last indication, no longer says whether a rebalance may plan onto
it (docs/architecture.md, "A pin and the host's reasons reach the placement")."""

from __future__ import annotations

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.ndis.broker import Binding
from chimneyd.testing.records import OffloadTree
from chimneyd.testing.stack import Stack
from tests.unit.test_mux_rebalance_plans import _drain, _entry, _offload_again, _per_nic, _terminate
from tests.unit.test_mux_rebalance_wish import AVOID_NIC1, _nics, _offload_one, _plans, _team


def _binding(mux: MuxIm, nic: str) -> Binding:
    return next(lo.binding for lo in mux.lower_list() if lo.binding.lower.name == nic)


def _moved_and_drained(st: Stack, mux: MuxIm, tree: OffloadTree) -> None:
    """The planned ones go up and come back where planned; then every connection goes."""
    moved = [h for h in tree.tcp if _entry(h).key in _plans(mux)]
    _terminate(st, tree, moved)
    for handle in moved:
        _offload_again(st, tree, handle)
    assert _per_nic(mux) == {"nic0": 3, "nic1": 2}
    _drain(st, tree, list(tree.tcp))


def test_an_offload_older_than_the_clear_does_not_withhold_the_nic_again() -> None:
    """Four connections on nic0 while nic1 was withheld; the clear is indicated, then an
    offload the host built before it arrives, its wish still naming nic1: a rebalance
    plans two onto nic1 all the same."""
    st, mux, tree = _team("active-standby", 2, [AVOID_NIC1] * 4)
    nic1 = _binding(mux, "nic1")
    mux.lower_withheld(nic1, "power_down", True)
    mux.lower_withheld(nic1, "power_down", False)
    _offload_one(st, tree, AVOID_NIC1)
    assert _nics(tree) == ["nic0"] * 5
    mux.rebalance()
    st.run()
    assert sorted(_plans(mux).values()) == ["nic1", "nic1"], _plans(mux)
    _moved_and_drained(st, mux, tree)


def test_a_nic_stays_withheld_until_each_of_its_conditions_ends() -> None:
    """Two conditions on nic1: the end of one leaves it withheld; a rebalance plans nothing
    onto it until the second ends, though the newest offload's wish says nothing of it."""
    st, mux, tree = _team("active-standby", 2, [None] * 4)
    nic1 = _binding(mux, "nic1")
    mux.lower_withheld(nic1, "power_down", True)
    mux.lower_withheld(nic1, "media_disconnect", True)
    mux.lower_withheld(nic1, "power_down", False)
    _offload_one(st, tree, None)
    mux.rebalance()
    st.run()
    assert _plans(mux) == {}, "planned onto a NIC one condition still withholds"
    mux.lower_withheld(nic1, "media_disconnect", False)
    mux.rebalance()
    st.run()
    assert sorted(_plans(mux).values()) == ["nic1", "nic1"], _plans(mux)
    _moved_and_drained(st, mux, tree)
