"""A teaming MUX asks the layer above for a connection's upload once (spec §5.2, §5.6).

When a NIC is taken out of service the MUX evacuates its connections, asking each up with
`TcpIndicateRetrieve(UploadRequested)` (`failover.take_out`). The NIC does not know: it goes on
processing the connection and may ask for the same upload itself, e.g. when the connection
enters TIME_WAIT on the peer's FIN (spec §5.2, "connection entering TIME_WAIT"). Relayed as it
came, the layer above heard `UploadRequested` twice for one upload. The MUX passes a NIC's
request up only when it tells the layer above something it has not been told:

* the first request for the connection, or a mandatory reason after optional ones only (the
  target's own rule, `target.events.request_upload`: "a mandatory reason after an optional one
  asks again, nothing asks twice");
* `TimeoutExpiration`, whatever was asked before: the host tells a connection the kernel gave
  up on by what it was told before the hand-back (spec §5.2);
* `InvalidState`, the answer for each connection an invalidate from above reached (spec §3.5;
  test_mux_invalidate_failed_nic has it after the MUX's own request);
* `HardwareFailure`, step 2 of the corruption sequence (spec §3.7).

The protocol stub sits above the MUX and records every indication; it uploads nothing, so each
connection stays asked up while the test goes on."""

from __future__ import annotations

from chimneyd.ndis.blocks import new_neighbor_block
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpUploadReason
from tests.unit.mux_rig import OneTeamedConnection

R = TcpUploadReason


class _Rig(OneTeamedConnection):
    """One connection offloaded through a MUX over two NICs (`OneTeamedConnection`)."""

    def context(self) -> object:
        (ctx,) = self.nic.connections()
        return ctx

    def to_fin_wait_2(self) -> None:
        """A graceful disconnect, acknowledged by the peer: the active closer in FIN_WAIT_2."""
        nbl = self.st.top.disconnect(self.tcp)
        self.st.run()
        self.wire.ack()
        self.st.run()
        done = self.st.top.completion_of(nbl)
        assert done is not None and done.status == S.NDIS_STATUS_SUCCESS, done
        assert self.context().lifecycle.tcp is TcpState.FIN_WAIT_2  # type: ignore[attr-defined]

    def take_the_nic_out(self) -> None:
        self.mux.lower_down(self.lower.binding)
        self.st.run()

    def nic_asks(self, reason: R) -> None:
        self.nic.retrieve(self.context(), reason)  # type: ignore[arg-type]
        self.st.run()

    def no_problems(self) -> None:
        assert self.st.checker.violations == []


def test_time_wait_after_the_evacuation_asks_nothing_more() -> None:
    """The NIC is taken out in FIN_WAIT_2 (the MUX asks the connection up), then the peer's FIN
    takes it to TIME_WAIT, for which the NIC asks too: the layer above hears it once."""
    rig = _Rig()
    rig.to_fin_wait_2()
    rig.take_the_nic_out()
    assert rig.retrieves() == [R.UploadRequested]
    rig.wire.peer_fin()
    rig.st.run()
    assert rig.context().lifecycle.tcp is TcpState.TIME_WAIT  # type: ignore[attr-defined]
    assert rig.retrieves() == [R.UploadRequested]
    rig.no_problems()


def test_the_evacuation_asks_nothing_after_time_wait_asked() -> None:
    """The other order: TIME_WAIT's request went up first; taking the NIC out asks no more."""
    rig = _Rig()
    rig.to_fin_wait_2()
    rig.wire.peer_fin()
    rig.st.run()
    assert rig.retrieves() == [R.UploadRequested]
    rig.take_the_nic_out()
    assert rig.retrieves() == [R.UploadRequested]
    rig.no_problems()


def test_an_optional_reason_after_the_evacuation_is_not_passed() -> None:
    rig = _Rig()
    rig.take_the_nic_out()
    rig.nic_asks(R.LowActivity)
    rig.nic_asks(R.ReceivedUrgentData)
    assert rig.retrieves() == [R.UploadRequested]
    rig.no_problems()


def test_the_evacuation_asks_nothing_after_an_invalidate_s_request() -> None:
    """The layer above invalidates the neighbor: the NIC asks the connection up with
    `InvalidState` (spec §3.5), which leaves it INVALIDATED at the MUX. Taking the NIC out
    then asks no more."""
    rig = _Rig()
    assert rig.tree.neighbor is not None
    rig.st.top.invalidate(new_neighbor_block(rig.tree.neighbor))
    rig.st.run()
    assert rig.retrieves() == [R.InvalidState]
    rig.take_the_nic_out()
    assert rig.retrieves() == [R.InvalidState]
    rig.no_problems()


def test_a_mandatory_reason_after_an_optional_one_is_passed() -> None:
    """An optional reason leaves the host free to keep the connection offloaded; a mandatory
    one after it is news (the target stopped processing it), as is the MUX's evacuation."""
    rig = _Rig()
    rig.nic_asks(R.LowActivity)
    rig.take_the_nic_out()
    assert rig.retrieves() == [R.LowActivity, R.UploadRequested]
    rig.no_problems()


def test_the_kernel_s_timeout_is_passed_after_the_evacuation() -> None:
    """`TimeoutExpiration` after a mandatory request still goes up (spec §5.2): the host learns
    why the connection comes back CLOSED."""
    rig = _Rig()
    rig.to_fin_wait_2()
    rig.take_the_nic_out()
    rig.wire.kernel_timeout()
    rig.st.run()
    assert rig.retrieves() == [R.UploadRequested, R.TimeoutExpiration]
    rig.no_problems()
