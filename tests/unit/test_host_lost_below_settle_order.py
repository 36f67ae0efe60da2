"""A connection left out of its initiate's completion but offloaded below (its context cell
filled, spec §6.3 [EMU]) is settled after every block that came back: the path and neighbor of
the same tree are offloaded by then, so a request on the path that waited for the connection's
offload (a next-hop change, spec §3.4 (b)) goes on instead of finding the path OFFLOADING.

Checked against settling such connections before the blocks (as before c3f223e): the update
then fails `INVALID_STATE: the path is OFFLOADING`."""

from __future__ import annotations

import pytest

from chimneyd.drivers.host.errors import SettledThenRaised
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_completion_lost_below import _drop, _offloading
from tests.unit.test_host_let_go_completions import _drained


def test_a_path_update_waiting_for_a_connection_left_out_of_its_initiate_goes_on() -> None:
    rig = HostRig()
    host = rig.host
    conns, offloads = _offloading(rig, 1)
    (conn,) = conns
    held = rig.hold_below("ProtocolInitiateOffloadComplete")
    moved = Reply()
    host.app_update_object(conn, "path", {"NextHop": b"\x02" * 6}, moved)
    assert not moved.done and host.tcbs[conn].deferred  # it waits for the offload
    _drop(rig, held[2][1], host.tcbs[conn].handle)
    with pytest.raises(SettledThenRaised, match="without the blocks of connections"):
        rig.release(held)
    rig.run()
    assert offloads[0].done and offloads[0].error is None, offloads[0]
    assert moved.done and moved.error is None, moved
    assert host.tcbs[conn].state == "offloaded"
    _drained(rig, conns)
