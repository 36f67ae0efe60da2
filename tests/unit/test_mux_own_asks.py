"""An upload the teaming MUX asks for itself, as a pass-through IM does, counts as asked
(spec §4.8, §5.2, `MuxConnection.asked`).

The MUX inherits the pass-through IM's I/O rules: a send it fails for a reason that is no
upload status (a `fail_next` fault), or a forward it could not serve (a handler that raised),
has it ask for the upload itself with `TcpIndicateRetrieve(UploadRequested)`. The NIC below
does not know, and may ask for the same upload (a mandatory reason of its own, spec §5.2):
passed up as news, the layer above heard of one upload twice. Nor may the MUX ask after the
NIC's own mandatory request went up. Either order, one request goes up (`MuxIm._news`); a
reason that says more than "upload it" (`TimeoutExpiration`) still goes up.

The protocol stub above the MUX records every indication and uploads nothing."""

from __future__ import annotations

import pytest

from chimneyd.drivers.base import PlantedBug, RaiseNext
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpUploadReason
from chimneyd.testing.factories import fail_next
from tests.unit.mux_rig import OneTeamedConnection

R = TcpUploadReason


class _Rig(OneTeamedConnection):
    """One connection offloaded through a MUX over two NICs (`OneTeamedConnection`)."""

    def mux_fails_a_send(self) -> None:
        """The MUX fails the next send, with no upload status: it asks for the upload."""
        fail_next(self.mux, "MiniportTcpOffloadSend", S.NDIS_STATUS_FAILURE)
        (nbl,) = self.st.top.send(self.tcp, b"lost")
        self.st.run()
        done = self.st.top.completion_of(nbl)
        assert done is not None and done.status == S.NDIS_STATUS_FAILURE, done

    def mux_fails_a_send_behind_one_below(self) -> None:
        fail_next(self.mux, "MiniportTcpOffloadSend", S.NDIS_STATUS_FAILURE)
        (nbl,) = self.st.top.send(self.tcp, b"lost")
        self.st.run()
        assert self.st.top.completion_of(nbl) is None  # behind the send below

    def mux_cannot_serve_a_forward(self) -> None:
        """The MUX raises on a forward (a bug): it fails it as the engine has it fail one it
        could not serve (`fail_unserved_forward`), and asks for the upload."""
        self.mux.arm_fault(RaiseNext(1, "MiniportTcpOffloadForward", 1))
        (nbl,) = self.st.top.forward(self.tcp, b"segment")
        with pytest.raises(PlantedBug):
            self.st.run()
        failed = self.st.scheduler.log[-1]
        assert (failed.layer, failed.handler) == (self.mux, "MiniportTcpOffloadForward")
        assert self.mux.fail_unserved(failed.handler, failed.args)
        self.st.run()
        done = self.st.top.completion_of(nbl)
        assert done is not None and done.status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS, done

    def mux_cannot_serve_a_terminate(self) -> None:
        """The MUX raises on the connection's terminate (a bug): it fails it as one that found
        the state corrupt (`fail_unserved_terminate`, spec §3.7 steps 1-3), asking for the
        upload with `HardwareFailure`."""
        self.mux.arm_fault(RaiseNext(1, "MiniportTerminateOffload", 1))
        self.st.top.terminate(self.st.top.reference_tree(self.tree, [self.tcp], state="delegated"))
        with pytest.raises(PlantedBug):
            self.st.run()
        failed = self.st.scheduler.log[-1]
        assert (failed.layer, failed.handler) == (self.mux, "MiniportTerminateOffload")
        assert self.mux.fail_unserved(failed.handler, failed.args)
        self.st.run()

    def nic_asks(self, reason: R) -> None:
        (ctx,) = self.nic.connections()
        self.nic.retrieve(ctx, reason)
        self.st.run()

    def no_problems(self) -> None:
        assert self.st.checker.violations == []


def test_the_nic_s_request_after_a_send_the_mux_failed_is_not_passed() -> None:
    rig = _Rig()
    rig.mux_fails_a_send()
    assert rig.retrieves() == [R.UploadRequested]
    rig.nic_asks(R.UploadRequested)
    assert rig.retrieves() == [R.UploadRequested]
    rig.no_problems()


def test_the_nic_s_request_before_a_held_failure_goes_up_is_the_only_one() -> None:
    """The MUX fails a send while an earlier one is below, unacknowledged: the failure, and the
    request after it, wait behind that send (spec §4.8, §9 item 2). The NIC asks meanwhile, and
    its request goes up; once the send below completes, the MUX asks no more."""
    rig = _Rig()
    rig.st.top.send(rig.tcp, b"below, ")
    rig.st.run()
    rig.mux_fails_a_send_behind_one_below()
    assert rig.retrieves() == []
    rig.nic_asks(R.UploadRequested)
    assert rig.retrieves() == [R.UploadRequested]
    rig.wire.ack()
    rig.st.run()
    assert [c.status for c in rig.st.top.completions] == [
        S.NDIS_STATUS_SUCCESS,
        S.NDIS_STATUS_FAILURE,
    ]
    assert rig.retrieves() == [R.UploadRequested]
    rig.no_problems()


def test_the_nic_s_request_after_a_terminate_the_mux_could_not_serve_is_not_passed() -> None:
    """`HardwareFailure` asked for the upload (mandatory): the NIC's own request after it
    tells the layer above nothing new."""
    rig = _Rig()
    rig.mux_cannot_serve_a_terminate()
    assert rig.retrieves() == [R.HardwareFailure]
    rig.nic_asks(R.UploadRequested)
    assert rig.retrieves() == [R.HardwareFailure]
    rig.no_problems()


def test_a_send_the_mux_fails_after_the_nic_s_request_asks_nothing_more() -> None:
    """The other order: the NIC's mandatory request went up; a send the host posted before it
    heard of it fails at the MUX, which asks no more."""
    rig = _Rig()
    rig.nic_asks(R.UploadRequested)
    assert rig.retrieves() == [R.UploadRequested]
    rig.mux_fails_a_send()
    assert rig.retrieves() == [R.UploadRequested]
    rig.no_problems()


def test_the_nic_s_request_after_a_forward_the_mux_could_not_serve_is_not_passed() -> None:
    rig = _Rig()
    rig.mux_cannot_serve_a_forward()
    assert rig.retrieves() == [R.UploadRequested]
    rig.nic_asks(R.UploadRequested)
    assert rig.retrieves() == [R.UploadRequested]
    rig.no_problems()


def test_the_mux_s_own_request_after_the_nic_s_optional_one_is_passed() -> None:
    """An optional reason leaves the host free to keep the connection offloaded: the MUX's
    request after it is news."""
    rig = _Rig()
    rig.nic_asks(R.LowActivity)
    rig.mux_fails_a_send()
    assert rig.retrieves() == [R.LowActivity, R.UploadRequested]
    rig.no_problems()


def test_the_kernel_s_timeout_after_the_mux_s_own_request_is_passed() -> None:
    """`TimeoutExpiration` says why the connection comes back CLOSED (spec §5.2): it goes up
    whatever was asked before."""
    rig = _Rig()
    rig.mux_fails_a_send()
    rig.wire.kernel_timeout()
    rig.st.run()
    assert rig.retrieves() == [R.UploadRequested, R.TimeoutExpiration]
    rig.no_problems()


def test_a_failover_asks_up_a_connection_whose_own_request_waits_behind_a_send() -> None:
    """The MUX failed a send behind one still below: its request waits behind that send (spec
    §4.8), and the layer above has not been asked. The NIC is taken out: the failover asks the
    connection up now, as every other of that NIC's (spec §5.5), and the PAUSE above waits for
    its upload. Left out as on its way up already, it waited for the peer to acknowledge the
    send below, with the MUX RESUMEd above meanwhile; the request behind the send asks no more
    once it completes."""
    rig = _Rig()
    rig.st.top.send(rig.tcp, b"below, ")
    rig.st.run()
    rig.mux_fails_a_send_behind_one_below()
    (entry,) = rig.mux.connections()
    rig.mux.lower_down(entry.lower)
    rig.st.run()
    assert rig.retrieves() == [R.UploadRequested]
    assert entry in rig.mux.evacuating and rig.mux.paused_above
    rig.wire.ack()
    rig.st.run()
    assert rig.retrieves() == [R.UploadRequested]
    rig.no_problems()
