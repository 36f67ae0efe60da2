"""How big a run is (full, --quick, --smoke) and what every section is handed."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from bench.common import MIB
from bench.daemon import Daemon, start_daemon
from bench.progress import Reporter


@dataclass(frozen=True, slots=True)
class Scale:
    """Sizes of one kind of run. `repeats` interleaved repeats per figure: a judged figure needs
    7, the fewest that leave a stray run off its spread (bench/judge.py); below 4 none is judged.
    """

    name: str
    repeats: int
    hop_single: int  # messages per hop measurement, one in flight
    hop_burst: int  # messages per hop measurement, in bursts / batches of 64
    bulk_bytes: int  # bytes per bulk run
    rpc_window_s: float  # seconds per ping / tcp.send measurement
    echo_counts: tuple[int, ...]
    echo_window_s: float
    echo_repeats: int
    memory_counts: tuple[int, ...]  # cumulative steps of one ramp of idle connections
    memory_repeats: int
    observe_conns: int  # offloaded echo connections on each daemon, web view + metrics on and off
    observe_repeats: int  # interleaved repeats of each observe figure
    observe_window_s: float  # seconds per observe echo window
    shard_echo_conns: int = 400  # verified echo connections per shard, 1 shard vs 2
    shard_window_s: float = 2.0  # seconds per ping / echo window, 1 shard vs 2


SCALES: dict[str, Scale] = {
    # `make bench`: about 5-6 minutes on an idle 2-core machine
    "full": Scale(
        "full",
        repeats=7,
        hop_single=10_000,
        hop_burst=128_000,
        bulk_bytes=384 * MIB,
        rpc_window_s=1.0,
        echo_counts=(100, 1000),
        # 7 repeats of 3 windows (direct, daemon, floor) at 2 counts: shorter windows than the
        # 3 s that 3 repeats had keep the section near its minute
        echo_window_s=1.5,
        echo_repeats=7,
        memory_counts=(1000, 5000, 10000),
        memory_repeats=7,
        observe_conns=100,
        observe_repeats=7,
        observe_window_s=3.0,
        shard_echo_conns=400,
        shard_window_s=2.0,
    ),
    # every section and every judged figure but the 10k memory one, in about two minutes: the
    # judged figures get their 7 repeats, over shorter windows
    "quick": Scale(
        "quick",
        repeats=7,
        hop_single=3_000,
        hop_burst=32_000,
        bulk_bytes=128 * MIB,
        rpc_window_s=0.2,
        echo_counts=(100, 1000),
        echo_window_s=0.75,
        echo_repeats=7,
        memory_counts=(1000,),
        memory_repeats=5,  # memory.1000 is reported, not judged: 5 repeats read it
        observe_conns=100,
        observe_repeats=7,
        observe_window_s=0.75,
        shard_echo_conns=200,
        shard_window_s=0.7,
    ),
    # the test suite's run: every code path, tiny sizes; its figures mean nothing
    "smoke": Scale(
        "smoke",
        repeats=2,
        hop_single=500,
        hop_burst=6_400,
        bulk_bytes=4 * MIB,
        rpc_window_s=0.1,
        echo_counts=(10, 20),
        echo_window_s=0.3,
        echo_repeats=2,
        memory_counts=(100, 200),
        memory_repeats=2,
        observe_conns=10,
        observe_repeats=2,
        observe_window_s=0.3,
        shard_echo_conns=20,
        shard_window_s=0.3,
    ),
}


@dataclass(frozen=True, slots=True)
class Ctx:
    """What a section gets: the scale, how to start the daemon, where to report progress."""

    scale: Scale
    progress: Reporter
    # interpreter arguments that start the daemon instead of the `chimneyd` script (`--listen
    # 127.0.0.1:PORT` is appended), and its environment; None: as users run it
    daemon_args: list[str] | None = None
    daemon_env: dict[str, str] | None = None

    def start_daemon(self, stack: ExitStack, extra_args: Sequence[str] = ()) -> Daemon:
        """The daemon as this run starts it; `extra_args` follow its `--listen` address."""
        return start_daemon(stack, self.daemon_args, self.daemon_env, extra_args)
