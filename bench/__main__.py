"""`make bench` (= `.venv/bin/python -m bench`): chimneyd against its baselines, side by side.

Every figure is a ratio of the emulated path to a baseline measured next to it in the same run,
repeated with the two alternating; the table shows the median ratio, its spread (a confidence
interval for the median: the middle runs, as many left off each end as keep a figure on its
target from being called met, or missed, more than 1 time in 16 by chance: one of 7 runs, so
one stray run cannot decide it), the target from bench/targets.py and a verdict: met, missed,
or within noise when the spread crosses the target; "too few repeats" below 4 runs, or when no
run could be left off and the spread reaches the target; "invalid measurement" when a repeat's
ratio is not a finite positive number (a zero baseline, a value of 0 or less), never met.

  make bench                          full run, about 5-6 min on an idle 2-core machine
  make bench ARGS=--quick             every section, smaller sizes and shorter windows, about
                                      2 min
  python -m bench --sections echo     only these sections (hops bulk mux rpc echo observe
                                      memory shards)
  python -m bench --json FILE         every repeat's numbers, spreads and verdicts as JSON
  python -m bench --targets           print the targets and exit
  python -m bench --strict            exit 3 when a target is missed beyond noise, a
                                      figure's measurement is invalid, or a target had too
                                      few repeats to be judged (--smoke always has)

Where the time goes:
  python -m bench --profile daemon    this checkout's daemon under cProfile for one 8 s echo
                                      window at 1,000 verified connections (opened and warmed
                                      before the profiler starts); prints its top functions
                                      and the profiled calls per verified round (a count, much
                                      steadier than the times between runs),
                                      --profile-out FILE keeps the .prof (`python -m pstats FILE`)
  python -m bench --profile bulk      the in-process bulk offloaded send under cProfile
  python -m bench --profile instructions
                                      the daemon under valgrind's callgrind: instructions
                                      per verified echo round at 100 connections, three 10 s
                                      windows (steady to a fraction of a percent, where CPU
                                      time moves 10-20% between runs), and the count outside
                                      memcpy/memset, which callgrind weighs once per byte
                                      (judge a change by that one); needs valgrind
  py-spy (pip install py-spy) samples the daemon without slowing it much: while
  `python -m bench --sections echo` runs, `py-spy record -r 250 --nonblocking -o daemon.svg
  --pid PID` with the pid its progress line names.

Exit status: 0 every section ran; 1 a section or a figure failed (errors, wrong bytes, a daemon
that did not serve — never slowness); 2 not run (bad arguments, or outside the project's
environment); 3 with --strict, a target missed beyond noise, an invalid measurement, or a
target judged on too few repeats (each named on a "NOT MET (--strict)" line).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from bench import SECTION_NAMES

# what `python -m bench` needs beyond the standard library: the project's .venv has them
NEEDED = ("rich", "uvloop", "msgpack", "structlog", "chimneyd", "chimney_client")


def parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=doc.split("\n\n")[0] + "\n\n" + doc.split("\n\n")[1],
        epilog="\n\n".join(doc.split("\n\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="smaller sizes and windows, 7 repeats (about 2 min)"
    )
    size.add_argument(
        "--smoke", action="store_true", help="tiny sizes for the test suite; figures mean nothing"
    )
    p.add_argument("--sections", nargs="+", choices=SECTION_NAMES, help="only these sections")
    p.add_argument("--json", metavar="FILE", help="write every figure and raw number to FILE")
    p.add_argument("--targets", action="store_true", help="print the targets table and exit")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 3 when a target is missed beyond noise, a measurement is invalid, or a "
        "target had too few repeats to be judged",
    )
    p.add_argument(
        "--daemon",
        metavar="ARGS",
        help="interpreter arguments that start the daemon instead of the `chimneyd` script, "
        "e.g. '-m chimneyd' or another build (`--listen 127.0.0.1:PORT` is appended)",
    )
    p.add_argument(
        "--profile", choices=["daemon", "bulk", "instructions"], help="profile instead of the run"
    )
    p.add_argument(
        "--profile-out",
        metavar="PATH",
        help="keep the daemon's cProfile output (a file), or its callgrind dumps (a directory)",
    )
    p.add_argument(
        "--profile-conns", type=int, metavar="N", help="--profile instructions: connections (100)"
    )
    p.add_argument(
        "--profile-windows",
        type=int,
        default=3,
        metavar="N",
        help="--profile instructions: counted windows (3)",
    )
    p.add_argument(
        "--profile-window-s",
        type=float,
        default=10.0,
        metavar="S",
        help="--profile instructions: seconds per window (10)",
    )
    p.add_argument("--top", type=int, default=25, help="functions shown by --profile")
    return p


def missing_modules() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    missing = missing_modules()
    if missing:
        print(
            f"python -m bench needs the project's environment ({sys.executable} has no "
            f"{', '.join(missing)}).\nRun `make bench` (it creates .venv on first use), or "
            "`.venv/bin/python -m bench` once .venv exists.",
            file=sys.stderr,
        )
        return 2
    from bench.runner import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
