"""Processes around the soak: open-file limits, RSS, the daemon's pid, and spawned children.

Children are started in their own session: a Ctrl-C in the terminal goes to the soak alone,
which then closes its clients before it stops the daemon and the peers it started."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import subprocess
import time
from pathlib import Path


def raise_nofile_limit() -> tuple[int, int]:
    """Raise our soft open-file limit to the hard limit; returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def process_rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_nofile_limit(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


_TCP_LISTEN = "0A"


def listener_pid(port: int, proc: Path = Path("/proc")) -> int | None:
    """The pid of the process listening on TCP `port` (any address), from procfs: the socket's
    inode in net/tcp{,6}, then the process holding that inode. None if not found or not ours to
    see (another user's /proc/PID/fd is closed to us)."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == _TCP_LISTEN and int(f[1].rpartition(":")[2], 16) == port:
                inodes.add(f[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return int(entry.name)
        except OSError:
            continue
    return None


def parent_pid(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The parent of process `pid`, from procfs; None if it is gone."""
    try:
        # the command name in parentheses may hold spaces: the fields after it are plain
        return int((proc / str(pid) / "stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class Child:
    """A spawned process in its own session, stdout/stderr to files (a pipe nobody reads would
    block it)."""

    def __init__(self, name: str, argv: list[str], logdir: Path) -> None:
        self.name = name
        self.out_path = logdir / f"{name}.out"
        self.err_path = logdir / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.stopped_by_us = False

    async def wait_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = pattern.search(self.out_path.read_text(errors="replace"))
            if m is not None:
                return m
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.proc.returncode}: {self.tail()}"
                )
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} did not become ready within {timeout:g} s: {self.tail()}")

    def tail(self, n: int = 800) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL. Returns the exit status."""
        if self.proc.poll() is None:
            self.stopped_by_us = True
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """At once (a second Ctrl-C): SIGKILL, no waiting for a drain."""
        if self.proc.poll() is None:
            self.stopped_by_us = True
            with contextlib.suppress(OSError):
                self.proc.kill()
