"""`stack.metrics`: the `stack.stats` gauges and counters in Prometheus text format."""

from __future__ import annotations

from chimneyd.observe.metrics import prometheus_text


def _stats() -> dict:
    layer = {"offloads_active": 2, "handles": 3, "outstanding_nbls": 1}
    return {
        "layers": {
            "tcpip": {**layer, "bytes_sent": 10, "bytes_received": 4, "calls": {}},
            'n"ic': {
                **layer,
                "bytes_sent": 7,
                "bytes_received": 0,
                "calls": {"MiniportTcpOffloadSend/NDIS_STATUS_SUCCESS": 5, "Ndis X": 1},
            },
        },
        "connections": 2,
        "tasks": 9,
        "rpc": {"clients": 1, "in_flight": 0},
    }


def test_every_gauge_and_counter_is_exposed_once_per_layer() -> None:
    lines = prometheus_text(_stats()).splitlines()
    samples = dict(line.rsplit(" ", 1) for line in lines if not line.startswith("#"))
    assert samples['chimney_handles{layer="tcpip"}'] == "3"
    assert samples['chimney_bytes_sent_total{layer="n\\"ic"}'] == "7"  # label value escaped
    key = 'chimney_calls_total{layer="n\\"ic",call="MiniportTcpOffloadSend",status="NDIS_STATUS_SUCCESS"}'
    assert samples[key] == "5"
    assert samples['chimney_calls_total{layer="n\\"ic",call="Ndis_X"}'] == "1"  # name made safe
    assert samples["chimney_connections"] == "2"
    assert samples["chimney_tasks"] == "9"
    assert samples["chimney_rpc_clients"] == "1"
    types = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(types) == len(set(types))  # one TYPE line per metric family
