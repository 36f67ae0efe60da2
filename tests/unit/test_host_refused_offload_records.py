"""The neighbor and path records the host makes for a connection's offload go when the
offload is refused and nothing else uses them (spec §9 item 8: the host's tables are empty
once every connection is closed), also when the refusal comes in a later drain than the
records: the connection waited for the target's capabilities (spec §8), and the target
paused offloads meanwhile (spec §5.5)."""

from __future__ import annotations

from chimneyd.testing.hostrig import HostRig, Reply


def test_records_of_an_offload_refused_after_waiting_for_capabilities_go() -> None:
    rig = HostRig()
    host = rig.host
    wire = rig.wires.open()
    host.attach(1, wire)
    offloaded = Reply()
    host.app_offload(1, None, offloaded)
    host.after_batch()  # the capabilities are not known yet: it waits, its records made
    assert host.initiates_blocked and host.objects
    rig.target.fail_adapter()  # PAUSE and UPLOAD_ALL before the capabilities come
    rig.run()
    assert offloaded.done and offloaded.error is not None, offloaded
    assert "OFFLOAD_PAUSE" in str(offloaded.error)
    assert not host.objects, "the records made for the refused offload stayed"
    rig.target.recover_adapter()
    rig.run()
    assert rig.call(host.app_close, 1).value is True
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []
