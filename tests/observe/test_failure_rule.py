"""Which counted calls are failures: one rule for the web view, `/metrics`
(`chimney_call_failures_total`) and `chimneyctl stats` (`failed`), docs/metrics.md."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from chimney_client import ChimneyError
from chimney_client.ctl_render import call_totals
from chimney_client.ctl_render import is_failure as ctl_is_failure
from chimneyd.observe.metrics import failures
from chimneyd.observe.metrics import is_failure as daemon_is_failure
from tests.e2e.support import HOST
from tests.web.support import web_daemon

#: counter key -> is it a failure
KEYS = {
    "NdisTcpOffloadSendComplete/NDIS_STATUS_SUCCESS": False,
    "NdisTcpOffloadSendComplete/NDIS_STATUS_REQUEST_ABORTED": True,
    # informational severity, yet the send it completes failed: 0 bytes acknowledged
    "NdisTcpOffloadSendComplete/NDIS_STATUS_OFFLOAD_STATE_INVALID": True,
    "NdisTcpOffloadReceiveComplete/NDIS_STATUS_OFFLOAD_PAUSE": True,
    "NdisTcpOffloadSendComplete/NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS": True,
    "NdisTcpOffloadDisconnectComplete/NDIS_STATUS_UPLOAD_IN_PROGRESS": True,
    "NdisTcpOffloadSendComplete/0x40020005": True,
    "NdisTcpOffloadSendComplete/0x0": False,
    # an initiate's partial success offloaded the block (spec §3.2.4)
    "NdisMInitiateOffloadComplete/NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS": False,
    "NdisMInitiateOffloadComplete/0x40020004": False,
    "NdisMInitiateOffloadComplete/0xC0000001": True,
    "NdisMInitiateOffloadComplete": False,
    "NdisOffloadTcpSend": False,
    "NdisTcpOffloadEventHandler/TcpIndicateAbort": False,
    "NdisMIndicateStatusEx/NDIS_STATUS_UPLOAD_ALL": False,
    "NdisMIndicateStatusEx/NDIS_STATUS_OFFLOAD_PAUSE": False,
    "ProtocolIndicateOffloadEvent/NeighborReachabilityQuery": False,
    "NdisTcpOffloadSendComplete/0xzz": False,
    "NdisOidRequest/OID_TCP_CONNECTION_OFFLOAD_PARAMETERS": False,
    "NdisTcpOffloadForwardComplete/NDIS_STATUS_FAILURE": True,
}


@pytest.mark.parametrize("key", sorted(KEYS))
def test_the_daemon_and_chimneyctl_count_the_same_failures(key: str) -> None:
    assert (daemon_is_failure(key), ctl_is_failure(key)) == (KEYS[key], KEYS[key])


def test_a_layers_failures_are_chimneyctls_failed() -> None:
    calls = {k: i + 1 for i, k in enumerate(sorted(KEYS))}
    assert failures(calls) == call_totals({"calls": calls})[1]


def test_web_failures_agree_with_chimneyctl_failed(tmp_path: Path) -> None:
    """A send failed with an informational status (NDIS_STATUS_OFFLOAD_STATE_INVALID:
    `tcp.send` answers an error, 0 bytes acknowledged) is one failure on the web view and in
    chimneyctl alike: one daemon, one `stack.stats`, one count."""
    with web_daemon(tmp_path) as w, w.client() as c:
        conn = c.tcp_connect(HOST, w.peer_port)
        c.fault_inject(
            "fail_next",
            layer="nic0",
            call="MiniportTcpOffloadSend",
            status="NDIS_STATUS_OFFLOAD_STATE_INVALID",
        )
        with pytest.raises(ChimneyError):
            c.tcp_send(conn, b"x" * 10)
        c.fault_clear("*")
        stats = c.stack_stats()
        with urllib.request.urlopen(w.url + "/api/stats", timeout=10) as resp:
            web = json.load(resp)
        c.tcp_close(conn)
        _, ctl_failed = call_totals(stats["layers"]["nic0"])
        assert (web["layers"]["nic0"]["failures"], ctl_failed) == (1, 1), stats["layers"]["nic0"]
