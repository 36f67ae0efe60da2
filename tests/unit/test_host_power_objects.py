"""A power change away from D0 completes only once the target holds nothing of the host's
(spec §6.2: the host uploads everything, and the target holds `OID_PNP_SET_POWER` until all
terminates have completed). The host terminates connections in a call of their own and their
path and neighbor in a later one (`terminate.flush_terminates`, spec §3.1, §5.5): the power
change waits for that later terminate too, not only for the connections."""

from __future__ import annotations

import pytest

from chimneyd.testing.clock import Delivery
from chimneyd.testing.hostrig import HostRig


@pytest.mark.parametrize("im", [False, True])
def test_a_power_change_completes_only_once_the_objects_are_terminated_too(im: bool) -> None:
    rig = HostRig(targets=("nic0", "nic1"), im=im)
    on0 = []
    for _ in range(2):
        conn, _ = rig.open()
        rig.offload(conn, "nic0")
        on0.append(conn)
    other, _ = rig.open()
    rig.offload(other, "nic1")
    nic0 = rig.targets["nic0"]
    assert nic0.table  # the connections, their path and neighbor
    seen: list[tuple[bool, int]] = []

    def watch(_: Delivery) -> None:
        withheld = rig.host.withheld.get("nic0")
        seen.append((bool(withheld and withheld.power_complete), len(nic0.table)))

    rig.scheduler.observers.append(watch)
    rig.host.host_event("nic0", "power_down", True)
    rig.run()
    withheld = rig.host.withheld["nic0"]
    assert withheld.power_complete and not withheld.power_pending
    assert not nic0.table, nic0.table
    # never complete while the target still held an object of the host's
    early = [held for complete, held in seen if complete and held]
    assert not early, f"power change complete with {early[0]} object(s) still on nic0"
    assert rig.host.tcbs[other].state == "offloaded"  # another target: untouched
    assert rig.problems() == []
