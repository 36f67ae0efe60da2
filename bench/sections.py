"""The sections of `python -m bench`, in the order they run, and how one is run.

Adding a section:

1. Write `bench/<name>_bench.py` with `async def run(ctx: Ctx, sec: Section) -> None`. It calls
   `ctx.progress.begin(name, steps, what)`, measures each baseline and emulated variant with
   `judge.interleaved(...)` (one call per variant per repeat, alternating), and adds one figure
   per ratio with `sec.add(key, name, unit, values, baselines, baseline_name, note)`. A daemon
   comes from `ctx.start_daemon(stack)`; sizes from `ctx.scale` (give them fields in
   context.Scale for full, quick and smoke).
2. Give every figure key a row in `bench/targets.py` TARGETS: a bound, or `reported()`.
3. Add a `SectionSpec` line to SECTIONS below. The smoke test runs every section and fails on
   any section that fails or skips for a reason outside its allow-list.

Anything a section raises is a failure of the run (exit status 1), with what broke. The only
way to skip is `SectionSkip(code, detail)` with a code from common.SKIP_REASONS: a capability
this machine or this daemon build truly lacks.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench import (
    SECTION_NAMES,
    bulk_bench,
    echo_bench,
    hops_bench,
    memory_bench,
    mux_bench,
    observe_bench,
    rpc_bench,
    shards_bench,
)
from bench.common import Section, SectionSkip
from bench.context import Ctx


@dataclass(frozen=True, slots=True)
class SectionSpec:
    name: str
    what: str  # one line: what the section compares
    run: Callable[[Ctx, Section], Awaitable[None]]


SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec("hops", "broker hop and Send→SendComplete vs asyncio.Queue hop", hops_bench.run),
    SectionSpec("bulk", "offloaded bulk send vs raw uvloop loopback; IM curve", bulk_bench.run),
    SectionSpec("mux", "bulk send through a MUX over 1, 2, 4 NICs vs one IM", mux_bench.run),
    SectionSpec(
        "rpc", "daemon ping and tcp.send vs minimal msgpack-RPC echo / socket", rpc_bench.run
    ),
    SectionSpec("echo", "verified echo at 100 / 1,000 conns, daemon vs direct", echo_bench.run),
    SectionSpec(
        "observe", "ping and verified echo, web view + metrics on vs off", observe_bench.run
    ),
    SectionSpec(
        "memory", "daemon RSS per idle offloaded conn vs bare uvloop server", memory_bench.run
    ),
    SectionSpec("shards", "ping and verified echo, 2 shards vs 1 shard", shards_bench.run),
)
NAMES = tuple(s.name for s in SECTIONS)
assert NAMES == SECTION_NAMES, "bench/__init__.py SECTION_NAMES must list SECTIONS in order"


async def run_section(spec: SectionSpec, ctx: Ctx) -> Section:
    sec = Section(spec.name)
    ctx.progress.begin(spec.name, 1, spec.what)
    t0 = time.perf_counter()
    try:
        await spec.run(ctx, sec)
    except SectionSkip as skip:
        sec.skipped = skip
    except Exception as exc:  # any other way out is a failure of the run, with what broke
        sec.failed = "".join(traceback.format_exception_only(exc)).strip()
        sec.raw["traceback"] = traceback.format_exc()
    sec.seconds = time.perf_counter() - t0
    if sec.skipped is not None:
        status = f"skipped ({sec.skipped})"
    elif sec.failed is not None:
        status = "[red]FAILED[/]"
    elif sec.problems:
        status = f"[red]{len(sec.problems)} figure(s) FAILED[/]"
    else:
        status = f"{len(sec.figures)} figures"
    ctx.progress.done(status)
    return sec
