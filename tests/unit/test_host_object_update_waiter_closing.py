"""A request waiting behind an update of its connection's neighbor or path (spec §3.1: one
update of an object in flight; a second update, or an invalidate, of it waits) is replayed
once that update is over. If its connection is closing then (the close's terminate still
below, spec §3.1: the object's update holds no close of the other connections on it), the
request is answered as the same request made at that moment is: an update is held while its
connection changes hands (`stack.request`), and is NOT_FOUND once the close is done
(docs/rpc.md `tcp.update`), not INVALID_STATE for a connection only in the middle of going;
an invalidate is never held (`HostStack.app_invalidate`), and is answered at once."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.testing.hostrig import HostRig, Reply


def _hold_next(rig: HostRig, call: str, layer: Any) -> Any:
    """Deliver until `layer`'s `call` is next, and take it out of the queue."""
    queue = rig.scheduler.queue
    while not (
        getattr(queue[0][1], "__name__", "") == call
        and getattr(queue[0][1], "__self__", None) is layer
    ):
        rig.scheduler.run_one()
    return queue.popleft()


@pytest.mark.parametrize("request_kind", ["update", "invalidate"])
def test_a_request_waiting_behind_an_update_while_its_connection_closes_is_answered_as_a_fresh_one(
    request_kind: str,
) -> None:
    rig = HostRig()
    host = rig.host
    first, _ = rig.open()
    rig.offload(first)
    second, _ = rig.open()
    rig.offload(second)
    assert host.tcbs[first].path is host.tcbs[second].path
    update = Reply()
    host.app_update_object(first, "path", {"PathMtu": 1400}, update)
    host.after_batch()
    held_update = _hold_next(rig, "MiniportUpdateOffload", rig.target)
    rig.run()
    waiting = Reply()
    if request_kind == "update":
        host.app_update_object(second, "path", {"PathMtu": 1300}, waiting)
    else:
        host.app_invalidate(second, "path", waiting)
    rig.run()
    assert not waiting.done, "it waits for the update below (spec §3.1)"
    # the second connection closes; its terminate is below when the update completes
    close = Reply()
    host.app_close(second, close)
    host.after_batch()
    held_terminate = _hold_next(rig, "MiniportTerminateOffload", rig.target)
    rig.run()
    assert not close.done
    fresh = Reply()  # what the same call made now, on the closing connection, is answered
    if request_kind == "update":
        host.app_update_object(second, "path", {"PathMtu": 1200}, fresh)
    else:
        host.app_invalidate(second, "path", fresh)
    rig.release(held_update)
    assert update.done and update.error is None, update
    rig.release(held_terminate)
    assert close.done and close.value is True, close
    assert fresh.done and fresh.error is not None, fresh
    assert waiting.done and waiting.error is not None, waiting
    assert waiting.error.symbol == fresh.error.symbol, (waiting, fresh)
    assert rig.call(host.app_close, first).value is True
    assert rig.problems() == []
    assert not any(host.leftovers().values()), host.leftovers()
