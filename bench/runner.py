"""The run behind `python -m bench`: sections in order, the table, --json, the exit status, and
the two profiling modes (bench/__main__.py documents the options)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import signal
import tempfile
import time
from contextlib import ExitStack
from typing import Any

import uvloop
from rich.console import Console
from rich.table import Table

from bench.common import MALLOC_ENV, MIB, Section, child, child_env, ports_of, raise_nofile
from bench.context import SCALES, Ctx, Scale
from bench.daemon import start_daemon
from bench.judge import MIN_REPEATS_TO_LEAVE_ONE_OFF, Verdict, fails_strict
from bench.progress import Reporter
from bench.render import fmt, render, targets_table
from bench.sections import SECTIONS, run_section
from chimneyd.compiled import build_name

EXIT_OK, EXIT_FAILED, EXIT_MISSED = 0, 1, 3


def run(args: argparse.Namespace) -> int:
    console = Console(width=max(150, Console().width))
    if args.targets:
        console.print(targets_table())
        return EXIT_OK
    raise_nofile()
    scale = SCALES["smoke" if args.smoke else "quick" if args.quick else "full"]
    daemon_args = shlex.split(args.daemon) if args.daemon else None
    if args.profile == "bulk":
        prof = profile_bulk(scale, args.top, console)
        _write_json(args.json, {"meta": _meta(scale), "profile": prof})
        return EXIT_OK
    if args.profile == "daemon":
        return profile_daemon(args, console)
    if args.profile == "instructions":
        from bench.instructions import profile_instructions

        status, prof = profile_instructions(args, console)
        _write_json(args.json, {"meta": _meta(scale), "profile": prof})
        return status

    meta = _meta(scale)
    wanted = set(args.sections or [s.name for s in SECTIONS])
    t0 = time.perf_counter()
    with Reporter(console) as progress:
        ctx = Ctx(scale, progress, daemon_args)
        sections = uvloop.run(_run_sections(ctx, wanted))
    meta["wall_s"] = time.perf_counter() - t0
    render(console, sections, meta)
    problems = [p for s in sections for p in s.problems]
    for p in problems:
        console.print(f"[bold red]FAILED[/] {p}", highlight=False)
    if args.strict:
        for why in strict_failures(sections):
            console.print(f"[bold red]NOT MET (--strict)[/] {why}", highlight=False)
    console.print(f"[dim]wall time {meta['wall_s']:.1f} s[/]")
    _write_json(
        args.json,
        {
            "meta": meta,
            "figures": [f.as_map() for s in sections for f in s.figures],
            "sections": {
                s.name: {
                    "seconds": s.seconds,
                    "skipped": s.skipped.as_map() if s.skipped else None,
                    "failed": s.failed,
                    "problems": s.problems,
                    "notes": s.notes,
                    "raw": _plain(s.raw),
                }
                for s in sections
            },
        },
    )
    return exit_status(sections, args.strict)


def exit_status(sections: list[Section], strict: bool) -> int:
    """1 when anything broke (never for slowness); with `strict`, 3 when a figure is not met:
    missed beyond noise, measured as numbers that cannot be judged, or a target judged on too
    few repeats (judge.fails_strict; strict_failures says which and why)."""
    if any(s.problems for s in sections):
        return EXIT_FAILED
    if strict and strict_failures(sections):
        return EXIT_MISSED
    return EXIT_OK


def strict_failures(sections: list[Section]) -> list[str]:
    """One line per figure `--strict` fails on, saying why."""
    out: list[str] = []
    for sec in sections:
        for f in sec.figures:
            v = f.verdict
            if not fails_strict(v, f.target):
                continue
            why = f"{v.value}, target {f.target.label()}, median {f.spread.median:.2f}x"
            if v is Verdict.FEW:
                why = (
                    f"too few repeats to judge its target {f.target.label()}: {f.spread.n} "
                    f"repeats, a judged figure needs {MIN_REPEATS_TO_LEAVE_ONE_OFF} (so a stray "
                    "run can be left off its spread, bench/judge.py)"
                )
            out.append(f"{sec.name}: {f.name}: {why}")
    return out


async def _run_sections(ctx: Ctx, wanted: set[str]) -> list[Section]:
    return [await run_section(spec, ctx) for spec in SECTIONS if spec.name in wanted]


def _meta(scale: Scale) -> dict[str, Any]:
    return {
        "mode": scale.name,
        "scale": dataclasses.asdict(scale),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        # the daemons run from the same tree as this process: `make bench COMPILED=1` on both
        "build": build_name(),
        "loadavg_at_start": os.getloadavg(),
        "malloc_env": {k: os.environ.get(k) for k in (*MALLOC_ENV, "PYTHONMALLOC")},
        "started": time.time(),
    }


def _write_json(path: str | None, doc: dict[str, Any]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(doc, f, indent=2)


def _plain(value: Any) -> Any:
    """JSON-able copy (dict keys to str, objects with as_map to maps)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "as_map"):
        return value.as_map()
    return value


# ================================================================================================
# profiling
# ================================================================================================
def _top_tables(stats: Any, top: int, what: str, console: Console) -> dict[str, Any]:
    """Top functions of a pstats.Stats by cumulative and by self time, printed and returned."""
    total = max(1e-9, sum(v[2] for v in stats.stats.values()))
    rows: dict[str, list[dict[str, Any]]] = {}
    for key, title, idx in (("cumulative", "cumulative time", 3), ("tottime", "self time", 2)):
        entries = sorted(stats.stats.items(), key=lambda kv: kv[1][idx], reverse=True)[:top]
        table = Table(title=f"{what}, top {top} by {title}")
        for col in ("function", "calls", "self s", "cum s", "self %"):
            table.add_column(col, justify="left" if col == "function" else "right")
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
    return {"total_self_s": total, "top": rows}


def _short(path: str) -> str:
    for marker in ("/chimneyd/", "/bench/", "/site-packages/", "/lib/python3"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


def profile_bulk(scale: Scale, top: int, console: Console) -> dict[str, Any]:
    """The bulk offloaded send (1 IM, 64 KiB, a window in flight) under cProfile. The sink is
    another process, started before the profiler: only the engine is seen."""
    import cProfile
    import pstats

    from bench import bulk_bench

    prof = cProfile.Profile()
    result: dict[str, Any] = {}
    total_bytes = scale.bulk_bytes * 2  # twice a run: start-up costs fade

    async def main(port: int) -> None:
        await bulk_bench.engine_bulk(1, total_bytes // 8, port)  # warm-up, unprofiled
        t0 = time.perf_counter()
        prof.enable()
        try:
            result.update(await bulk_bench.engine_bulk(1, total_bytes, port))
        finally:
            prof.disable()
            result["wall_s"] = time.perf_counter() - t0

    with child("-m", "bench.peers", "sink") as sink:
        uvloop.run(main(ports_of(sink.expect("ready "))[0]))
    out = _top_tables(pstats.Stats(prof), top, "bulk offloaded send", console)
    console.print(
        f"bulk run (1 IM, {bulk_bench.WINDOW} x 64 KiB in flight, {total_bytes // MIB} MiB) "
        f"profiled: {fmt(result.get('mbps'), 'MB/s')} (slower than unprofiled), "
        f"{result.get('messages_per_send', 0):.2f} layer-task messages per send; self time of "
        f"the profiled functions sums to {out['total_self_s']:.2f} s of {result['wall_s']:.2f} s "
        "wall (C calls, syscalls included, count in their Python caller's self time)",
        highlight=False,
    )
    return {"result": result, **out}


PROFILE_CONNS = 1000
PROFILE_WINDOW_S = 8.0


def profile_daemon(args: argparse.Namespace, console: Console) -> int:
    """The daemon under cProfile during one echo window at 1,000 connections: the connections are
    opened and warmed first, the profiler runs only for the window (bench.profiled_daemon)."""
    import pstats

    return uvloop.run(_profile_daemon(args, console, pstats))


async def _profile_daemon(args: argparse.Namespace, console: Console, pstats: Any) -> int:
    from bench.echo_bench import EmulatedSide

    with ExitStack() as keep:
        out = args.profile_out
        if out is None:
            tmp = keep.enter_context(tempfile.TemporaryDirectory(prefix="chimneyd-prof-"))
            out = os.path.join(tmp, "daemon.prof")
        # PYTHONMALLOC set here, as chimneyd would set it by re-executing itself
        env = {**child_env(), "PYTHONMALLOC": os.environ.get("PYTHONMALLOC", "malloc")}
        daemon = start_daemon(keep, ["-m", "bench.profiled_daemon", out], env)
        echo = keep.enter_context(child("-m", "bench.peers", "echo"))
        side = EmulatedSide(daemon.port, ports_of(echo.expect("ready ")), PROFILE_CONNS)
        console.print(
            f"daemon pid {daemon.pid}: opening and warming {PROFILE_CONNS:,} echo connections",
            highlight=False,
        )
        try:
            await side.open()
            os.kill(daemon.pid, signal.SIGUSR1)
            console.print(f"profiling a {PROFILE_WINDOW_S:g} s window …", highlight=False)
            res = await side.window(PROFILE_WINDOW_S)
            os.kill(daemon.pid, signal.SIGUSR2)
        finally:
            await side.close()
        if res.failed or side.setup.errors or side.setup.integrity_errors:
            console.print(
                f"[bold red]FAILED[/] {res.errors + side.setup.errors} errors, "
                f"{res.integrity_errors} integrity errors: {res.examples + side.setup.examples}",
                highlight=False,
            )
            return EXIT_FAILED
        for _ in range(50):  # the daemon writes the file in its signal handler
            if os.path.exists(out):
                break
            time.sleep(0.1)
        if not os.path.exists(out):
            console.print(f"[red]the daemon wrote no profile to {out}[/]")
            return EXIT_FAILED
        console.print(
            f"profiled window: {res.mbps:.1f} MB/s verified, {res.ops_per_s:,.0f} rounds/s "
            f"(the profiler slows the daemon)",
            highlight=False,
        )
        stats = pstats.Stats(out)
        result = _top_tables(stats, args.top, "daemon under the echo load, 1,000 conns", console)
        # work per round: a count, not a time, so it moves far less between runs than the times
        # do (~2% against ~10% here, wider than most single changes)
        calls = sum(v[1] for v in stats.stats.values())
        per_round = calls / res.ops if res.ops else 0.0
        console.print(
            f"{calls:,} profiled calls (functions and the builtins they call) in "
            f"{res.ops:,} verified rounds: {per_round:,.0f} per round",
            highlight=False,
        )
        result["calls"] = calls
        result["calls_per_round"] = per_round
        if args.profile_out:
            console.print(f"profile kept in {out}: `python -m pstats {out}`", highlight=False)
        result["window"] = res.as_map()
        _write_json(args.json, {"meta": _meta(SCALES["full"]), "profile": result})
    return EXIT_OK
