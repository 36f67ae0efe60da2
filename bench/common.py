"""Shared pieces of the benchmarks: figures and sections, skips, percentiles, subprocess peers,
RSS, fd limits.

Every benchmark reports ratios of two things measured side by side in the same run (design.md,
"Performance, measured honestly"); absolute figures are kept for context only.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.judge import Spread, Verdict, verdict
from bench.targets import target_for

KIB = 1024
MIB = 1024 * 1024
PAYLOAD = 64 * KIB  # every bulk path moves 64 KiB writes / sends

# glibc malloc knobs perf-notes names as a 2-3x factor for 64 KiB-per-message paths: recorded so
# a reader knows which regime a run measured.
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@dataclass
class Figure:
    """One row of the final table: a measured thing and its baseline, once per interleaved
    repeat (`values[i]` and `baselines[i]` were measured side by side), and the ratios.

    `lower_is_better` figures (ns per hop, bytes per connection) keep ratio = value / baseline:
    their targets are "at most". `failed` says why the numbers mean nothing (errors in the run).
    """

    section: str
    key: str  # its row in bench/targets.py
    name: str
    unit: str
    values: list[float]
    baselines: list[float]
    baseline_name: str
    note: str = ""
    failed: str | None = None

    def __post_init__(self) -> None:
        if len(self.values) != len(self.baselines) or not self.values:
            raise ValueError(
                f"{self.key}: {len(self.values)} values, {len(self.baselines)} baselines"
            )
        self.target = target_for(self.key)  # an unknown key fails here, at the section's line

    @property
    def ratios(self) -> list[float]:
        # a baseline of 0 or less has no ratio: inf, which the verdict calls invalid (0.0 here
        # would read as a good at-most figure)
        return [
            v / b if b > 0 else math.inf for v, b in zip(self.values, self.baselines, strict=True)
        ]

    @property
    def value(self) -> float:
        return statistics.median(self.values)

    @property
    def baseline(self) -> float:
        return statistics.median(self.baselines)

    @property
    def spread(self) -> Spread:
        return Spread.of(self.ratios)

    @property
    def verdict(self) -> Verdict:
        if self.failed is not None:
            return Verdict.FAILED
        return verdict(self.spread, self.target)

    def as_map(self) -> dict[str, Any]:
        s = self.spread
        return {
            "section": self.section,
            "key": self.key,
            "name": self.name,
            "unit": self.unit,
            "value": self.value,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "ratio": s.median,
            "ratio_min": s.lowest,
            "ratio_max": s.highest,
            # the range the verdict judged: the median's confidence interval (judge.spread_rank)
            "spread_low": s.low,
            "spread_high": s.high,
            "repeats": s.n,
            "values": self.values,
            "baselines": self.baselines,
            "ratios": self.ratios,
            "target": self.target.label(),
            "target_source": self.target.source,
            "verdict": self.verdict.value,
            "note": self.note,
            "failed": self.failed,
        }


# Why a section may be skipped: only a capability this machine lacks. Anything else that stops a
# section (an RPC error, a refused connection, a timeout, a crash) is a failure, never a skip.
SKIP_REASONS = {
    "nofile": "the open-file limit is below the sockets the section needs",
    "no-proc": "the daemon's RSS cannot be read from /proc (not Linux)",
}


class SectionSkip(Exception):
    """Raised by a section that cannot run on this machine; `code` is a key of SKIP_REASONS."""

    def __init__(self, code: str, detail: str) -> None:
        if code not in SKIP_REASONS:
            raise ValueError(f"{code!r} is not a reason to skip a section (bench/common.py)")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    def as_map(self) -> dict[str, str]:
        return {"code": self.code, "reason": SKIP_REASONS[self.code], "detail": self.detail}


@dataclass
class Section:
    """What one section made: its figures, raw numbers for --json, and how it ended."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    skipped: SectionSkip | None = None
    failed: str | None = None  # the section broke off: why
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(
        self,
        key: str,
        name: str,
        unit: str,
        values: Sequence[float],
        baselines: Sequence[float],
        baseline_name: str,
        note: str = "",
        failed: str | None = None,
    ) -> Figure:
        fig = Figure(
            self.name, key, name, unit, list(values), list(baselines), baseline_name, note, failed
        )
        self.figures.append(fig)
        return fig

    @property
    def problems(self) -> list[str]:
        """Everything that makes this run a failure: the section's own, and failed figures'."""
        out = [f"{self.name}: {self.failed}"] if self.failed else []
        out += [f"{self.name}: {f.name}: {f.failed}" for f in self.figures if f.failed]
        return out


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted samples; 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(p / 100.0 * (len(ordered) - 1))))
    return ordered[k]


def median_us(values: Iterable[float | None], places: int = 0) -> str:
    """The median of the measured values as "N µs"; "?" where none was (no /proc)."""
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):.{places}f} µs" if known else "?"


def rss_of(pid: int) -> int:
    """Resident set size of process `pid` now, in bytes (VmRSS of /proc/PID/status: what `ps`
    shows, not the peak). Read from outside, the same way for the daemon and for a bare server."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line (a zombie?)")


def cpu_of(pid: int) -> float | None:
    """CPU seconds (user + system) process `pid` has used so far, from /proc/PID/stat; None
    where there is no /proc or the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # after the ")" closing comm: state is field 0, utime 11, stime 12 (proc(5), 1-based 14, 15)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Raise the soft open-file limit to the hard limit; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def install_uvloop() -> None:
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


#: how long a child may take to say a line: a bound against a wedged child, far above what one
#: takes (well under a second), since a loaded machine (a 2-core CI runner installing packages
#: beside the run) has made a child starting Python and uvloop silent for over 15 s
CHILD_LINE_TIMEOUT_S = 60.0


class Child:
    """A subprocess speaking a line protocol on stdin/stdout; always killed on `close()`.

    The child prints `ready ...` once it serves; `line()` reads one stdout line with a deadline,
    so a wedged child can never hang the run.
    """

    def __init__(
        self, argv: list[str], env: dict[str, str] | None = None, merge_stderr: bool = False
    ) -> None:
        self.argv = argv
        # stderr to a file, not a pipe: a chatty child must never block on a full pipe
        self.errfile = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else self.errfile,
            text=True,
            bufsize=1,
            env=env,
        )
        self.pending = b""

    def line(self, timeout: float = CHILD_LINE_TIMEOUT_S) -> str:
        """One stdout line within `timeout`. Reads the raw fd with its own buffer: `select` on a
        buffered file would miss lines already read into the file's buffer."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{' '.join(self.argv[-3:])}: no output in {timeout:g} s ({self.state()})"
                )
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(
                        f"child exited (rc={self.proc.poll()}): {self.stderr_tail()}"
                    )
                self.pending += chunk
        text, self.pending = self.pending.split(b"\n", 1)
        return text.decode(errors="replace")

    def expect(self, prefix: str, timeout: float = CHILD_LINE_TIMEOUT_S) -> str:
        """Skip lines until one starts with `prefix`; return the rest of it."""
        end = time.monotonic() + timeout
        while True:
            text = self.line(max(0.01, end - time.monotonic()))
            if text.startswith(prefix):
                return text[len(prefix) :].strip()

    def send(self, text: str) -> None:
        """One line to the child's stdin; a child that has ended (its stdin closed) fails the
        run naming it, how it ended and its stderr, not as a bare BrokenPipeError."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:  # ValueError: stdin already closed
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=1.0)  # it is ending: say how
            raise RuntimeError(
                f"{' '.join(self.argv[1:])}: cannot be told {text!r} ({self.state()})"
            ) from exc

    def ask(self, text: str, prefix: str, timeout: float = CHILD_LINE_TIMEOUT_S) -> str:
        self.send(text)
        return self.expect(prefix, timeout)

    def drain_in_background(self) -> collections.deque[str]:
        """Keep reading stdout in a thread (the last 200 lines kept), so a child that logs to
        it never blocks on a full pipe once we stop listening for lines."""
        tail: collections.deque[str] = collections.deque(maxlen=200)

        def pump() -> None:
            with contextlib.suppress(OSError, ValueError, TimeoutError, RuntimeError):
                while True:
                    tail.append(self.line(3600.0))

        threading.Thread(target=pump, daemon=True).start()
        return tail

    def state(self) -> str:
        """What the child was doing when it said nothing: its process state (from /proc) and
        the end of its error output, for a timeout's message."""
        rc = self.proc.poll()
        if rc is not None:
            how = f"exited, rc={rc}"
        else:
            try:
                with open(f"/proc/{self.proc.pid}/stat") as f:
                    how = f"running, state {f.read().rsplit(')', 1)[1].split()[0]}"
            except (OSError, IndexError):
                how = "running"
        self.errfile.seek(0, os.SEEK_END)
        size = self.errfile.tell()
        self.errfile.seek(max(0, size - 500))
        tail = self.errfile.read().strip()
        return f"{how}; stderr: {tail or 'empty'}"

    def stderr_tail(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1.0)
        self.errfile.seek(0)
        return self.errfile.read()[-2000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            # stdin EOF ends our peers; a daemon gets SIGTERM (its graceful stop), then SIGKILL
            for stop, wait in ((None, 1.0), (self.proc.terminate, 3.0), (self.proc.kill, 5.0)):
                if stop is not None:
                    stop()
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for stream in (self.proc.stdout, self.errfile):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def child_env() -> dict[str, str]:
    """This environment, with the checkout on PYTHONPATH so `-m bench.<module>` resolves."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


@contextlib.contextmanager
def child(
    *args: str, env: dict[str, str] | None = None, merge_stderr: bool = False
) -> Iterator[Child]:
    """A `python -m bench.<module> ...` subprocess, killed when the block ends."""
    c = Child([sys.executable, *args], env=env or child_env(), merge_stderr=merge_stderr)
    try:
        yield c
    finally:
        c.close()


def cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask), in order; [] where the platform
    cannot say (no `sched_getaffinity`)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


@contextlib.contextmanager
def placed(where: dict[int, int]) -> Iterator[bool]:
    """Run the block with each process on one CPU (`pid -> cpu`; pid 0 is this thread), then
    give every affinity back. Yields whether the placement took: False where the platform has
    no `sched_setaffinity` or the kernel refuses a mask (a CPU not ours, a process gone); what
    was placed is given back first, and the block runs where the scheduler puts it."""
    before: dict[int, set[int]] = {}
    try:
        for pid, cpu in where.items():
            before[pid] = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, {cpu})
    except (AttributeError, OSError):
        _give_back(before)
        yield False
        return
    try:
        yield True
    finally:
        _give_back(before)


def threads_of(pid: int) -> list[int]:
    """Every thread of process `pid` (from /proc/PID/task), for `placed`: a mask set on a pid
    holds for its main thread only, and threads it already runs (a daemon's watcher) keep
    theirs. [pid] where /proc cannot say."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return [pid]


def _give_back(masks: dict[int, set[int]]) -> None:
    """Last placed first: two keys may name one thread (0 and its pid), the first read right."""
    for pid, mask in reversed(masks.items()):
        with contextlib.suppress(OSError):  # a child may be gone by now
            os.sched_setaffinity(pid, mask)


def ports_of(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def mbps(nbytes: int, seconds: float) -> float:
    """MB/s (10^6 bytes) of `nbytes` moved in `seconds`."""
    return nbytes / seconds / 1e6 if seconds > 0 else 0.0
