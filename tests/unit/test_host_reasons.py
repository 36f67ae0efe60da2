"""The host's own reasons to upload (spec §3.6.1, §6.2): a power change away from D0, a media
disconnect, a capability disabled, NetEventPause — every connection on that target uploaded, no
new offload to it until the event is over; a power change completes only after the uploads."""

from __future__ import annotations

import pytest

from chimneyd.drivers.host.host_reasons import EVENTS
from chimneyd.ndis.lifecycle import Phase
from chimneyd.testing.clock import Delivery
from chimneyd.testing.hostrig import HostRig


def _two_nics() -> tuple[HostRig, list[int], int]:
    """Three connections on nic0, one on nic1, each offloaded."""
    rig = HostRig(targets=("nic0", "nic1"), im=True)
    on0 = []
    for _ in range(3):
        conn, _ = rig.open()
        rig.offload(conn, "nic0")
        on0.append(conn)
    conn1, _ = rig.open()
    rig.offload(conn1, "nic1")
    return rig, on0, conn1


@pytest.mark.parametrize("event", EVENTS)
def test_every_connection_on_the_target_is_uploaded_and_none_offloaded(event: str) -> None:
    rig, on0, conn1 = _two_nics()
    rig.host.host_event("nic0", event, True)
    rig.run()
    for conn in on0:
        assert rig.host.tcbs[conn].state == "host"
        assert (conn, "uploaded", {"reason": event}) in rig.events
    assert rig.targets["nic0"].tcp_count == 0
    assert rig.host.tcbs[conn1].state == "offloaded"  # another target: untouched
    refused = rig.call(rig.host.app_offload, on0[0], "nic0")
    assert refused.error.symbol == "INVALID_STATE" and event in refused.error.detail
    assert rig.call(rig.host.app_offload, on0[0], "nic1").value["state"] == "offloaded"
    # over: offloads go to the target again
    rig.host.host_event("nic0", event, False)
    rig.run()
    assert rig.call(rig.host.app_offload, on0[1], "nic0").value["state"] == "offloaded"
    assert rig.problems() == []


def test_a_power_change_completes_only_once_everything_is_uploaded() -> None:
    rig, on0, _ = _two_nics()
    seen: list[tuple[bool, int]] = []
    nic0 = rig.targets["nic0"]

    def watch(_: Delivery) -> None:
        withheld = rig.host.withheld.get("nic0")
        seen.append((bool(withheld and withheld.power_complete), nic0.tcp_count))

    rig.scheduler.observers.append(watch)
    # one more connection whose initiate is in flight when the power change starts
    late, _ = rig.open()
    offload = rig.host.app_offload
    answers: list[object] = []
    offload(late, "nic0", lambda value, err: answers.append(value or err))
    rig.host.host_event("nic0", "power_down", True)
    assert not rig.host.withheld["nic0"].power_complete
    rig.run()
    withheld = rig.host.withheld["nic0"]
    assert withheld.power_complete and not withheld.power_pending
    # it was offloaded (the request came first), then uploaded with the others
    assert answers and rig.host.tcbs[late].state == "host"
    assert all(rig.host.tcbs[c].lifecycle.phase is Phase.IDLE for c in [*on0, late])
    # never complete while the target still held a connection
    assert all(count == 0 for complete, count in seen if complete)
    assert any(not complete and count for complete, count in seen)


def test_with_nothing_offloaded_a_power_change_completes_at_once() -> None:
    rig = HostRig()
    rig.host.host_event("nic0", "power_down", True)
    assert rig.host.withheld["nic0"].power_complete
