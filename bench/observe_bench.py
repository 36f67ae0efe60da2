"""What watching the daemon costs while nobody looks: the same daemon build twice, side by side,
one plain and one with the live web view and Prometheus `/metrics` listening, no browser attached.

Both daemons run at once, each on its own free loopback ports; the "on" one is started with
`--web 127.0.0.1:0 --metrics 127.0.0.1:0`, so its latency histograms (send completion, hop
probe per layer, RPC request per method) record while it serves, as they do in production
whenever metrics are served over HTTP. Each workload alternates between the two (off, on, on,
off, …) and every figure is on / off:

* ping round trips per second, 64 in flight, with the rpc section's load client and checks;
* verified 16 KiB echo over N offloaded connections per daemon to one echo peer process, with
  the echo section's emulated side (every byte checked, gauges back to 0 after closing).

Each figure's note also gives each daemon's CPU per ping and per verified round (from
/proc/PID/stat around every window): what watching costs where the rates do not show it, since
at these loads neither daemon uses a whole core.

Between the ping and the echo windows `/metrics` of the "on" daemon is scraped once, as a real
Prometheus would: it must answer, and its histograms must have counted the pings just made and
the echo connections' warm-up sends (histograms that did not run would make the figures claim
nothing). Any RPC error, damaged byte, connection not offloaded or failed scrape fails the run.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import urllib.request
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

from bench.baselines import RpcClient, RpcResult, rpc_connect, rpc_load
from bench.common import Section, SectionSkip, child, cpu_of, median_us, ports_of, raise_nofile
from bench.context import Ctx
from bench.daemon import Daemon
from bench.echo_bench import EchoResult, EmulatedSide, cpu_per_round, emulated_problems
from bench.judge import interleaved
from bench.peers import CONNS_PER_PORT
from bench.rpc_bench import WARMUP_S, check_rpc, pong
from bench.targets import count_key

PING_WINDOW = 64  # requests in flight
# what makes the "on" daemon: the web view and /metrics alone, each on a port the kernel picks
OBSERVED_ARGS = ("--web", "127.0.0.1:0", "--metrics", "127.0.0.1:0")
_WEB = re.compile(r"chimneyd web view on http://(\S+?)/?$")
_METRICS = re.compile(r"chimneyd metrics on http://(\S+?)/metrics$")
SCRAPE_TIMEOUT_S = 10.0
SIDES = ("off", "on")
SIDE_NAMES = {"off": "daemon, web + metrics off", "on": "daemon, web + metrics on"}


def http_addresses(daemon: Daemon) -> tuple[str, str]:
    """The web view's and `/metrics`' host:port, as the daemon printed them before its ready
    line; RuntimeError when it printed neither (it serves no HTTP: the figure would be off/off)."""
    web = metrics = ""
    for line in daemon.banner:
        if m := _WEB.search(line.strip()):
            web = m.group(1)
        if m := _METRICS.search(line.strip()):
            metrics = m.group(1)
    if not (web and metrics):
        raise RuntimeError(
            f"the daemon started with {' '.join(OBSERVED_ARGS)} named no "
            f"{'web view' if not web else 'metrics'} address: {' | '.join(daemon.banner)[-400:]}"
        )
    return web, metrics


async def scrape(address: str) -> str:
    """GET http://address/metrics, as Prometheus does; the text, or an error naming why."""

    def get() -> str:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=SCRAPE_TIMEOUT_S) as r:
            if r.status != 200:
                raise RuntimeError(f"/metrics answered HTTP {r.status}")
            return str(r.read().decode())

    return await asyncio.to_thread(get)


def sample(text: str, name: str, labels: str = "") -> float | None:
    """The value of the sample `name{labels}` of Prometheus text (labels as written, without
    braces; "" for none), or None when it is not there."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    return None


def scrape_problems(text: str, pings: int, conns: int) -> list[str]:
    """What the scrape shows that the histograms did not record: fewer ping requests than this
    run made, fewer send completions than the warm-up sent, or not `conns` connections open."""
    out: list[str] = []
    got = sample(text, "chimney_rpc_request_seconds_count", 'method="ping"')
    if got is None or got < pings:
        out.append(f"/metrics counted {got} ping requests, {pings} were made")
    sends = sample(text, "chimney_send_completion_seconds_count")
    if sends is None or sends < conns:
        out.append(f"/metrics counted {sends} send completions, the warm-up made {conns}")
    open_conns = sample(text, "chimney_connections")
    if open_conns != conns:
        out.append(f"/metrics shows {open_conns} open connections, {conns} are open")
    return out


async def run(ctx: Ctx, sec: Section) -> None:
    sc = ctx.scale
    n = sc.observe_conns
    repeats = sc.observe_repeats
    limit = raise_nofile()
    need = 4 * n + 256  # both daemons' connections, their sockets and the peer's, at once
    if need > limit:
        raise SectionSkip("nofile", f"open-file limit {limit}, the observe section needs {need}")
    ctx.progress.begin("observe", 2 * repeats, "starting both daemons and the echo peer")
    transports: list[asyncio.BaseTransport] = []
    with ExitStack() as stack:
        daemons = {"off": ctx.start_daemon(stack), "on": ctx.start_daemon(stack, OBSERVED_ARGS)}
        ctx.progress.step(
            f"daemon pids {daemons['off'].pid} (off) and {daemons['on'].pid} (web + metrics on)"
        )
        nports = max(1, -(-2 * n // CONNS_PER_PORT))
        echo = stack.enter_context(child("-m", "bench.peers", "echo", "--ports", str(nports)))
        echo_ports = ports_of(echo.expect("ready "))
        emus = {
            side: EmulatedSide(daemons[side].port, echo_ports, n, daemons[side].pid)
            for side in SIDES
        }
        ping_cpu: dict[str, list[float | None]] = {side: [] for side in SIDES}
        try:
            clients: dict[str, RpcClient] = {}
            for side in SIDES:
                transport, clients[side] = await rpc_connect(daemons[side].port)
                transports.append(transport)
                await pong(clients[side], SIDE_NAMES[side])
            web, metrics_at = http_addresses(daemons["on"])
            ctx.progress.step("warming up both daemons")
            for side in SIDES:
                check_rpc(SIDE_NAMES[side], await rpc_load(clients[side], 8, WARMUP_S))

            def load(side: str) -> Callable[[], Awaitable[RpcResult]]:
                async def window() -> RpcResult:
                    pid = daemons[side].pid
                    cpu0 = cpu_of(pid)
                    result = await rpc_load(clients[side], PING_WINDOW, sc.rpc_window_s)
                    cpu1 = cpu_of(pid)
                    if cpu0 is None or cpu1 is None or not result.requests:
                        ping_cpu[side].append(None)
                    else:
                        ping_cpu[side].append((cpu1 - cpu0) / result.requests * 1e6)
                    return result

                return window

            ctx.progress.step(f"ping, {PING_WINDOW} in flight: off and on, alternating")
            pings = await interleaved(
                {side: load(side) for side in SIDES},
                repeats,
                lambda _i: ctx.progress.advance(),
            )
            for side, results in pings.items():
                for r in results:
                    check_rpc(SIDE_NAMES[side], r)

            ctx.progress.step(f"N={n:,}: opening and warming up echo connections on both")
            for side in SIDES:
                await emus[side].open()
            text = await scrape(metrics_at)
            problems = scrape_problems(text, sum(r.requests for r in pings["on"]), n)
            ctx.progress.step(f"N={n:,}: {sc.observe_window_s:g} s echo windows, alternating")
            windows: dict[str, list[EchoResult]] = await interleaved(
                {side: _window(emus[side], sc.observe_window_s) for side in SIDES},
                repeats,
                lambda _i: ctx.progress.advance(),
            )
        finally:
            for emu in emus.values():
                await emu.close()
            for t in transports:
                t.close()

    off, on = pings["off"], pings["on"]
    scrape_failed = "; ".join(problems) or None
    sec.raw.update(
        {
            "web": web,
            "metrics": metrics_at,
            "scrape_bytes": len(text),
            "scrape_problems": problems,
            "ping": {side: [r.as_map() for r in rs] for side, rs in pings.items()},
            "ping_cpu_us": ping_cpu,  # each daemon's CPU per ping, per window (None: no /proc)
            "echo": {side: [r.as_map() for r in rs] for side, rs in windows.items()},
            "echo_setup": {side: emus[side].setup.as_map() for side in SIDES},
        }
    )
    sec.add(
        f"observe.ping.{PING_WINDOW}",
        f"daemon ping, {PING_WINDOW} in flight, web + metrics on",
        "req/s",
        [r.rate for r in on],
        [r.rate for r in off],
        "the same daemon, web + metrics off",
        f"p50 {_med(on, 'p50_us'):.0f} / p99 {_med(on, 'p99_us'):.0f} µs vs "
        f"{_med(off, 'p50_us'):.0f} / {_med(off, 'p99_us'):.0f} µs (medians of repeats); "
        f"daemon CPU per ping {median_us(ping_cpu['on'], 2)} vs {median_us(ping_cpu['off'], 2)}",
        failed=scrape_failed,
    )
    echo_problems = [
        p for side in SIDES for p in emulated_problems(SIDE_NAMES[side], emus[side], windows[side])
    ]
    e_on, e_off = windows["on"], windows["off"]
    sec.add(
        count_key("observe.echo", n),
        f"verified echo, {n:,} conns x 16 KiB rounds, web + metrics on",
        "MB/s",
        [r.mbps for r in e_on],
        [r.mbps for r in e_off],
        "the same daemon, web + metrics off",
        f"ops/s {_med(e_on, 'ops_per_s'):,.0f} vs {_med(e_off, 'ops_per_s'):,.0f}; p99 round "
        f"trip {_med(e_on, 'p99_ms'):.1f} vs {_med(e_off, 'p99_ms'):.1f} ms; daemon CPU per round "
        f"{cpu_per_round(e_on, 'server')} vs {cpu_per_round(e_off, 'server')}; "
        f"{sum(r.bytes_verified for r in e_on + e_off) / 1e6:,.0f} MB verified"
        + ("" if echo_problems else ", 0 errors"),
        failed="; ".join(echo_problems + problems) or None,
    )
    sec.notes.append(
        f"the 'on' daemon served the web view on {web} (no page open) and /metrics on "
        f"{metrics_at}, latency histograms on; /metrics was scraped once, between the ping and "
        f"the echo windows ({len(text):,} bytes"
        + (f"; {scrape_failed})" if scrape_failed else ", its histograms counted every ping)")
    )


def _window(side: EmulatedSide, seconds: float) -> Callable[[], Awaitable[EchoResult]]:
    return lambda: side.window(seconds)


def _med(results: list[Any], key: str) -> float:
    return statistics.median(float(getattr(r, key)) for r in results)
