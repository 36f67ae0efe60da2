"""Prometheus metrics on prometheus-client (design §7): one registry per daemon, served as
`/metrics` over HTTP (the web port, or `--metrics ADDR` on its own) and by the `stack.metrics` RPC.

What the registry holds:
- the `stack.stats` gauges and counters per layer, read from the engine when scraped: the layers
  count anyway, so they cost nothing between scrapes;
- latency histograms, each observation O(1): a power-of-two bucket index from `math.frexp` and
  one list slot incremented (no lock, no per-bucket object; everything runs on the daemon's one
  loop). Send completion (a `tcp.send` until the peer acknowledged it), hop latency per layer (a
  probe message through each layer's inbox every `probe_interval_s`, so the data path is never
  touched), and RPC request latency per method (the RPC server calls `rpc_requests` and
  `rpc_answered`). They exist only while metrics are served over HTTP (`Metrics.attach`);
- the process collector: resident and virtual memory, open fds, CPU seconds, start time.

`prometheus_text(stats)` is the entry point of the `stack.metrics` RPC: the daemon's registry
when one is installed, else the given `stack.stats` map alone.

Slightly over the usual length: the metric definitions are one list.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import operator
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from .aggregate import HISTOGRAMS, merge_stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SUCCESS = "NDIS_STATUS_SUCCESS"
#: Bucket bounds are 1 µs * 2^k: 1 µs … 16.8 s in 25 buckets, then +Inf.
BASE_S = 1e-6
BUCKETS = 25
MAX_LABELS = 256  # label values per histogram family; more are counted under "other"
PROBE_INTERVAL_S = 0.2

StatsSource = Callable[[], dict[str, Any]]


# ================================================================================================
# what a person reads off a layer: shared with the web view
# ================================================================================================
def split_call(key: str) -> tuple[str, str, str]:
    """A `stack.stats` call key → (call, status, event): `"NdisTcpOffloadSendComplete/
    NDIS_STATUS_SUCCESS"` has a status, `"NdisTcpOffloadEventHandler/TcpIndicateAbort"` an event."""
    call, _, what = key.partition("/")
    if what.startswith("NDIS_STATUS_"):
        return call, what, ""
    return call, "", what


#: An initiate's block completed with this status was offloaded (spec §3.2.4), by name and
#: by value (spec §6.1).
_OFFLOADED_PARTLY = ("NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS", "0x40020004")
#: Counters whose suffix is an adapter's status indication, not the status a call ended with.
_INDICATIONS = ("NdisMIndicateStatusEx",)


def is_failure(key: str) -> bool:
    """Does the `stack.stats` call counter `key` count failures? A call counted with a status
    (`Call/NDIS_STATUS_X`: an I/O completion) other than NDIS_STATUS_SUCCESS, whatever its
    severity: the host fails the request on any other status (a send completed with the
    informational NDIS_STATUS_OFFLOAD_STATE_INVALID acknowledged nothing). Except an
    initiate's PARTIAL_SUCCESS: the block was offloaded (spec §3.2.4). Events, status
    indications (`NdisMIndicateStatusEx/...`) and calls counted without a status are not
    failures.

    The same rule as `chimneyctl stats` (`chimney_client.ctl_render.is_failure`; the client
    does not import the daemon), so that the web view, `/metrics` and chimneyctl count the same
    failures: tests/observe/test_failure_rule.py holds the two to it."""
    call, sep, status = key.partition("/")
    if not sep or call in _INDICATIONS:
        return False
    if status.startswith("0x"):  # a status with no name: by its value
        try:
            value = int(status, 16)
        except ValueError:
            return False
        status = f"0x{value:08X}"
        if value == 0:
            return False
    elif not status.startswith("NDIS_STATUS_") or status == SUCCESS:
        return False
    return not ("InitiateOffloadComplete" in call and status in _OFFLOADED_PARTLY)


def failures(calls: dict[str, int]) -> int:
    """The layer's calls that failed (`is_failure`)."""
    return sum(count for key, count in calls.items() if is_failure(key))


def layer_summary(stats: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per layer, the gauges the web view shows: offloads_active, handles, outstanding_nbls,
    bytes (sent + received), calls (all counted), failures, inbox (messages waiting)."""
    inbox = stats.get("engine", {}).get("inbox", {})
    out: dict[str, dict[str, int]] = {}
    for name, st in stats.get("layers", {}).items():
        calls = st.get("calls", {})
        out[name] = {
            "offloads_active": st.get("offloads_active", 0),
            "handles": st.get("handles", 0),
            "outstanding_nbls": st.get("outstanding_nbls", 0),
            "bytes": st.get("bytes_sent", 0) + st.get("bytes_received", 0),
            "calls": sum(calls.values()),
            "failures": failures(calls),
            "inbox": inbox.get(name, 0),
        }
    return out


# ================================================================================================
# the stack.stats families
# ================================================================================================
class StatsCollector:
    """`stack.stats` as metric families, read from `source()` at every scrape."""

    def __init__(self, source: StatsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        return iter(stats_families(self.source()))


def stats_families(stats: dict[str, Any]) -> list[Metric]:
    layers: dict[str, dict[str, Any]] = stats.get("layers", {})
    engine: dict[str, Any] = stats.get("engine", {}) or {}
    out: list[Metric] = []

    def per_layer(cls: type[Any], name: str, doc: str, values: Iterable[tuple[str, Any]]) -> None:
        fam = cls(name, doc, labels=["layer"])
        for layer, value in values:
            fam.add_metric([layer], value or 0)
        out.append(fam)

    per_layer(
        GaugeMetricFamily,
        "chimney_offloads_active",
        "State objects (neighbor, path and TCP connection) offloaded at or through the layer.",
        ((n, st.get("offloads_active")) for n, st in layers.items()),
    )
    per_layer(
        GaugeMetricFamily,
        "chimney_handles",
        "Live entries of the layer's offload handle and context tables.",
        ((n, st.get("handles")) for n, st in layers.items()),
    )
    per_layer(
        GaugeMetricFamily,
        "chimney_outstanding_nbls",
        "NET_BUFFER_LISTs the layer holds that are not yet completed or returned.",
        ((n, st.get("outstanding_nbls")) for n, st in layers.items()),
    )
    per_layer(
        CounterMetricFamily,
        "chimney_bytes_sent",
        "Payload bytes the layer sent.",
        ((n, st.get("bytes_sent")) for n, st in layers.items()),
    )
    per_layer(
        CounterMetricFamily,
        "chimney_bytes_received",
        "Payload bytes the layer received.",
        ((n, st.get("bytes_received")) for n, st in layers.items()),
    )
    per_layer(
        CounterMetricFamily,
        "chimney_call_failures",
        "Calls the layer completed with a non-success NDIS status.",
        ((n, failures(st.get("calls", {}))) for n, st in layers.items()),
    )
    calls = CounterMetricFamily(
        "chimney_calls",
        "NDIS calls the layer made, by call and, where one applies, status or event type.",
        labels=["layer", "call", "status", "event"],
    )
    for layer, st in layers.items():
        for key, n in st.get("calls", {}).items():
            calls.add_metric([layer, *split_call(key)], n)
    out.append(calls)
    # not NDIS calls, so not in `chimney_calls_total`, whose labels would split a kind into a
    # call and an event (docs/metrics.md; spec §5.2 [EMU])
    unsent = CounterMetricFamily(
        "chimney_unsent_acks",
        "ACKs the offload target would answer forwarded segments with and cannot send on the"
        " kernel's socket, by kind.",
        labels=["layer", "kind"],
    )
    for layer, st in layers.items():
        for kind, n in (st.get("unsent_acks") or {}).items():
            unsent.add_metric([layer, kind], n)
    out.append(unsent)
    if "inbox" in engine:
        per_layer(
            GaugeMetricFamily,
            "chimney_inbox_depth",
            "Messages waiting in the layer task's inbox.",
            engine["inbox"].items(),
        )
    if "messages" in engine:
        per_layer(
            CounterMetricFamily,
            "chimney_layer_messages",
            "Messages the layer task has handled.",
            engine["messages"].items(),
        )

    def gauge(name: str, doc: str, value: Any) -> None:
        if value is not None:
            out.append(GaugeMetricFamily(name, doc, value=value))

    def counter(name: str, doc: str, value: Any) -> None:
        if value is not None:
            out.append(CounterMetricFamily(name, doc, value=value))

    gauge("chimney_connections", "Open connections.", stats.get("connections", 0))
    gauge("chimney_tasks", "asyncio tasks of the daemon.", stats.get("tasks"))
    gauge("chimney_listeners", "Open listeners.", engine.get("listeners"))
    gauge("chimney_wires", "Loopback sockets the engine tracks.", engine.get("wires"))
    gauge(
        "chimney_ack_waiting",
        "Sockets watched for the ACK of sent bytes.",
        engine.get("ack_waiting"),
    )
    gauge(
        "chimney_pending_requests",
        "Requests the host stack has not answered yet.",
        engine.get("pending_requests"),
    )
    gauge(
        "chimney_queued_send_bytes",
        "Bytes of sends asked for and not yet answered.",
        engine.get("queued_send_bytes"),
    )
    counter(
        "chimney_layer_errors", "Handlers that raised inside a layer.", engine.get("layer_errors")
    )
    counter(
        "chimney_invariant_violations",
        "Spec section 9 violations the invariant checker found (absent when it is off).",
        engine.get("invariant_violations"),
    )
    rpc = stats.get("rpc") or {}
    gauge("chimney_rpc_clients", "Connected RPC clients.", rpc.get("clients", 0))
    gauge("chimney_rpc_in_flight", "RPC requests being answered.", rpc.get("in_flight", 0))
    gauge(
        "chimney_rpc_buffered_frame_bytes",
        "Bytes held in all RPC clients' unfinished frames.",
        rpc.get("buffered_frame_bytes"),
    )
    counter(
        "chimney_log_write_errors",
        "Log lines lost to a failed write.",
        (stats.get("log") or {}).get("write_errors"),
    )
    return out


# ================================================================================================
# O(1) histograms
# ================================================================================================
class Log2Histogram:
    """Counts per power-of-two bucket (`BASE_S` * 2^k) and the sum; `observe` is O(1)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (BUCKETS + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.observe_all((seconds,))

    def observe_all(self, values: Iterable[float]) -> None:
        counts = self.counts
        total = self.sum
        # values up to BASE_S (most requests answered at once) all go to the first bucket:
        # one test each instead of a `frexp`, ~25 ns a value against ~105
        first = 0
        for seconds in values:
            total += seconds
            if seconds <= BASE_S:
                first += 1
                continue
            # seconds/BASE = m·2^e with 0.5 <= m < 1: the smallest k with x <= 2^k is e, or
            # e-1 when x is exactly 2^(e-1)
            m, e = math.frexp(seconds / BASE_S)
            k = e - 1 if m == 0.5 else e
            counts[BUCKETS if k > BUCKETS else k] += 1
        counts[0] += first
        self.sum = total


_BOUNDS = [floatToGoString(BASE_S * 2**k) for k in range(BUCKETS)] + ["+Inf"]  # type: ignore[no-untyped-call]


class HistogramSet:
    """One histogram family: a `Log2Histogram` per label value (at most `MAX_LABELS`)."""

    def __init__(self, name: str, doc: str, label: str | None = None) -> None:
        self.name = name
        self.doc = doc
        self.label = label
        self.by_value: dict[str, Log2Histogram] = {}

    def get(self, value: str = "") -> Log2Histogram:
        h = self.by_value.get(value)
        if h is None:
            if len(self.by_value) >= MAX_LABELS:
                value = "other"
                h = self.by_value.get(value)
            if h is None:
                h = self.by_value[value] = Log2Histogram()
        return h

    def observe(self, value: str, seconds: float) -> None:
        self.get(value).observe(seconds)

    def collect(self) -> Iterator[Metric]:
        labels = [self.label] if self.label else []
        fam = HistogramMetricFamily(self.name, self.doc, labels=labels)
        for value, h in sorted(self.by_value.items()):
            cumulative = 0
            buckets = []
            for bound, n in zip(_BOUNDS, h.counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            fam.add_metric([value] if self.label else [], buckets, sum_value=h.sum)
        yield fam


def _hop_latency_probe(hist: Log2Histogram, t0: float) -> None:
    """Runs in a layer's task: how long a message waited in its inbox (a hop's latency)."""
    hist.observe(time.perf_counter() - t0)


class Metrics:
    """The daemon's registry: stack.stats families and the process collector always; latency
    histograms while `attach`ed to an engine (metrics served over HTTP)."""

    def __init__(self, source: StatsSource, probe_interval_s: float = PROBE_INTERVAL_S) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(source))
        self.process = ProcessCollector(registry=self.registry)
        self.send = HistogramSet(
            "chimney_send_completion_seconds",
            "From a tcp.send entering the host stack to its completion: every byte acknowledged.",
        )
        self.hop = HistogramSet(
            "chimney_hop_latency_seconds",
            "From NDIS posting a call into a layer's inbox to the layer running it (a probe"
            " message sampled every probe interval).",
            "layer",
        )
        self.rpc = HistogramSet(
            "chimney_rpc_request_seconds",
            "RPC requests from dispatch to answer, by method.",
            "method",
        )
        self.probe_interval_s = probe_interval_s
        self.engine: Any = None
        self._probe: asyncio.TimerHandle | None = None
        self._targets: list[tuple[Any, Log2Histogram]] = []

    @property
    def histograms_on(self) -> bool:
        return self.engine is not None

    def attach(self, engine: Any) -> None:
        """Collect the latency histograms from `engine` (its send hook, its layer inboxes)."""
        if self.engine is not None:
            return
        self.engine = engine
        for hist in (self.send, self.hop, self.rpc):
            self.registry.register(hist)
        engine.send_observer = self.send.get().observe
        self._targets = [(task, self.hop.get(task.layer.name)) for task in engine.tasks]
        self._probe = engine.loop.call_later(self.probe_interval_s, self._send_probes)
        _note_recording()

    def detach(self) -> None:
        """Stop collecting (before the engine shuts down: the probe must not outlive it)."""
        if self.engine is None:
            return
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        self.engine.send_observer = None
        for hist in (self.send, self.hop, self.rpc):
            self.registry.unregister(hist)
        self._targets = []
        self.engine = None
        _note_recording()

    def _send_probes(self) -> None:
        now = time.perf_counter()
        for task, hist in self._targets:
            task.push(_hop_latency_probe, (hist, now))
        self._probe = self.engine.loop.call_later(self.probe_interval_s, self._send_probes)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def raw(self) -> dict[str, dict[str, list[float]]]:
        """The latency histograms as plain data (family → label → bucket counts, then the
        sum), for a daemon of several shards to add them up; empty while they are off."""
        if self.engine is None:
            return {}
        return {
            h.name: {v: [*hist.counts, hist.sum] for v, hist in h.by_value.items()}
            for h in (self.send, self.hop, self.rpc)
        }


# ================================================================================================
# the daemon's registry, for the RPC server and stack.metrics
# ================================================================================================
_installed: Metrics | None = None
#: Whether RPC latencies are recorded now (a registry installed, its histograms on). The RPC
#: server reads it before it reads the clock for a request: ping costs ~3.5 µs of daemon CPU,
#: and two clock reads and a call are a few percent of that.
recording = False


def _note_recording() -> None:
    global recording
    recording = _installed is not None and _installed.engine is not None


def install(metrics: Metrics | None) -> None:
    """Make `metrics` the registry behind `prometheus_text` and `rpc_requests` (None: none)."""
    global _installed
    _installed = metrics
    _note_recording()


def installed() -> Metrics | None:
    return _installed


_METHOD, _SECONDS = operator.itemgetter(0), operator.itemgetter(1)  # of a `rpc_requests` item


def rpc_requests(timed: list[tuple[str, float]]) -> None:
    """RPC requests answered at once, each `(method, seconds)` from dispatch to answer. The
    RPC server hands over one read's requests in one call: three calls per request (one
    like this, the histogram's lookup, its count) cost a tenth of the ping rate. A no-op
    unless the latency histograms are on."""
    m = _installed
    if m is None or m.engine is None:
        return
    # one read's requests are mostly of one method: a histogram per run of them, counted
    # with no call per request
    for method, run in itertools.groupby(timed, _METHOD):
        m.rpc.get(method).observe_all(map(_SECONDS, run))


def rpc_answered(method: str, seconds: float) -> None:
    """An RPC request of `method` that waited (a future or a task) was answered `seconds`
    after its dispatch. The RPC server calls it from the callback that answers the request:
    a done callback of its own per request (a closure, a copied context, one more loop
    callback) cost ~0.85 µs per request, this ~0.5 µs. A no-op unless the histograms are on."""
    m = _installed
    if m is None or m.engine is None:
        return
    m.rpc.get(method).observe(seconds)


class _Collectors:
    """Just enough of a registry for `generate_latest`: the given collectors in order."""

    def __init__(self, collectors: list[Any]) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for c in self.collectors:
            yield from c.collect()


# ================================================================================================
# a daemon of several shards (design: scale)
# ================================================================================================
#: The histogram families (name → (help, label)), to rebuild them from `Metrics.raw` of shards.
_HISTOGRAMS = {
    "chimney_send_completion_seconds": (
        "From a tcp.send entering the host stack to its completion: every byte acknowledged.",
        None,
    ),
    "chimney_hop_latency_seconds": (
        "From NDIS posting a call into a layer's inbox to the layer running it (a probe"
        " message sampled every probe interval).",
        "layer",
    ),
    "chimney_rpc_request_seconds": ("RPC requests from dispatch to answer, by method.", "method"),
}


def _merged_histograms(raws: list[dict[str, Any]]) -> list[Metric]:
    out: list[Metric] = []
    for name, (doc, label) in _HISTOGRAMS.items():
        if not any(name in raw for raw in raws):
            continue
        merged = HistogramSet(name, doc, label)
        for raw in raws:
            for value, counts in raw.get(name, {}).items():
                h = merged.get(value)
                h.counts = [a + int(b) for a, b in zip(h.counts, counts[:-1], strict=True)]
                h.sum += float(counts[-1])
        out.extend(merged.collect())
    return out


def shard_families(parts: dict[int, Any]) -> list[Metric]:
    """Per shard: whether it is up, its process (memory, descriptors), connections, RPC
    clients and offloaded connections per layer."""
    up = GaugeMetricFamily(
        "chimney_shard_up", "1 if the shard runs, 0 while it is restarted.", labels=["shard"]
    )
    rss = GaugeMetricFamily(
        "chimney_shard_resident_memory_bytes",
        "Resident memory of the shard's process.",
        labels=["shard"],
    )
    fds = GaugeMetricFamily(
        "chimney_shard_open_fds", "Open file descriptors of the shard's process.", labels=["shard"]
    )
    conns = GaugeMetricFamily(
        "chimney_shard_connections", "Open connections of the shard.", labels=["shard"]
    )
    clients = GaugeMetricFamily(
        "chimney_shard_rpc_clients", "RPC clients connected to the shard.", labels=["shard"]
    )
    offloads = GaugeMetricFamily(
        "chimney_shard_offloads_active",
        "State objects (neighbor, path and TCP connection) offloaded at or through the layer, in the shard.",
        labels=["shard", "layer"],
    )
    for k, part in sorted(parts.items()):
        shard = str(k)
        up.add_metric([shard], 0 if part is None else 1)
        if part is None:
            continue
        stats = part.get("stats", part)
        proc = stats.get("process") or {}
        rss.add_metric([shard], float(proc.get("rss_kb", 0)) * 1024)
        fds.add_metric([shard], proc.get("open_fds", 0))
        conns.add_metric([shard], stats.get("connections", 0))
        clients.add_metric([shard], (stats.get("rpc") or {}).get("clients", 0))
        for layer, st in (stats.get("layers") or {}).items():
            offloads.add_metric([shard, layer], st.get("offloads_active") or 0)
    return [up, rss, fds, conns, clients, offloads]


def sharded_text(parts: dict[int, Any], carried: Mapping[str, Any] | None = None) -> str:
    """`stack.metrics` (and `/metrics`) of a daemon of several shards: the `stack.stats`
    families of every shard summed (with the `carried` counters of the shards' other
    processes, as `merge_stats`: they never go down while the daemon runs), the latency
    histograms of every shard added up (with the `carried` ones likewise: a bucket, `_count`
    and `_sum` are counters, and a shard's restart is not the daemon's), and the
    `chimney_shard_*` families per shard. Each part is a shard's `{"stats", "histograms"}`,
    None for a shard being restarted; `carried` is what the supervisor carries
    (`aggregate.CounterCarry`), None: the running shards' figures alone."""
    stats = {k: (p or {}).get("stats") if p is not None else None for k, p in parts.items()}
    total = merge_stats(stats, carried)
    total.pop("shards", None)
    families = stats_families(total)
    raws = [p.get(HISTOGRAMS) or {} for p in parts.values() if p]
    if carried:
        raws.append(carried.get(HISTOGRAMS) or {})
    families += _merged_histograms(raws)
    families += shard_families(stats)
    return generate_latest(_Collectors([_Fixed(families)])).decode("utf-8")


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def prometheus_text(stats: dict[str, Any]) -> str:
    """`stack.metrics`: the daemon's registry when installed (the same text `/metrics` serves),
    else `stats` (a `stack.stats` map) alone."""
    m = _installed
    if m is not None:
        return m.exposition().decode("utf-8")
    return generate_latest(_Collectors([StatsCollector(lambda: stats)])).decode("utf-8")


__all__ = [
    "CONTENT_TYPE",
    "HistogramSet",
    "Log2Histogram",
    "Metrics",
    "StatsCollector",
    "failures",
    "install",
    "installed",
    "is_failure",
    "layer_summary",
    "prometheus_text",
    "rpc_answered",
    "rpc_requests",
    "shard_families",
    "sharded_text",
    "split_call",
]
