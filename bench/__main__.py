"""`python -m bench` (`make bench`): every benchmark, one table of ratios measured in this run.

python -m bench                 # the full run (< ~2 min)
python -m bench --quick         # a ~20 s smoke of every section
python -m bench --json FILE     # every figure and raw number as JSON
python -m bench --profile bulk  # the bulk offloaded-send path under a profiler
python -m bench --sections echo # only these sections (here: verified echo at 100 / 1,000 conns)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import MALLOC_ENV, MIB, Section, child, ports_of, raise_nofile

SECTIONS = ("baselines", "engine", "rpc", "echo")


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def render(console: Console, sections: list[Section], meta: dict[str, Any]) -> None:
    table = Table(
        title=f"chimneyd bench: {meta['mode']}, {meta['cpus']} CPUs, Python {meta['python']}",
        caption="ratio = value / baseline, both measured in this run",
    )
    table.add_column("figure  [dim](baseline)[/]", max_width=52)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("baseline", justify="right", no_wrap=True)
    table.add_column("ratio", justify="right", style="bold", no_wrap=True)
    table.add_column("target", justify="center", no_wrap=True)
    table.add_column("note", style="dim", max_width=60)
    for sec in sections:
        table.add_row(f"[bold cyan]{sec.name}[/]")
        if sec.skipped is not None:
            table.add_row(f"[yellow]skipped:[/] {sec.skipped}")
        for f in sec.figures:
            if f.met is None:
                target = f.target
            else:
                target = f"[green]{f.target} ✓[/]" if f.met else f"[red]{f.target} ✗[/]"
            name = f"{f.name}\n[dim]({f.baseline_name})[/]" if f.baseline_name else f.name
            table.add_row(
                name,
                _fmt(f.value, f.unit),
                _fmt(f.baseline, f.unit),
                f"{f.ratio:.2f}x" if f.ratio is not None else "",
                target,
                f.note,
            )
        table.add_section()
    console.print(table)
    for sec in sections:
        for note in sec.notes:
            console.print(f"[bold]{sec.name}[/]: {note}", highlight=False)


async def run_all(args: argparse.Namespace, console: Console) -> list[Section]:
    from bench import baselines, echo_bench, engine_bench, rpc_bench

    wanted = set(args.sections or SECTIONS)
    out: list[Section] = []
    daemon = shlex.split(args.daemon) if args.daemon else None
    base: dict[str, Any] = {}
    if wanted & {"baselines", "engine", "rpc"}:  # echo measures its own baseline
        console.print("[dim]baselines …[/]")
        sec, base = await baselines.run(args.quick)
        if "baselines" in wanted:
            out.append(sec)
    if "engine" in wanted:
        console.print("[dim]engine: hops, bulk, IM curve, memory …[/]")
        out.append(await engine_bench.run(args.quick, base))
    if "rpc" in wanted:
        console.print("[dim]rpc: daemon ping and tcp.send …[/]")
        out.append(await rpc_bench.run(args.quick, base, daemon))
    if "echo" in wanted:
        console.print("[dim]echo: verified 16 KiB echo rounds at 100 and 1,000 connections …[/]")
        out.append(await echo_bench.run(args.quick, daemon))
    return out


def profile_bulk(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """The bulk offloaded send (1 IM, 64 KiB, a window in flight) under cProfile: top functions by
    cumulative and by self time. The sink is another process, so this is the engine alone."""
    import cProfile
    import pstats

    import uvloop

    from bench import engine_bench

    prof = cProfile.Profile()
    result: dict[str, Any] = {}
    total_bytes = engine_bench.bulk_total(args.quick) * 2  # twice a run: start-up costs fade

    async def main(port: int) -> None:
        await engine_bench.engine_bulk(1, total_bytes // 8, port)  # warm-up, unprofiled
        t0 = time.perf_counter()
        prof.enable()
        try:
            result.update(await engine_bench.engine_bulk(1, total_bytes, port))
        finally:
            prof.disable()
            result["wall_s"] = time.perf_counter() - t0

    # the sink runs in its own process, started before the profiler: only the engine is seen
    with child("-m", "bench.peers", "sink") as sink:
        uvloop.run(main(ports_of(sink.expect("ready "))[0]))
    stats = pstats.Stats(prof)
    total = max(1e-9, sum(v[2] for v in stats.stats.values()))  # type: ignore[attr-defined]
    rows: dict[str, list[dict[str, Any]]] = {}
    for key, title in (("cumulative", "cumulative time"), ("tottime", "self time")):
        idx = 3 if key == "cumulative" else 2
        entries = sorted(
            stats.stats.items(),  # type: ignore[attr-defined]
            key=lambda kv: kv[1][idx],
            reverse=True,
        )[: args.top]
        table = Table(title=f"bulk offloaded send, top {args.top} by {title}")
        table.add_column("function")
        table.add_column("calls", justify="right")
        table.add_column("self s", justify="right")
        table.add_column("cum s", justify="right")
        table.add_column("self %", justify="right")
        rows[key] = []
        for (file, line, func), (_cc, nc, tt, ct, _callers) in entries:
            where = f"{_short(file)}:{line}({func})" if line else func
            table.add_row(where, str(nc), f"{tt:.3f}", f"{ct:.3f}", f"{100 * tt / total:.1f}")
            rows[key].append(
                {
                    "function": where,
                    "calls": nc,
                    "self_s": tt,
                    "cum_s": ct,
                    "self_pct": 100 * tt / total,
                }
            )
        console.print(table)
    console.print(
        f"bulk run (1 IM, {engine_bench.WINDOW} x 64 KiB in flight, {total_bytes // MIB} MiB) "
        f"profiled: {_fmt(result.get('mbps'), 'MB/s')} (slower than unprofiled), "
        f"{result.get('messages_per_send', 0):.2f} layer-task messages per send; "
        f"self time of the profiled functions sums to {total:.2f} s of {result['wall_s']:.2f} s "
        "wall (C calls, syscalls included, count in their Python caller's self time)",
        highlight=False,
    )
    return {"result": result, "top": rows}


def _short(path: str) -> str:
    for marker in ("/chimneyd/", "/bench/", "/site-packages/", "/lib/python3"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small, ~20 s smoke of every section")
    p.add_argument("--json", metavar="FILE", help="write every figure and raw number to FILE")
    p.add_argument("--profile", choices=["bulk"], help="profile one path instead of the run")
    p.add_argument("--top", type=int, default=15, help="functions shown by --profile")
    p.add_argument(
        "--daemon",
        metavar="ARGS",
        help="interpreter arguments that start the daemon instead of `-m chimneyd` "
        "(`--listen 127.0.0.1:PORT` is appended)",
    )
    p.add_argument("--sections", nargs="+", choices=SECTIONS, help="only these sections")
    args = p.parse_args(argv)
    console = Console(width=max(150, Console().width))
    raise_nofile()
    meta: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "started": time.time(),
    }
    if args.profile:
        prof = profile_bulk(args, console)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "profile": prof}, f, indent=2)
        return 0

    import uvloop

    t0 = time.perf_counter()
    sections = uvloop.run(run_all(args, console))
    meta["wall_s"] = time.perf_counter() - t0
    render(console, sections, meta)
    console.print(f"[dim]wall time {meta['wall_s']:.1f} s[/]")
    if args.json:
        doc = {
            "meta": meta,
            "figures": [f.as_map() for s in sections for f in s.figures],
            "sections": {
                s.name: {"skipped": s.skipped, "notes": s.notes, "raw": _plain(s.raw)}
                for s in sections
            },
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


def _plain(value: Any) -> Any:
    """JSON-able copy (dict keys to str, dataclasses to maps)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "as_map"):
        return value.as_map()
    return value


if __name__ == "__main__":
    sys.exit(main())
