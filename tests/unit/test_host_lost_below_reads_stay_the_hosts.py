"""A completion that leaves a connection out (lost below, spec §6.3 [EMU]) raises
`SettledThenRaised` naming it, and says it was lost below (`lost_below`): the host answers a
read waiting on it itself, one inbox round later, with the "lost below" error a later read
gets (docs/rpc.md), so the engine leaves its reads to the host and fails only what the host
cannot answer. Before, the error did not say so, and the engine answered the read INTERNAL
first. A connection the host could not take back for another reason is not lost below."""

from __future__ import annotations

import pytest

from chimneyd.drivers.host.errors import SettledThenRaised
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_completion_lost_below import _drop, _offloading
from tests.unit.test_host_let_go_completions import _drained, _offloaded


def test_a_connection_left_out_of_its_terminate_completion_is_named_lost_below() -> None:
    rig = HostRig()
    host = rig.host
    conns = _offloaded(rig, 2)
    lost = conns[0]
    read = Reply()
    host.app_recv(lost, 10, False, read)
    uploads = [Reply() for _ in conns]
    for conn, reply in zip(conns, uploads, strict=True):
        host.app_upload(conn, reply)
    held = rig.hold_below("ProtocolTerminateOffloadComplete")
    _drop(rig, held[2][1], host.tcbs[lost].handle)
    with pytest.raises(SettledThenRaised) as raised:
        rig.release(held)
    assert raised.value.conns == frozenset({lost})
    assert raised.value.lost_below == frozenset({lost}), "not said to be lost below"
    rig.run()
    assert read.done and read.error is not None, read
    assert read.error.symbol == "NDIS_STATUS" and "lost below" in str(read.error), read
    _drained(rig, conns)


def test_a_connection_left_out_of_a_refused_initiate_completion_is_named_lost_below() -> None:
    rig = HostRig()
    host = rig.host
    conns, _ = _offloading(rig, 1)
    (conn,) = conns
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    held = rig.hold_below("ProtocolInitiateOffloadComplete")
    _drop(rig, held[2][1], host.tcbs[conn].handle)
    with pytest.raises(SettledThenRaised) as raised:
        rig.release(held)
    rig.run()
    assert raised.value.lost_below == frozenset({conn}), "not said to be lost below"
    _drained(rig, conns)


def test_an_error_naming_no_lost_connection_says_none() -> None:
    """The engine fails every request of `conns` then (docs/spec.md §6.3)."""
    assert SettledThenRaised("a block it could not take back", frozenset({3})).lost_below == set()
