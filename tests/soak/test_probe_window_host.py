"""The host is on every connection's way, so a worker's refusal that tcp.info's
`offload_refused` blames on the host (`layer`: the host's name) would always be the probe's.
But the host refuses for no room only for one of its bindings, the layer below it whose
advertised `TcpConnectionOffloadCapacity` its offloads there reached (spec §8; docs/rpc.md
`tcp.info`), and its answer names that layer: "nic1 advertises room for 8 connections". That
layer's room is the one refused: a NIC beside the probe's, under the host, is not its way."""

from __future__ import annotations

from typing import Any

import pytest

from chimney_client.soak.traffic import refused_by
from tests.soak.test_probe_no_room import _short  # noqa: F401 (autouse)
from tests.soak.test_probe_takes_a_place import _reopen
from tests.soak.test_probe_window_nic import _probed_on_a_full_nic
from tests.soak.test_verdict import _report

pytestmark = pytest.mark.soak

Rec = dict[str, Any]

HOST_FULL = (
    "NDIS_STATUS: NDIS_STATUS_OFFLOAD_TCP_ENTRIES (0xC0231004) {} advertises room for 8 "
    "connections (spec §8)"
)


@pytest.mark.parametrize(
    ("said", "by"),
    [
        ({"status": "NDIS_STATUS_OFFLOAD_TCP_ENTRIES", "layer": "tcpip"}, "tcpip"),
        ({"layer": "tcpip", "reason": HOST_FULL.format("nic1")}, "nic1"),
        ({"layer": "tcpip", "reason": HOST_FULL.format("team0")}, "team0"),
        ({"layer": "nic0", "reason": "NDIS_STATUS: NDIS_STATUS_OFFLOAD_TCP_ENTRIES"}, "nic0"),
        (None, None),
    ],
)
def test_a_host_refusal_for_no_room_names_the_binding_it_had_none_on(
    said: Rec | None, by: str | None
) -> None:
    assert refused_by({"state": "host", "offload_refused": said}) == by


async def test_a_host_refusal_for_a_nic_beside_the_probes_is_not_the_probes() -> None:
    """The probe took nic0's place; a worker's reopen refused by the host because nic1 (beside
    nic0) advertised no more room. Before, tcp.info's `layer` (the host, on every way) made it
    the probe's (`refused_for_the_probe` 1) and the run passed."""
    rec = await _probed_on_a_full_nic()
    said = {"layer": "tcpip", "reason": HOST_FULL.format("nic1")}
    ep = {**_reopen(rec["t0"] - 0.001), "refused_by": refused_by({"offload_refused": said})}
    r = _report([rec], [], {"refusals": [ep]})
    assert not r["ok"], r["faults"]
    assert "offload refused at connect" in " ".join(r["failures"]), r["failures"]
    # the host's refusal for nic0's own room stays the probe's
    said = {"layer": "tcpip", "reason": HOST_FULL.format("nic0")}
    ep = {**_reopen(rec["t0"] - 0.001), "refused_by": refused_by({"offload_refused": said})}
    r = _report([rec], [], {"refusals": [ep]})
    assert r["ok"], r["failures"]
