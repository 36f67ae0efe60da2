"""`chimney-soak`'s command line: options (every one with help), Ctrl-C handling, exit status."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..version import package_version
from .coordinator import Soak
from .faults import FAULT_HELP, parse_faults
from .limits import (
    CLOSE_MODES,
    DEFAULT_CONNS_PER_RPC,
    DEFAULT_OPS_PER_RPC,
    RSS_GROWTH_ALLOWED,
    SETTLE_S,
)
from .parsing import (
    parse_count,
    parse_number,
    parse_payload,
    parse_positive_duration,
)
from .plan import Plan, make_plan
from .preflight import NotReady, check_topology, daemon_info, info_layers, spawn_layers
from .procs import raise_nofile_limit
from .render import ProgressLine, not_judged_verdict, render_report
from .report import exit_status

#: What `--help` says after the options: one line per paragraph, wrapped to the terminal
#: (`_HelpFormatter`); a label's paragraph hangs under it.
EPILOG = FAULT_HELP + "\n".join(
    [
        "",
        "payload (--payload): LO:HI log-uniform (1k:64k), a list picked uniformly (1k,4k,64k), "
        "or one size.",
        "verdict: the run fails on any integrity error or byte not echoed back; a connection not "
        "offloaded (refused at connect, refused again, closed in host mode, uploaded unasked) "
        "that no fault explains; a fault that did not show its outcome on the connection it "
        "hit; a request answered INTERNAL, or a reset, that no raise_next explains; state left "
        "after the drain; a daemon crash; any invariant violation or layer error the daemon "
        "reports beyond one of each per bug raise_next planted (stack.stats); daemon RSS after "
        f"the drain above x{RSS_GROWTH_ALLOWED:g} its idle plateau (--allow-rss-growth); fewer "
        "connections held than asked because of the open-file limit (--allow-fd-cap). A check "
        'the soak\'s own probe could not make (no room for it on its NIC) is said "not judged" '
        "(the verdict line; with --quiet, on stderr; JSON not_judged) and fails nothing, unless "
        "--fail-not-judged (exit status 3).",
        "invariants: the spawned daemon runs with --invariants: any violation it counts beyond "
        "the bugs raise_next planted fails the run, and so does its reporting no count at all; "
        'a --rpc daemon started without it reports no count: the report then says "not '
        'checked", which is not a failure. A checker that checked no NBL completion over a run '
        "whose bytes came back heard none of it (engine.invariant_checked_nbls): that fails the "
        "run.",
        "Ctrl-C: stops the run and prints a partial report marked INTERRUPTED (exit status 130); "
        "the daemon and peers it spawned are stopped after its own clients. A second Ctrl-C "
        "stops at once.",
        "logs: stdout and stderr of the daemon and echo peers the soak spawned (--logs DIR keeps "
        "them).",
        "before anything starts: a --rpc daemon must answer, and each layer fault must find its "
        "layer in the daemon's topology (nic_down, rebalance need a mux: e.g. --daemon-config "
        "deploy/teaming.toml).",
        "exit status: 0 pass, 1 fail (the report says why), 2 bad arguments, no daemon "
        "answering at --rpc, or a fault the topology cannot take; 3 a pass with checks not "
        "judged under --fail-not-judged; 130 interrupted.",
        "",
    ]
)
#: The widest `--help` is wrapped to, however wide the terminal: longer lines read badly.
HELP_WIDTH = 100


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description and the epilog are written one line per item (EPILOG, `FAULT_HELP`);
    each line wider than the terminal (`COLUMNS`, HELP_WIDTH at most) is wrapped, its next
    lines hanging under its text: under the text after a name set off by two spaces or more
    (a fault kind's row, `  COUNT  ...`), else two columns in. Unbroken words (an example
    schedule, to copy) are never split."""

    _TERM = re.compile(r"( *)(\S+ {2,})?")

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        width = min(width, HELP_WIDTH)
        out: list[str] = []
        for line in text.splitlines():
            if len(indent + line) <= width:
                out.append(indent + line)
                continue
            m = self._TERM.match(line)
            assert m is not None  # (every line matches: both groups may be empty)
            hang = m.end() if m.group(2) else len(m.group(1)) + 2
            if "\n" not in text.strip("\n"):
                hang = 0  # the description: one paragraph, no label
            wrapped = textwrap.wrap(
                line,
                width,
                initial_indent=indent,
                subsequent_indent=indent + " " * hang,
                break_long_words=False,
                break_on_hyphens=False,
            )
            out.extend(wrapped)
        return "\n".join(out)


#: Bounds of the numeric options: what no run can mean is refused before anything starts (a
#: usage error, exit 2) rather than run as something else than what was asked.
MAX_CONNECTIONS = 1_000_000  # past what a daemon and its peers hold on one machine
MAX_RATE = 1_000_000.0  # connections opened per second: far past any daemon
MAX_THINK_MS = 3_600_000.0  # an hour between two round trips
#: --churn is a share per minute, drawn once a second: at 60 every connection is marked each
#: second, and more marks no more
MAX_CHURN = 60.0
MAX_WORKERS = 256  # processes, each with its own RPC clients: past a few per CPU they compete
#: The daemon's default rpc.max_connections_per_client: more on one client would be refused
MAX_CONNS_PER_RPC = 10_000
PID_MAX = 4_194_304  # Linux's PID_MAX_LIMIT on 64-bit
#: Injections in the whole fault schedule: one every STAGGER_S fills an hour twice over;
#: the schedule is planned before the run starts, and far more would take minutes to plan
MAX_FAULTS = 1000


def _settle(text: str) -> float:
    """`--settle`: a positive duration, SETTLE_S at most. The workers' wind-down after the stop
    (`WIND_DOWN_S`: SETTLE_S, then a round trip's timeout) and the coordinator's wait for their
    finals are sized for it: a longer settle would be cut short there, the slots still owed an
    outcome reported stuck and cancelled."""
    seconds = parse_positive_duration(text)
    if seconds > SETTLE_S:
        raise ValueError(f"--settle is {SETTLE_S:g} s at most, got {text!r}")
    return seconds


def _option(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` as an argparse `type=`: its ValueError becomes the message argparse prints (a
    plain ValueError would print "invalid <function name> value" instead)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimney-soak",
        description=(
            "Soak chimneyd: N concurrent offloaded connections to echo peers, every byte verified "
            "in order, with workload mix and a fault schedule; a live line, a report, --json."
        ),
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--rpc", metavar="ADDR", help="drive a running daemon at ADDR")
    where.add_argument(
        "--spawn",
        action="store_true",
        help="start our own daemon and echo peers (the default without --rpc)",
    )
    p.add_argument("--token", help="auth token of the daemon (with --rpc)")
    p.add_argument("--version", action="version", version=f"chimney-soak {package_version()}")
    p.add_argument(
        "--daemon-pid",
        type=_option(partial(parse_count, low=1, high=PID_MAX)),
        metavar="PID",
        help="pid of the --rpc daemon, for RSS and limits (default: found from the RPC port)",
    )
    p.add_argument("--daemon-config", metavar="FILE", help="--config for the spawned daemon")
    p.add_argument(
        "--logs",
        metavar="DIR",
        help="keep the spawned daemon's and peers' output in DIR (default: a temporary "
        "directory, removed after a run that passes, kept and named in the report otherwise)",
    )
    p.add_argument(
        "--shards",
        metavar="N",
        help="--shards for the spawned daemon: N engine processes behind its one RPC address (a "
        "number or auto). The soak spreads its RPC clients over them, and its drain and RSS checks "
        "cover every shard (with --rpc, a daemon's shards are found from stack.info)",
    )
    p.add_argument(
        "--no-balance-shards",
        dest="balance_shards",
        action="store_false",
        help="leave the spread of RPC clients over shards to the kernel's SO_REUSEPORT hash alone "
        "(default: a worker dials a client again that lands on a shard holding its share)",
    )
    p.add_argument(
        "--peer",
        action="append",
        metavar="HOST:PORT",
        help="use these echo peers (repeatable; peer_reset then unavailable); default: spawn "
        "the soak's own echo peers",
    )
    p.add_argument(
        "--connections",
        "-n",
        type=_option(partial(parse_count, low=1, high=MAX_CONNECTIONS)),
        default=100,
        metavar="N",
        help="concurrent connections held through the hold (default 100)",
    )
    p.add_argument(
        "--rate",
        type=_option(partial(parse_number, low=0.0, high=MAX_RATE, above_low=True)),
        metavar="R",
        help="connections opened per second (default N/8, >=200)",
    )
    p.add_argument(
        "--duration",
        type=_option(parse_positive_duration),
        default=30.0,
        metavar="T",
        help="hold time (30s)",
    )
    p.add_argument(
        "--payload",
        type=_option(parse_payload),
        default=parse_payload("1k:32k"),
        metavar="DIST",
        help="bytes per echo round trip (default 1k:32k)",
    )
    p.add_argument(
        "--think-ms",
        type=_option(partial(parse_number, low=0.0, high=MAX_THINK_MS)),
        metavar="MS",
        help="pause between round trips on a connection (default N ms within 50..10000)",
    )
    p.add_argument(
        "--upload-share",
        type=_option(partial(parse_number, low=0.0, high=1.0)),
        default=0.0,
        metavar="F",
        help="share of connections uploaded and re-offloaded mid-stream (0..1)",
    )
    p.add_argument(
        "--churn",
        type=_option(partial(parse_number, low=0.0, high=MAX_CHURN)),
        default=0.0,
        metavar="F",
        help=f"share of connections closed and reopened per minute (0..{MAX_CHURN:g})",
    )
    p.add_argument(
        "--close",
        choices=CLOSE_MODES,
        default="graceful",
        help="how connections end: FIN and read to the peer's FIN, RST, or half of each by seed "
        "(default graceful)",
    )
    p.add_argument("--faults", metavar="SCHEDULE", help="fault schedule (below)")
    p.add_argument(
        "--workers",
        type=_option(partial(parse_count, low=0, high=MAX_WORKERS)),
        metavar="K",
        help="client worker processes (0: in this process; default 0 up to 1000 connections, "
        "else 2)",
    )
    p.add_argument(
        "--conns-per-rpc",
        type=_option(partial(parse_count, low=1, high=MAX_CONNS_PER_RPC)),
        metavar="N",
        help=f"connections multiplexed over one RPC client (default {DEFAULT_CONNS_PER_RPC}, "
        "fewer against shards so each gets at least 32 clients)",
    )
    p.add_argument(
        "--ops-per-rpc",
        type=int,
        default=DEFAULT_OPS_PER_RPC,
        metavar="N",
        help="round trips, opens and closes in flight per RPC client, at most 124 under the "
        f"daemon's 256 in-flight limit (default {DEFAULT_OPS_PER_RPC})",
    )
    p.add_argument(
        "--drain-timeout",
        type=_option(parse_positive_duration),
        default=60.0,
        metavar="S",
        help="after the last close, how long the daemon's gauges may take to reach 0 (seconds, or "
        "a duration like 2min; default 60)",
    )
    # any whole number is a seed: the byte streams mix it to 64 bits (stream._rotation)
    p.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the byte streams, payload sizes and fault targets (default 1)",
    )
    p.add_argument(
        "--allow-rss-growth",
        action="store_true",
        help=f"do not fail when daemon RSS after the drain is above x{RSS_GROWTH_ALLOWED:g} its "
        "idle plateau (still reported)",
    )
    p.add_argument(
        "--no-rss",
        action="store_true",
        help="do not judge the daemon's RSS: no idle plateau before and no RSS after the drain "
        "(nor the waits for it to give memory back), so no growth check; its peak is still "
        "sampled. For runs that judge something else",
    )
    p.add_argument(
        "--settle",
        type=_option(_settle),
        default=SETTLE_S,
        metavar="S",
        help="after the hold, how long a fault's outcome still missing may take to show (seconds, "
        f"or a duration; at most and by default {SETTLE_S:g}: round trips on a busy machine "
        "take that long)",
    )
    p.add_argument(
        "--allow-fd-cap",
        action="store_true",
        help="do not fail when the open-file limit held the run below --connections",
    )
    p.add_argument(
        "--fail-not-judged",
        action="store_true",
        help="exit 3 (not 0) when the run found nothing wrong but left checks of the soak's own "
        "probes not judged (no room for them on their NIC): for CI that must judge every fault "
        "it scheduled. A run that failed still exits 1",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no live line, no table")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the report as JSON ('-': stdout, the table then on stderr)",
    )
    return p


async def _amain(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    soak = Soak(args, plan)
    if not args.quiet and sys.stderr.isatty():
        soak.progress = ProgressLine()
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(soak.run())
    hits = 0

    def on_signal() -> None:
        nonlocal hits
        hits += 1
        if hits == 1:
            # stop promptly but in order: our clients close, then the processes we started
            soak.interrupted.set()
            if soak.phase == "setup":
                task.cancel()
            return
        soak.kill_now()
        if soak.progress is not None:
            soak.progress.stop()
        print("chimney-soak: stopped at once (second interrupt)", file=sys.stderr, flush=True)
        os._exit(130)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if soak.progress is not None:
            soak.progress.stop()


def _preflight(args: argparse.Namespace, plan: Plan, runner: Callable[[Any], Any]) -> None:
    """Before anything starts: a --rpc daemon answers, and the fault schedule fits the
    topology of the daemon (the one given, or the one we would spawn). Raises NotReady."""
    if args.rpc:
        layers = info_layers(runner(daemon_info(args.rpc, args.token)))
    else:
        layers = spawn_layers(args)
    if layers is not None:
        check_topology((sf.spec for sf in plan.faults), layers, spawned=not args.rpc)


def _check_together(args: argparse.Namespace) -> None:
    """What the options mean only together; raises ValueError (a usage error)."""
    if args.workers is not None and args.workers > args.connections:
        raise ValueError(
            f"--workers {args.workers} is more than --connections {args.connections}: a worker "
            "would hold no connection"
        )
    total = sum(spec.count for spec in parse_faults(args.faults))
    if total > MAX_FAULTS:
        raise ValueError(f"--faults schedules {total} injections; at most {MAX_FAULTS} in one run")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_together(args)
    except ValueError as exc:
        parser.error(str(exc))
    _soft, hard = raise_nofile_limit()
    try:
        plan = make_plan(args, hard)
    except ValueError as exc:
        parser.error(str(exc))
    runner: Callable[[Any], Any]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        _preflight(args, plan, runner)
    except NotReady as exc:
        print(f"chimney-soak: {exc}", file=sys.stderr)
        return 2
    report = runner(_amain(args, plan))
    if not args.quiet:
        from rich.console import Console

        # with the JSON on stdout (`--json -`), stdout is the JSON alone (`| jq .` reads it);
        # the table goes to stderr, with the live line and the notes
        render_report(report, Console(stderr=args.json == "-"))
    elif report["ok"] and report.get("not_judged"):
        # no table to say it on its verdict line: a pass that judged less than its faults
        # asked is still said (exit 0: its probes' lack of room is no fault of the daemon's;
        # 3 with --fail-not-judged)
        print(f"chimney-soak: {not_judged_verdict(report)}", file=sys.stderr)
    if args.json:
        text = json.dumps(report, indent=2, sort_keys=True, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return exit_status(report)
