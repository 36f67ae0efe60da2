"""The window the host's two-step terminate opens (`terminate.flush_terminates`): a
connection's terminate goes alone, its path and neighbor stay offloaded with it below, and go
in a later call only if nothing else depends on them once it completes (spec §3.1, §5.5 "same
or later calls"). What comes in that window must find the objects as offloaded ones."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.ndis.lifecycle import Phase
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_fresh_neighbor import ADDRESS, _rig
from tests.unit.test_host_next_hop_interleavings import _check_drained


def _hold_at(rig: HostRig, layer: Any, call: str) -> Any:
    """Deliver, with the host's batch whenever nothing is queued, until `call` at `layer` is
    next; take it out of the queue (`rig.release` puts it back)."""
    queue = rig.scheduler.queue
    while True:
        if not queue:
            rig.host.after_batch()
            assert queue, f"no {call} came"
        if queue[0][0] is layer and getattr(queue[0][1], "__name__", "") == call:
            held = queue.popleft()
            rig.run()
            return held
        rig.scheduler.run_one()


@pytest.mark.parametrize("layout", ["nic", "im", "team"])
def test_an_offload_while_a_connections_terminate_is_below_joins_its_path(layout: str) -> None:
    rig = _rig(layout)
    host = rig.host
    nic = "nic0" if layout == "team" else None
    first, wire = rig.open(remote=ADDRESS)
    wire.auto_ack = True
    rig.offload(first, nic)
    path = host.tcbs[first].path
    assert path is not None and path.parent is not None
    neighbor = path.parent
    closing = Reply()
    host.app_close(first, closing)
    held = _hold_at(rig, rig.targets["nic0"], "MiniportTerminateOffload")
    assert not closing.done, closing
    # the connection's terminate names neither: they are offloaded, the connection still
    # depends on its path (spec §3.1)
    assert path.lifecycle.phase is Phase.OFFLOADED and neighbor.lifecycle.phase is Phase.OFFLOADED
    second, wire2 = rig.open(remote=ADDRESS)
    wire2.auto_ack = True
    offloaded = rig.call(host.app_offload, second, nic)
    if layout != "team":
        assert offloaded.done and offloaded.error is None, (offloaded, host.describe())
    # else the MUX's copies on nic0 went with the first's terminate there
    # (`MuxIm._terminate_unused`): its placement there waits for them to go
    assert host.tcbs[second].path is path  # linked under the offloaded path (spec §2.3)
    rig.release(held)
    assert offloaded.done and offloaded.error is None, (offloaded, host.describe())
    assert closing.done and closing.error is None, closing
    # the path keeps its new dependent: not terminated
    assert path.lifecycle.phase is Phase.OFFLOADED and path.handle is not None
    assert neighbor.lifecycle.phase is Phase.OFFLOADED and not host.leaving
    assert host.tcbs[second].state == "offloaded"
    assert [c.wire for c in rig.contexts("nic0")] == [wire2]
    sent = rig.call(host.app_send, second, b"after the window")
    assert sent.done and sent.error is None, sent
    rig.run()
    assert wire2.peer_received.endswith(b"after the window")
    assert rig.call(host.app_close, second).error is None
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []
    _check_drained(rig)


@pytest.mark.parametrize("layout", ["nic", "im", "team"])
def test_an_invalidate_of_the_neighbor_while_a_connections_terminate_is_below(
    layout: str,
) -> None:
    """The neighbor stays offloaded while a connection under it goes up alone, so another
    connection under it may invalidate it meanwhile (spec §3.5): the terminate completes, the
    invalidate's connection is asked up and goes, and the path and neighbor go after their
    last connection (spec §3.1); nothing is left at any layer."""
    rig = _rig(layout)
    host = rig.host
    nic = "nic0" if layout == "team" else None
    first, wire = rig.open(remote=ADDRESS)
    wire.auto_ack = True
    rig.offload(first, nic)
    second, wire2 = rig.open(remote=("127.0.0.2", 80))
    wire2.auto_ack = True
    rig.offload(second, nic)
    neighbor = host.tcbs[first].path.parent  # type: ignore[union-attr]
    assert host.tcbs[second].path.parent is neighbor  # type: ignore[union-attr]
    closing = Reply()
    host.app_close(first, closing)
    held = _hold_at(rig, rig.targets["nic0"], "MiniportTerminateOffload")
    assert neighbor.lifecycle.phase is Phase.OFFLOADED
    invalidated = rig.call(host.app_invalidate, second, "neighbor")
    rig.release(held)
    assert closing.done and closing.error is None, closing
    assert invalidated.done, invalidated
    rig.run()
    assert host.tcbs[second].state == "host", host.tcbs[second].state
    assert neighbor.handle is None and not host.leaving, host.describe()["objects"]
    assert rig.call(host.app_close, second).error is None
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []
    _check_drained(rig)
