"""Shared pieces of the benchmarks: figures, percentiles, subprocess peers, RSS, fd limits.

Every benchmark reports ratios of two things measured side by side in the same run (design.md,
"Performance, measured honestly"); absolute figures are kept for context only.
"""

from __future__ import annotations

import collections
import contextlib
import os
import resource
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

KIB = 1024
MIB = 1024 * 1024
PAYLOAD = 64 * KIB  # every bulk path moves 64 KiB writes / sends

# glibc malloc knobs perf-notes names as a 2-3x factor for 64 KiB-per-message paths: recorded so
# a reader knows which regime a run measured.
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@dataclass
class Figure:
    """One row of the final table: a measured thing, its baseline, and their ratio."""

    section: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None  # value / baseline, or the inverse where lower is better
    target: str = ""  # e.g. ">= 0.5" or "< 3x"
    met: bool | None = None
    note: str = ""

    def as_map(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
            "note": self.note,
        }


@dataclass
class Section:
    """What one benchmark module returns: its figures, raw numbers for --json, skip reasons."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted samples; 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(p / 100.0 * (len(ordered) - 1))))
    return ordered[k]


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (what `ps` shows, not the peak)."""
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE")


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

    def line(self, timeout: float = 15.0) -> str:
        """One stdout line within `timeout`. Reads the raw fd with its own buffer: `select` on a
        buffered file would miss lines already read into the file's buffer."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{' '.join(self.argv[-3:])}: no output in {timeout:.0f} s")
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

    def expect(self, prefix: str, timeout: float = 15.0) -> str:
        """Skip lines until one starts with `prefix`; return the rest of it."""
        end = time.monotonic() + timeout
        while True:
            text = self.line(max(0.01, end - time.monotonic()))
            if text.startswith(prefix):
                return text[len(prefix) :].strip()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def ask(self, text: str, prefix: str, timeout: float = 15.0) -> str:
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


@contextlib.contextmanager
def child(
    *args: str, env: dict[str, str] | None = None, merge_stderr: bool = False
) -> Iterator[Child]:
    """A `python -m bench.<module> ...` subprocess, killed when the block ends."""
    if env is None:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    c = Child([sys.executable, *args], env=env, merge_stderr=merge_stderr)
    try:
        yield c
    finally:
        c.close()


def ports_of(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def mbps(nbytes: int, seconds: float) -> float:
    """MB/s (10^6 bytes) of `nbytes` moved in `seconds`."""
    return nbytes / seconds / 1e6 if seconds > 0 else 0.0
