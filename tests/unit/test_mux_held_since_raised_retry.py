"""A MUX that holds an initiate notes when it first held it (`MuxIm.held_since`, by the id of
the initiate's root), to take the hold off the FIN_WAIT_2 timers it passes down
(`fin_wait_2.spend_held`, spec §8). When the retry of that initiate raises (a bug in the
layer: the engine fails the call for it, spec §6.3) the initiate is gone from the MUX, and so
must its note be: left behind, it lies in a table `leftovers` did not list, and a later
initiate whose root reuses the id would have a hold it never had taken off its delta, its
FIN_WAIT_2 connection timed out at once.

The real host stack over a MUX and two targets (`HostRig`); the raise is planted in the
MUX's placement, as a bug there would raise."""

from __future__ import annotations

import pytest

import chimneyd.drivers.mux.mux as mux_module
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.hostrig import Reply
from tests.unit.test_target_fin_wait_2_held_initiate import _host_in_fin_wait_2, _team


def _planted(*_: object) -> None:
    raise RuntimeError("planted")


def test_a_held_initiate_whose_retry_raised_leaves_no_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig, mux = _team()
    conn = _host_in_fin_wait_2(rig)
    nic1 = rig.targets["nic1"]
    rig.ndis.NdisMIndicateStatusEx(nic1, S.NDIS_STATUS_OFFLOAD_PAUSE, [])
    rig.ndis.NdisMIndicateStatusEx(nic1, S.NDIS_STATUS_OFFLOAD_RESUME, [])
    asked = rig.hold_below("MiniportOidRequest")
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    rig.run()
    assert mux.deferred and mux.leftovers()["held_since"] == 1, "the MUX did not hold it"
    monkeypatch.setattr(mux_module, "fit_of", _planted)
    with pytest.raises(RuntimeError, match="planted"):
        rig.release(asked)
        rig.run()
    assert mux.deferred == [], "the retry that raised did not drop the initiate"
    assert mux.leftovers()["held_since"] == 0, f"a note left behind: {mux.held_since}"
