"""Instructions per verified echo round: the daemon under callgrind (`--profile instructions`).

The CPU time a verified round costs moves 10-20% between runs on this machine, more than most
single changes to the data path; cProfile's calls per round (`--profile daemon`) are steady but
see neither the allocator nor a copy. The instructions the daemon executes per verified round,
counted by valgrind's callgrind with collection on only during each window, repeat within a
fraction of a percent in one run (at 100 connections, three 10 s windows: 601,659-603,457 per
round). Between runs they move more, ~0.6% here, with the rounds a window verifies: what the
daemon does by the clock (timers, the acknowledgement poll) is shared by fewer rounds when the
machine is busier. A change is judged on runs of both, one after the other, whose windows
verified similar numbers of rounds.

One part of the count misleads: glibc's copy and fill routines run `rep movsb` / `rep stosb`
above a few KiB, and callgrind counts such an instruction once per byte it moves, where the
CPU runs it at tens of bytes a cycle. A round's six 16 KiB copies (two socket reads into
`bytes`, msgpack's buffer and its payload, the posted receive buffer, the answer's join) read
~100,000 instructions, a sixth of the round, where they take ~6% of the daemon's CPU time
(`perf record`, 100 connections: `memmove` 5.9% of its samples, ~9 µs of a ~150 µs round).
So each window also gives the count outside `memcpy`/`memset` (`copy_fill` in `--json`): a
change is judged by that, and one that removes a copy by the copy it removes. The run ends with the
round's instructions by part (`breakdown`: the interpreter, copy and fill, glibc's allocator,
uvloop, msgpack, the rest; at 100 connections 68%, 17%, 12%, 1%, 0.5%, 2%). The
host posting its receive buffers again (up to 4 MiB kept) read 618,207 → 604,788 per round,
one 16 KiB zero-fill fewer; outside the copy and fill routines 498,926 → 501,962, nothing
within the runs' difference. A true ring for the hop trace, not landed, saved nothing either.

The daemon runs this checkout's `python -m chimneyd` under `valgrind --tool=callgrind
--instr-atstart=no` (some 50 times slower), on the C allocator as `chimneyd` runs it; the
verified echo of bench/echo_bench.py drives it (`EmulatedSide`), one warm-up window, then
windows in each of which `callgrind_control` zeroes the counts, switches collection on,
dumps and switches it off. Needs valgrind (Debian: `apt install valgrind`).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from contextlib import ExitStack
from typing import Any

from rich.console import Console

from bench.common import child, child_env, ports_of
from bench.daemon import start_daemon
from bench.echo_bench import EmulatedSide

CONNS = 100  # the parser's defaults are the rest: 3 windows of 10 s
START_S = 120.0  # the daemon's start under valgrind: ~10-25 s here
EXIT_OK, EXIT_FAILED, EXIT_NOT_RUN = 0, 1, 2
TOOLS = ("valgrind", "callgrind_control")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def totals(path: str) -> int | None:
    """The instruction count (the first event, Ir) of one callgrind dump: its `totals:` line,
    or `summary:` in a dump that has no totals."""
    found = None
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                found = int(line.split()[1])
    return found


#: glibc's copy and fill routines. Above a few KiB they run `rep movsb` / `rep stosb`, which
#: callgrind counts once per byte moved where the CPU runs it as one instruction at tens of bytes
#: a cycle: a 16 KiB copy weighs 16,384 instructions, ~3% of a round, for ~1.5 µs (`perf`).
_COPY_FILL = re.compile(r"\bmem(?:cpy|move|pcpy|set)|_mem(?:cpy|move|pcpy|set)")
#: glibc's allocator: what every Python object costs on the C allocator the daemon runs on.
_ALLOCATOR = re.compile(
    r"^(?:__libc_)?(?:malloc|free|cfree|calloc|realloc)\b|^_int_|malloc_consolidate|unlink_chunk"
    r"|^tcache|^arena_"
)
_COST_LINE = re.compile(r"[0-9+*-]")
#: The parts `breakdown` sorts a dump's instructions into, in the order they are printed.
PARTS = ("interpreter", "copy/fill", "allocator", "uvloop", "msgpack", "other")


def self_costs(path: str) -> dict[tuple[str, str], int]:
    """Each function's own instructions in one callgrind dump, by (object file, function).

    Reads the dump's format (valgrind's "Callgrind Format Specification"): `ob=` and `fn=`
    name the object and function the cost lines below belong to; `(id) name` names an id and
    `(id)` alone reuses it, `cob=` and `cfn=` sharing the ids of `ob=` and `fn=`; a cost line
    is the position columns (`positions:`, one by default) and then the events, Ir first; the
    cost line after `calls=` is a call's inclusive cost, not the caller's own, so it is not
    counted."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
    npos = 1
    costs: dict[tuple[str, str], int] = {}
    ob, fn = "", ""
    after_call = False
    with open(path, errors="replace") as f:
        for line in f:
            if after_call:
                after_call = False
                continue
            if _COST_LINE.match(line):
                cols = line.split()
                if len(cols) > npos:
                    costs[ob, fn] = costs.get((ob, fn), 0) + int(cols[npos])
                continue
            spec, eq, ref = line.partition("=")
            if eq and spec in ("ob", "cob", "fn", "cfn"):
                table = names[spec.lstrip("c")]
                ref = ref.strip()
                if ref.startswith("("):
                    key, _, name = ref.partition(")")
                    name = name.strip()
                    if name:
                        table[key] = name
                    else:
                        name = table.get(key, "")
                else:
                    name = ref
                if spec == "ob":
                    ob = os.path.basename(name)
                elif spec == "fn":
                    fn = name
            elif line.startswith("calls="):
                after_call = True
            elif line.startswith("positions:"):
                npos = len(line.split()) - 1
    return costs


def part_of(obj: str, fn: str) -> str:
    """Which of `PARTS` a function's own instructions count in."""
    if _COPY_FILL.search(fn):
        return "copy/fill"
    if obj.startswith("libc.") and _ALLOCATOR.search(fn):
        return "allocator"
    if obj.startswith("libpython"):
        return "interpreter"
    if obj.startswith("loop.cpython"):
        return "uvloop"
    if obj.startswith("_cmsgpack"):
        return "msgpack"
    return "other"


def breakdown(path: str) -> dict[str, int]:
    """One dump's instructions by part (`PARTS`)."""
    out = dict.fromkeys(PARTS, 0)
    for (obj, fn), n in self_costs(path).items():
        out[part_of(obj, fn)] += n
    return out


#: The most of a window's count the daemon's clock-driven work may take (timers, the
#: acknowledgement poll): the same in every window of one length, shared by fewer rounds when a
#: busier machine verifies fewer. ~2% at 100 connections and 10 s windows here (README), more
#: with few connections and short windows, where each window verifies a few dozen rounds.
CLOCK_SHARE = 0.25


def repeats(
    windows: list[dict[str, Any]],
    conns: int,
    tolerance: float = 0.01,
    clock_share: float = CLOCK_SHARE,
) -> bool:
    """Whether the windows' counts are those of one cost per round, `c`: a window's count is
    `c * (rounds + e) + K` within `tolerance`, where `e` (|e| <= `conns`) is the part of the
    rounds in flight at its two edges that it counted (a connection has one round in flight)
    and `K` (0 to `clock_share` of the smallest count), the same for every window, is the
    clock-driven work, which makes the count per round `c + K/rounds` move with the rounds a
    window verifies. A run with few rounds a window repeats only so; a count that is not one
    instrument's (none, twice, a window's plus another's) fits no `c` and `K`."""
    rows = [(float(w["instructions"]), int(w["rounds"])) for w in windows]
    if not rows or any(ir <= 0 or r <= 0 for ir, r in rows):
        return False
    k_max = clock_share * min(ir for ir, _ in rows)
    steps = 400
    for i in range(steps + 1):
        k = k_max * i / steps
        lo = max((ir * (1 - tolerance) - k) / (r + conns) for ir, r in rows)
        hi = min(
            (ir * (1 + tolerance) - k) / (r - conns) if r > conns else float("inf")
            for ir, r in rows
        )
        if 0 < lo <= hi:
            return True
    return False


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, timeout=60, check=False)


async def count(
    conns: int, windows: int, window_s: float, out_dir: str, console: Console
) -> dict[str, Any]:
    """Run the echo against the daemon under callgrind; the instructions and verified rounds of
    each window, and the problems met (errors, wrong bytes, a window with no count)."""
    with ExitStack() as keep:
        env = {**child_env(), "PYTHONMALLOC": "malloc"}  # as `chimneyd` runs (it re-executes)
        daemon = start_daemon(
            keep,
            ["-m", "chimneyd"],
            env,
            ["--parent-pid", str(os.getpid())],
            wrapper=(
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out_dir}/callgrind.out.%p",
            ),
            timeout_s=START_S,
        )
        pid = str(daemon.pid)
        echo = keep.enter_context(child("-m", "bench.peers", "echo"))
        side = EmulatedSide(daemon.port, ports_of(echo.expect("ready ")), conns)
        console.print(
            f"daemon pid {pid} under callgrind: {conns} echo connections", highlight=False
        )
        rows: list[dict[str, Any]] = []
        problems: list[str] = []
        try:
            await side.open()
            await side.window(window_s / 2)  # warm-up, not counted
            for i in range(windows):
                before = set(glob.glob(f"{out_dir}/callgrind.out.*"))
                _control("-z", pid)
                _control("-i", "on", pid)
                res = await side.window(window_s)
                _control("-d", pid)
                _control("-i", "off", pid)
                dumps = sorted(set(glob.glob(f"{out_dir}/callgrind.out.*")) - before)
                ir = sum(t for t in (totals(d) for d in dumps) if t is not None) if dumps else 0
                parts = dict.fromkeys(PARTS, 0)
                for d in dumps:
                    for name, n in breakdown(d).items():
                        parts[name] += n
                cf = parts["copy/fill"]
                if res.errors or res.integrity_errors:
                    problems.append(
                        f"window {i}: {res.errors} errors, {res.integrity_errors} "
                        f"integrity errors: {res.examples[:3]}"
                    )
                if not ir or not res.ops:
                    problems.append(
                        f"window {i}: {res.ops} rounds, no instruction count ({len(dumps)} dumps)"
                    )
                rows.append(
                    {
                        "rounds": res.ops,
                        "instructions": ir,
                        "per_round": ir / res.ops if res.ops else 0.0,
                        "copy_fill": cf,
                        "outside_copy_fill_per_round": (ir - cf) / res.ops if res.ops else 0.0,
                        "parts": parts,
                    }
                )
                console.print(
                    f"window {i + 1}/{windows}: {res.ops:,} verified rounds, {ir:,} instructions, "
                    f"{rows[-1]['per_round']:,.0f} per round, "
                    f"{rows[-1]['outside_copy_fill_per_round']:,.0f} outside memcpy/memset",
                    highlight=False,
                )
        finally:
            await side.close()
        if side.setup.errors or side.setup.integrity_errors:
            problems.append(
                f"opening: {side.setup.errors} errors, "
                f"{side.setup.integrity_errors} integrity errors"
            )
    return {"conns": conns, "window_s": window_s, "windows": rows, "problems": problems}


def _spread(values: list[float]) -> str:
    mid = statistics.median(values)
    spread = (max(values) - min(values)) / mid * 100 if mid else 0.0
    return (
        f"{mid:,.0f} (median of {len(values)}; spread {min(values):,.0f}-{max(values):,.0f}, "
        f"{spread:.2f}%)"
    )


def profile_instructions(args: argparse.Namespace, console: Console) -> tuple[int, dict[str, Any]]:
    """`python -m bench --profile instructions`: the exit status and what it measured."""
    import uvloop

    conns = CONNS if args.profile_conns is None else args.profile_conns
    if conns < 1 or args.profile_windows < 1 or not args.profile_window_s > 0:
        console.print(
            "--profile-conns, --profile-windows and --profile-window-s must be positive",
            highlight=False,
        )
        return EXIT_NOT_RUN, {"error": "counts must be positive"}
    missing = missing_tools()
    if missing:
        console.print(
            f"--profile instructions needs {' and '.join(missing)} (Debian: apt install valgrind)",
            highlight=False,
        )
        return EXIT_NOT_RUN, {"missing": missing}
    with ExitStack() as keep:
        out_dir = args.profile_out or keep.enter_context(
            tempfile.TemporaryDirectory(prefix="chimneyd-callgrind-")
        )
        os.makedirs(out_dir, exist_ok=True)
        result = uvloop.run(
            count(conns, args.profile_windows, args.profile_window_s, out_dir, console)
        )
    per = [w["per_round"] for w in result["windows"] if w["per_round"]]
    if per:
        mid = statistics.median(per)
        result["median_per_round"] = mid
        console.print(
            f"instructions per verified round at {conns:,} connections: {_spread(per)}",
            highlight=False,
        )
        outside = [w["outside_copy_fill_per_round"] for w in result["windows"] if w["per_round"]]
        result["median_outside_copy_fill_per_round"] = statistics.median(outside)
        console.print(
            f"  outside memcpy/memset (judge by this; callgrind counts their large copies and "
            f"fills once per byte): {_spread(outside)}",
            highlight=False,
        )
    rounds = sum(w["rounds"] for w in result["windows"])
    if rounds:
        parts = {p: sum(w["parts"][p] for w in result["windows"]) for p in PARTS}
        whole = sum(parts.values()) or 1
        result["parts_per_round"] = {p: n / rounds for p, n in parts.items()}
        console.print(
            "  by part, per round: "
            + ", ".join(f"{p} {n / rounds:,.0f} ({n / whole:.0%})" for p, n in parts.items()),
            highlight=False,
        )
    if args.profile_out:
        console.print(
            f"callgrind dumps kept in {args.profile_out} (callgrind_annotate FILE)", highlight=False
        )
    for p in result["problems"]:
        console.print(f"[bold red]FAILED[/] {p}", highlight=False)
    return (EXIT_FAILED if result["problems"] or not per else EXIT_OK), result
