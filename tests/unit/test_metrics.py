"""observe.metrics: the stack.stats families, the O(1) histograms, the daemon registry."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from chimneyd.observe import metrics as m


def _stats() -> dict[str, Any]:
    layer = {"offloads_active": 2, "handles": 3, "outstanding_nbls": 1}
    return {
        "layers": {
            "tcpip": {**layer, "bytes_sent": 10, "bytes_received": 4, "calls": {}},
            'n"ic': {
                **layer,
                "bytes_sent": 7,
                "bytes_received": 0,
                "calls": {
                    "NdisTcpOffloadSendComplete/NDIS_STATUS_SUCCESS": 5,
                    "NdisTcpOffloadSendComplete/NDIS_STATUS_REQUEST_ABORTED": 2,
                    "NdisTcpOffloadEventHandler/TcpIndicateAbort": 1,
                    "NdisMIndicateStatusEx/NDIS_STATUS_UPLOAD_ALL": 1,
                    "NdisOffloadTcpSend": 9,
                },
            },
        },
        "connections": 2,
        "tasks": 9,
        "engine": {"inbox": {"tcpip": 0, 'n"ic': 4}, "messages": {"tcpip": 1, 'n"ic': 2}},
        "rpc": {"clients": 1, "in_flight": 0},
    }


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture(autouse=True)
def _no_installed_registry() -> Any:
    m.install(None)
    yield
    m.install(None)


def test_stats_text_parses_with_help_and_type_for_every_family() -> None:
    text = m.prometheus_text(_stats())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("chimney_handles", "chimney_calls", "chimney_bytes_sent", "chimney_inbox_depth"):
        assert families[name].documentation, name
    assert families["chimney_calls"].type == "counter"
    assert families["chimney_handles"].type == "gauge"
    helps = [line for line in text.splitlines() if line.startswith("# HELP")]
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types)) == len(helps)
    s = _samples(text)
    assert s[("chimney_handles", (("layer", "tcpip"),))] == 3
    assert s[("chimney_bytes_sent_total", (("layer", 'n"ic'),))] == 7  # label value escaped
    labels = (
        ("call", "NdisTcpOffloadEventHandler"),
        ("event", "TcpIndicateAbort"),
        ("layer", 'n"ic'),
        ("status", ""),
    )
    assert s[("chimney_calls_total", labels)] == 1
    assert s[("chimney_inbox_depth", (("layer", 'n"ic'),))] == 4
    assert s[("chimney_connections", ())] == 2
    assert s[("chimney_rpc_clients", ())] == 1


def test_failures_are_completions_with_a_non_success_status_only() -> None:
    calls = _stats()["layers"]['n"ic']["calls"]
    assert m.failures(calls) == 2  # not the abort event, not the status indication
    s = _samples(m.prometheus_text(_stats()))
    assert s[("chimney_call_failures_total", (("layer", 'n"ic'),))] == 2
    assert m.layer_summary(_stats())['n"ic'] == {
        "offloads_active": 2,
        "handles": 3,
        "outstanding_nbls": 1,
        "bytes": 7,
        "calls": 18,
        "failures": 2,
        "inbox": 4,
    }


BOUNDS = [m.BASE_S * 2**k for k in range(m.BUCKETS)]


@given(st.floats(min_value=0, max_value=100, allow_nan=False))
def test_a_value_lands_in_the_smallest_bucket_that_holds_it(seconds: float) -> None:
    h = m.Log2Histogram()
    h.observe(seconds)
    k = h.counts.index(1)
    expected = next((i for i, b in enumerate(BOUNDS) if seconds <= b), m.BUCKETS)
    # the bucket index comes from frexp on seconds/BASE: exact except within a rounding step of
    # a bound
    if k != expected:
        assert math.isclose(seconds, BOUNDS[min(k, expected)], rel_tol=1e-9)
    assert h.sum == seconds


@given(
    st.lists(
        st.one_of(
            # off the bounds by more than a rounding step (see the test above)
            st.floats(min_value=0, max_value=1e-4, allow_nan=False).filter(
                lambda v: not any(math.isclose(v, b, rel_tol=1e-9) for b in BOUNDS)
            ),
            st.sampled_from(BOUNDS[:4]),  # on a bound: the first bucket's, and the next ones'
        ),
        max_size=64,
    )
)
def test_a_read_of_values_lands_each_in_the_smallest_bucket_that_holds_it(
    values: list[float],
) -> None:
    """`observe_all`, as the RPC server hands over one read's requests: values up to the first
    bound are counted apart from the others, and must land where the others' rule puts them."""
    h = m.Log2Histogram()
    h.observe_all(values)
    expected = [0] * (m.BUCKETS + 1)
    for v in values:
        expected[next((i for i, b in enumerate(BOUNDS) if v <= b), m.BUCKETS)] += 1
    assert h.counts == expected
    assert math.isclose(h.sum, math.fsum(values), abs_tol=1e-12)


def test_histogram_family_is_cumulative_and_parses() -> None:
    hs = m.HistogramSet("chimney_test_seconds", "test.", "layer")
    for v in (0.5e-6, 3e-6, 3e-6, 1.0, 99.0):
        hs.observe("a", v)
    reg = m._Collectors([hs])
    from prometheus_client import generate_latest

    text = generate_latest(reg).decode()  # type: ignore[arg-type]
    s = _samples(text)
    assert s[("chimney_test_seconds_bucket", (("layer", "a"), ("le", "1e-06")))] == 1
    assert s[("chimney_test_seconds_bucket", (("layer", "a"), ("le", "4e-06")))] == 3
    assert s[("chimney_test_seconds_bucket", (("layer", "a"), ("le", "+Inf")))] == 5
    assert s[("chimney_test_seconds_count", (("layer", "a"),))] == 5
    assert math.isclose(s[("chimney_test_seconds_sum", (("layer", "a"),))], 100.0000065)


def test_label_values_are_bounded() -> None:
    hs = m.HistogramSet("x", "x.", "method")
    for i in range(m.MAX_LABELS + 50):
        hs.observe(f"m{i}", 0.001)
    assert len(hs.by_value) == m.MAX_LABELS + 1
    assert sum(hs.by_value["other"].counts) == 50


class _Task:
    def __init__(self, name: str) -> None:
        self.layer = type("L", (), {"name": name})()
        self.inbox: list[Any] = []

    def push(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.inbox.append((fn, args))


class _Engine:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.tasks = [_Task("tcpip"), _Task("nic0")]
        self.send_observer: Any = None

    def stats(self) -> dict[str, Any]:
        return _stats()


async def test_attached_registry_has_histograms_and_the_process_collector() -> None:
    engine = _Engine()
    reg = m.Metrics(engine.stats, probe_interval_s=0.01)
    m.install(reg)
    m.rpc_requests([("ping", 0.001)])  # not attached yet: not counted
    assert not reg.rpc.by_value
    reg.attach(engine)
    assert engine.send_observer is not None
    engine.send_observer(0.002)
    # one read's requests answered at once, in runs of one method
    m.rpc_requests([("tcp.send", 0.003), ("ping", 0.002), ("tcp.send", 0.004)])
    m.rpc_answered("tcp.recv", 0.005)  # one that waited, counted as it is answered
    await asyncio.sleep(0.05)
    # probes went into each layer's inbox; run them as the layer task would
    for task in engine.tasks:
        assert task.inbox
        for fn, args in task.inbox:
            fn(*args)
    text = m.prometheus_text({})  # stack.metrics: the installed registry
    s = _samples(text)
    assert s[("chimney_send_completion_seconds_count", ())] == 1
    assert s[("chimney_rpc_request_seconds_count", (("method", "tcp.send"),))] == 2
    assert s[("chimney_rpc_request_seconds_sum", (("method", "tcp.send"),))] == 0.007
    assert s[("chimney_rpc_request_seconds_count", (("method", "ping"),))] == 1
    assert s[("chimney_rpc_request_seconds_count", (("method", "tcp.recv"),))] == 1
    assert s[("chimney_hop_latency_seconds_count", (("layer", "nic0"),))] >= 1
    assert ("process_resident_memory_bytes", ()) in s
    assert ("process_open_fds", ()) in s
    assert s[("chimney_handles", (("layer", "tcpip"),))] == 3
    reg.detach()
    assert engine.send_observer is None
    n = len(engine.tasks[0].inbox)
    await asyncio.sleep(0.03)
    assert len(engine.tasks[0].inbox) == n  # no probe after detach
    names = {f.name for f in text_string_to_metric_families(reg.exposition().decode())}
    assert "chimney_send_completion_seconds" not in names
