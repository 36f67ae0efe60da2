"""The target's I/O handlers still check the context's lifecycle, read in place.

4b89cb5 replaced `c.lifecycle.fire(...)` (a property returning the context itself) by
`c.fire(...)` on the I/O path. The send's check has its test (test_situations.py); these are
the receive request's and the indication's: I/O on a context still being offloaded cannot happen (the host
guarantees it), and the emulator asserts it (spec §6.2, §6.3 [EMU]).
"""

from __future__ import annotations

import pytest

from chimneyd.drivers.target import receive
from chimneyd.drivers.target.target import OffloadTarget
from chimneyd.ndis.errors import IllegalTransition
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.nbl import NetBufferList
from tests.unit.target_rig import OffloadedConn


def test_a_receive_request_on_a_context_still_offloading_is_refused_by_its_lifecycle() -> None:
    c = OffloadedConn()
    c.ctx.phase = Phase.OFFLOADING  # as it is between its initiate and completion
    nic = c.nic
    assert isinstance(nic, OffloadTarget)
    with pytest.raises(IllegalTransition) as caught:
        nic.MiniportTcpOffloadReceive(c.ctx, NetBufferList.for_receive(64))
    assert (caught.value.state, caught.value.call) == ("OFFLOADING", "NdisOffloadTcpXxx")
    assert not c.ctx.posted, "the request was queued"


def test_an_indication_from_a_terminated_context_is_refused_by_its_lifecycle() -> None:
    """`_indicate` (INDICATE, spec §4.3) fires its lifecycle event first: a context already
    terminated (its last TERMINATING indications arrived, spec §3.6.3) indicates nothing."""
    c = OffloadedConn()
    nic = c.nic
    assert isinstance(nic, OffloadTarget)
    c.ctx.phase = Phase.TERMINATED
    with pytest.raises(IllegalTransition) as caught:
        receive._indicate(nic, c.ctx)
    assert (caught.value.state, caught.value.call) == ("TERMINATED", "NdisTcpOffloadXxxHandler")
